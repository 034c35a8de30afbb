"""The `mlmaster` command: run the daemon, or talk to it over its socket."""

from __future__ import annotations

import argparse
import asyncio
import difflib
import json
import os
import sqlite3
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from mlmaster_daemon import __version__, export_cli, report_html_cli
from mlmaster_daemon.api.client import Client
from mlmaster_daemon.config import load_config, resolve_socket_path
from mlmaster_daemon.errors import MlmasterError
from mlmaster_daemon.policy_config import POLICIES
from mlmaster_daemon.tasks.spec import Metric
from mlmaster_daemon.watch import TERMINAL, follow, format_metric, live_console, watch_task

T = TypeVar("T")


def _print(line: str) -> None:
    print(line, flush=True)


def _socket(args: argparse.Namespace) -> Path:
    if args.socket:
        return Path(args.socket).expanduser()
    if args.config:
        return load_config(args.config).socket_path()
    return resolve_socket_path(os.environ.get("MLMASTER_SOCKET", ""))


def _client_call(args: argparse.Namespace, fn: Callable[[Client], Awaitable[T]]) -> T:
    async def go() -> T:
        async with Client(_socket(args)) as client:
            return await fn(client)

    return asyncio.run(go())


def _task_summary(task: dict[str, Any]) -> str:
    best = task.get("best")
    best_text = "-" if not best else f"{format_metric(best['metric'])} (node {best['node_id']})"
    return (f"{task['id']}  {task['state']:<9}  {task['name']:<20} {task['metric']:<8} "
            f"nodes {task['nodes_done']}/{task['nodes_total']}  best {best_text}")


def _print_result(task: dict[str, Any]) -> None:
    """The block the demo ends with: state, best metric and submission, hidden score."""
    from mlmaster_daemon.demo import result_lines

    _print("")
    for line in result_lines(task):
        _print(line)


def cmd_daemon(args: argparse.Namespace) -> int:
    from mlmaster_daemon.store.backup import IntegrityCheck, database_file

    overrides = {"daemon.socket": args.socket, "daemon.state_dir": args.state_dir,
                 "daemon.log_level": args.log_level,
                 "validation_server.port": args.validate_port,
                 "metrics.port": args.metrics_port}
    config = load_config(args.config, overrides=overrides)
    # Reads the database on a thread of its own while the daemon's modules load.
    integrity = IntegrityCheck(database_file(config.state_dir()))
    from mlmaster_daemon.daemon import Daemon
    from mlmaster_daemon.logs import configure_logging

    configure_logging(config.daemon.log_level)
    # SIGHUP reads the same file, environment and flags again.
    daemon = Daemon(config, reread=lambda: load_config(args.config, overrides=overrides),
                    accept_lost_work=args.accept_lost_work, integrity=integrity)
    try:
        asyncio.run(daemon.serve())
    except sqlite3.Error as exc:
        # The start-up checks name the usual causes; this is for what they cannot foresee.
        raise MlmasterError(
            f"database {daemon.db}: {exc}; check that the disk is not full and that the "
            f"daemon's user may write {daemon.state_dir}") from None
    return 0


def _submit_dir(args: argparse.Namespace) -> Path:
    """The folder to submit: the positional TASK_DIR, or DATA_DIR/ID from --competition."""
    if args.competition is None:
        if args.data_dir is not None:
            raise MlmasterError("--data-dir goes with --competition ID: "
                                "mlmaster submit --competition ID --data-dir DIR")
        if args.task_dir is None:
            raise MlmasterError("give the competition folder (mlmaster submit TASK_DIR) or "
                                "an MLE-bench competition (--competition ID --data-dir DIR)")
        return Path(args.task_dir).expanduser()
    if args.task_dir is not None:
        raise MlmasterError(f"give either TASK_DIR ({args.task_dir}) or --competition "
                            f"{args.competition}, not both")
    if args.data_dir is None:
        raise MlmasterError("--competition needs --data-dir, the folder `mlebench prepare "
                            "--data-dir` filled (it holds one folder per competition id)")
    folder: Path = Path(args.data_dir).expanduser() / str(args.competition)
    if not (folder / "prepared" / "public").is_dir():
        raise MlmasterError(
            f"competition {args.competition} is not prepared in {args.data_dir}: "
            f"{folder / 'prepared' / 'public'} does not exist; run "
            f"`mlebench prepare -c {args.competition} --data-dir {args.data_dir}` "
            "or check the id and --data-dir")
    return folder


def _submit_body(args: argparse.Namespace) -> dict[str, Any]:
    body: dict[str, Any] = {"task_dir": str(_submit_dir(args).resolve())}
    for key in ("name", "steps", "time_limit_s", "node_timeout_s", "policy", "metric", "target",
                "id_column", "lower_is_better", "max_tokens", "max_cost"):
        value = getattr(args, key)
        if value is not None:
            body[key] = value
    return body


def cmd_submit(args: argparse.Namespace) -> int:
    async def go(client: Client) -> int:
        task = await client.submit(_submit_body(args))
        if not args.wait:
            _print(json.dumps(task, indent=2) if args.json else f"submitted {task['id']}")
            return 0
        emit = (lambda _line: None) if args.json else _print
        if not args.json:
            _print(f"submitted {task['id']}; following it (Ctrl-C stops following, not the task)")
        final = await (follow(client, task["id"], emit) if args.json else
                       watch_task(client, task["id"], emit, live_console(args.plain)))
        if args.json:
            _print(json.dumps(final, indent=2))
        else:
            _print_result(final)
        return 0 if final["state"] == "finished" else 1

    return _client_call(args, go)


def cmd_ls(args: argparse.Namespace) -> int:
    async def go(client: Client) -> int:
        tasks = await client.tasks()
        if args.json:
            _print(json.dumps(tasks, indent=2))
        elif not tasks:
            _print("no tasks; submit one with `mlmaster submit TASK_DIR`")
        for task in [] if args.json else tasks:
            _print(_task_summary(task))
        return 0

    return _client_call(args, go)


def cmd_show(args: argparse.Namespace) -> int:
    from mlmaster_daemon.node_cli import show

    return show(args)


def cmd_logs(args: argparse.Namespace) -> int:
    from mlmaster_daemon.node_cli import logs

    return logs(args)


def cmd_diff(args: argparse.Namespace) -> int:
    from mlmaster_daemon.node_cli import diff

    return diff(args)


def cmd_watch(args: argparse.Namespace) -> int:
    async def go(client: Client) -> int:
        final = await watch_task(client, args.task_id, _print, live_console(args.plain))
        _print_result(final)
        return 0 if final["state"] in TERMINAL else 1

    return _client_call(args, go)


def cmd_cancel(args: argparse.Namespace) -> int:
    async def go(client: Client) -> int:
        task = await client.cancel(args.task_id)
        _print(f"task {task['id']} is {task['state']}")
        return 0

    return _client_call(args, go)


def cmd_socket(args: argparse.Namespace) -> int:
    _print(str(_socket(args)))
    return 0


def cmd_grade(args: argparse.Namespace) -> int:
    from mlmaster_daemon.grading_cli import grade

    return grade(args)


def cmd_report(args: argparse.Namespace) -> int:
    from mlmaster_daemon.grading_cli import report

    return report(args)


def cmd_competitions(args: argparse.Namespace) -> int:
    from mlmaster_daemon.grading_cli import competitions

    return competitions(args)


def cmd_example(args: argparse.Namespace) -> int:
    from mlmaster_daemon.tasks.examples import EXAMPLES, build_example

    if args.name == "list":
        for info in EXAMPLES.values():
            _print(f"{info.name:<15} {info.metric:<9} {info.description}")
        return 0
    if args.dir is None:
        raise MlmasterError("give the folder to build it in: mlmaster example NAME DIR")
    root = build_example(args.name, Path(args.dir).expanduser())
    _print(f"built example {args.name!r} in {root}")
    _print(f"submit it with: mlmaster submit {root} --wait")
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from mlmaster_daemon.doctor import run_doctor

    config = load_config(args.config)
    checks = run_doctor(config)
    for check in checks:
        _print(f"{'ok  ' if check.ok else 'FAIL'}  {check.name:<13} {check.detail}")
    return 0 if all(c.ok for c in checks) else 1


def cmd_demo(args: argparse.Namespace) -> int:
    from mlmaster_daemon.demo import run_demo

    return run_demo(example=args.example, steps=args.steps, clean=args.clean, plain=args.plain)


def _node_id(value: str) -> int:
    if not value.isdigit() or not 0 < int(value) < 10**9:
        raise argparse.ArgumentTypeError(
            f"a node id is a positive whole number as `mlmaster show ID` lists, got {value!r}")
    return int(value)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mlmaster", description=__doc__)
    parser.add_argument("--version", action="version", version=f"mlmaster {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def with_socket(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--socket", help="daemon socket (default: MLMASTER_SOCKET or runtime dir)")
        p.add_argument("--config", help="config file whose [daemon] socket to use")
        return p

    p = sub.add_parser("daemon", help="run the daemon in the foreground")
    p.add_argument("--socket", help="Unix socket to listen on")
    p.add_argument("--state-dir", help="where the database and task folders live")
    p.add_argument("--config", help="TOML config file (see configs/default.toml)")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    p.add_argument("--validate-port", type=int, metavar="PORT",
                   help="port of the MLE-bench-style validation server "
                        "(config validation_server.port)")
    p.add_argument("--metrics-port", type=int, metavar="PORT",
                   help="serve Prometheus metrics at http://127.0.0.1:PORT/metrics "
                        "(config metrics.port; off by default)")
    p.add_argument("--accept-lost-work", action="store_true",
                   help="start even if the task folders prove commits the database lost (a "
                        "lost or cut-short mlmaster.db-wal): what it does not know is moved "
                        "to STATE_DIR/lost/<time>/")
    p.set_defaults(fn=cmd_daemon)

    p = with_socket(sub.add_parser("submit", help="submit a competition folder"))
    p.add_argument("task_dir", nargs="?",
                   help="competition folder (DIR/prepared/public or public/ itself)")
    p.add_argument("--competition", metavar="ID",
                   help="an MLE-bench competition id, prepared under --data-dir")
    p.add_argument("--data-dir", metavar="DIR",
                   help="MLE-bench data folder (`mlebench prepare --data-dir`) holding ID/")
    p.add_argument("--name")
    p.add_argument("--steps", type=int, help="nodes to expand")
    p.add_argument("--time-limit", dest="time_limit_s", type=float, help="seconds for the task")
    p.add_argument("--node-timeout", dest="node_timeout_s", type=float, help="seconds per node")
    p.add_argument("--policy", choices=POLICIES, metavar="POLICY",
                   help="search policy: mcts (ML-Master), greedy (AIDE) or evolutionary "
                        "(AIRA-dojo); default: [search] policy")
    p.add_argument("--metric", type=str.lower, choices=[m.value for m in Metric],
                   metavar="METRIC", help="validation metric, one of: "
                   + ", ".join(m.value for m in Metric) + "; default: the task's task.toml")
    p.add_argument("--target", help="target column in train.csv")
    p.add_argument("--id-column")
    direction = p.add_mutually_exclusive_group()
    direction.add_argument("--lower-is-better", dest="lower_is_better", action="store_const",
                           const=True)
    direction.add_argument("--higher-is-better", dest="lower_is_better", action="store_const",
                           const=False)
    p.add_argument("--max-tokens", dest="max_tokens", type=int,
                   help="stop new generation after this many model tokens")
    p.add_argument("--max-cost", dest="max_cost", type=float,
                   help="stop new generation after this much model cost (USD)")
    p.add_argument("--wait", action="store_true", help="follow the task until it ends")
    p.add_argument("--json", action="store_true", help="print the task as JSON")
    p.add_argument("--plain", action="store_true",
                   help="one line per event even on a terminal (the default when stdout is "
                        "not one) instead of the live tree")
    p.set_defaults(fn=cmd_submit)

    p = with_socket(sub.add_parser("ls", help="list tasks"))
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_ls)

    p = with_socket(sub.add_parser(
        "show", help="show a task and its nodes, or one node's plan, code, output and memory"))
    p.add_argument("task_id")
    p.add_argument("node", nargs="?", type=_node_id, help="a node id: show that node in full")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_show)

    p = with_socket(sub.add_parser("logs", help="a node's stdout and stderr (their tail)"))
    p.add_argument("task_id")
    p.add_argument("node", type=_node_id)
    p.add_argument("--follow", "-f", action="store_true",
                   help="keep printing new output until the node ends")
    p.set_defaults(fn=cmd_logs)

    p = with_socket(sub.add_parser(
        "diff", help="unified diff of a node's code against its parent's (or OTHER's)"))
    p.add_argument("task_id")
    p.add_argument("node", type=_node_id)
    p.add_argument("other", nargs="?", type=_node_id,
                   help="node to compare with, the diff's old side (default: NODE's parent)")
    p.set_defaults(fn=cmd_diff)

    p = with_socket(sub.add_parser("watch", help="follow a task's progress until it ends"))
    p.add_argument("task_id")
    p.add_argument("--plain", action="store_true",
                   help="one line per event even on a terminal (the default when stdout is "
                        "not one) instead of the live tree")
    p.set_defaults(fn=cmd_watch)

    p = with_socket(sub.add_parser(
        "socket", help="print the daemon socket path the CLI uses (e.g. for curl --unix-socket)"))
    p.set_defaults(fn=cmd_socket)

    report_html_cli.add_parser(sub, with_socket)
    export_cli.add_parser(sub, with_socket)

    p = with_socket(sub.add_parser("cancel", help="cancel a task"))
    p.add_argument("task_id")
    p.set_defaults(fn=cmd_cancel)

    p = with_socket(sub.add_parser(
        "grade", help="grade a submission on the hidden answers and rank it like `mlebench grade`"))
    p.add_argument("task", metavar="TASK_DIR|TASK_ID",
                   help="competition folder, or a daemon task id to grade its best submission")
    p.add_argument("submission", nargs="?", metavar="SUBMISSION",
                   help="submission CSV (required with a folder; default for a task: its best)")
    p.add_argument("--leaderboard", help="leaderboard.csv to rank on "
                   "(default: found beside or inside prepared/)")
    p.set_defaults(fn=cmd_grade)

    p = with_socket(sub.add_parser(
        "report", help="grade every finished task's best submission into an MLE-bench report"))
    p.add_argument("--split", choices=["lite", "medium", "high", "full", "dev"],
                   help="only competitions of this MLE-bench split (lite: the 22 of Lite; "
                        "full: the 75)")
    p.add_argument("--output-dir", default=".",
                   help="where <UTC time>-GMT_grading_report.json is written (default: .)")
    p.add_argument("--leaderboard-dir", metavar="DIR",
                   help="leaderboards by competition id: DIR/<id>/leaderboard.csv (mle-bench's "
                        "mlebench/competitions) or DIR/<id>.csv; default: found beside "
                        "each competition")
    p.set_defaults(fn=cmd_report)

    p = sub.add_parser("competitions",
                       help="list the MLE-bench competitions the registry knows")
    p.add_argument("--split", choices=["lite", "medium", "high", "full", "dev"],
                   help="only this MLE-bench split")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_competitions)

    p = sub.add_parser("example", help="build a bundled example competition ('list' lists them)")
    p.add_argument("name")
    p.add_argument("dir", nargs="?")
    p.set_defaults(fn=cmd_example)

    p = sub.add_parser("doctor", help="check the config, tokenizer, GPU and LLM endpoints")
    p.add_argument("--config", help="TOML config file (see configs/default.toml)")
    p.set_defaults(fn=cmd_doctor)

    p = sub.add_parser("demo", help="run the daemon on a bundled example, offline, end to end")
    p.add_argument("--example", default="breast_cancer")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--clean", action="store_true",
                   help="delete the demo's temporary folder when it succeeds")
    p.add_argument("--plain", action="store_true",
                   help="one line per event even on a terminal")
    p.set_defaults(fn=cmd_demo)
    return parser


def _did_you_mean(parser: argparse.ArgumentParser, argv: list[str]) -> str | None:
    """A hint for a mistyped command (the first word that is not an option), or None."""
    word = next((a for a in argv if not a.startswith("-")), None)
    commands = next((list(a.choices) for a in parser._actions
                     if isinstance(a, argparse._SubParsersAction)), [])
    if word is None or word in commands:
        return None
    close = difflib.get_close_matches(word, commands, n=1)
    return (f"unknown command {word!r}" + (f"; did you mean {close[0]!r}?" if close else "")
            + " (mlmaster --help lists the commands)")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    hint = _did_you_mean(parser, sys.argv[1:] if argv is None else argv)
    if hint is not None:
        parser.print_usage(sys.stderr)
        print(f"mlmaster: error: {hint}", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    try:
        code: int = args.fn(args)
        return code
    except MlmasterError as exc:
        print(f"mlmaster: error: {exc.message}", file=sys.stderr)
        return 1
    except OSError as exc:
        # e.g. a state dir or socket folder the user may not write to.
        print(f"mlmaster: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130

