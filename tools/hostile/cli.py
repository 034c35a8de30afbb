"""`python -m tools.hostile`: the hostile run's command line. Exit code 0 when the
run passes."""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from collections.abc import Sequence
from pathlib import Path

from tools.hostile.attacks import ATTACKS, ATTACKS_BY_NAME
from tools.hostile.run import HostileRun, say
from tools.hostile.settings import FAULTS, RSS_LIMIT_MB, HostileSettings


def _names(raw: str, known: Sequence[str], what: str,
           parser: argparse.ArgumentParser) -> tuple[str, ...]:
    if raw.strip() == "none":
        return ()
    names = tuple(n.strip() for n in raw.split(",") if n.strip())
    unknown = sorted(set(names) - set(known))
    if unknown:
        parser.error(f"--{what}: unknown {', '.join(unknown)}; choose from {', '.join(known)} "
                     "or none")
    return names


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tools.hostile",
        description="Run the daemon on a prompt-injected model whose scripts attack it, while "
                    "the machine fails under it, and check that it survives, leaks no secret "
                    "or hidden answer and loses no finished work. Exit code 0 when all hold.")
    attacks = [a.name for a in ATTACKS]
    parser.add_argument("--attacks", default=",".join(attacks),
                        help=f"comma list of attacks, or none (default: all of "
                             f"{', '.join(attacks)})")
    parser.add_argument("--light", action="store_true",
                        help="leave out the heavy attacks (memory hog, disk filler)")
    parser.add_argument("--faults", default=",".join(FAULTS),
                        help=f"comma list of machine faults, or none (default: all of "
                             f"{', '.join(FAULTS)})")
    parser.add_argument("--steps", type=int, default=0,
                        help="steps of the attacker (default: two per attack, plus 6)")
    parser.add_argument("--victim-steps", type=int, default=8, help="steps of the victim")
    parser.add_argument("--parallel", type=int, default=2, help="nodes run at once")
    parser.add_argument("--sandbox", default="auto", choices=("auto", "bwrap", "none"),
                        help="the daemon's [execution] sandbox")
    parser.add_argument("--node-timeout", type=float, default=30.0,
                        help="each node's time limit in seconds (the stop fault lasts 3 s "
                             "longer)")
    parser.add_argument("--tmpfs-mb", type=int, default=512,
                        help="size of the tmpfs mounted for the state dir (0: none; then no "
                             "disk-full fault or disk filler)")
    parser.add_argument("--keep-file-override", action="store_true",
                        help="run the daemon as root with root's file override; by default "
                             "it runs without CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH, held "
                             "to files' modes as the systemd unit's own user is")
    parser.add_argument("--rss-limit-mb", type=int, default=RSS_LIMIT_MB,
                        help="the most the daemon's resident memory may reach")
    parser.add_argument("--finish-timeout", type=float, default=900.0,
                        help="seconds the tasks may take to end after the faults")
    files = parser.add_mutually_exclusive_group()
    files.add_argument("--keep", action="store_true",
                       help="keep the temp dir (state, daemon log) even when the run passes")
    files.add_argument("--clean", action="store_true",
                       help="remove the temp dir (and unmount its tmpfs) even when the run "
                            "fails")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    attacks = _names(args.attacks, [a.name for a in ATTACKS], "attacks", parser)
    if args.light:
        attacks = tuple(a for a in attacks if not ATTACKS_BY_NAME[a].heavy)
    settings = HostileSettings(
        attacks=attacks, faults=_names(args.faults, FAULTS, "faults", parser),
        steps=args.steps, victim_steps=args.victim_steps, parallel=args.parallel,
        sandbox=args.sandbox, node_timeout_s=args.node_timeout, tmpfs_mb=args.tmpfs_mb,
        rss_limit_mb=args.rss_limit_mb, finish_timeout_s=args.finish_timeout, keep=args.keep,
        clean=args.clean, drop_dac=not args.keep_file_override)
    # A short path: the socket lives here and Unix socket paths must fit in 107 bytes.
    workdir = Path(tempfile.mkdtemp(prefix="mlm-hostile-"))
    run = HostileRun(settings, workdir)
    say(f"hostile: {len(attacks)} attacks ({', '.join(attacks) or 'none'}), faults "
        f"{', '.join(settings.faults) or 'none'}, sandbox {settings.sandbox}, node time "
        f"limit {settings.node_timeout_s:.0f} s, state dir {run.state_dir}")
    try:
        report = asyncio.run(run.run())
    except BaseException:
        if not settings.keep:
            run.cleanup()
        raise
    for line in report.lines():
        say(line)
    if settings.clean or (report.passed and not settings.keep):
        run.cleanup()
    else:
        mounted = f"; the state dir is a tmpfs: `umount {run.state_dir}` when done" \
            if run.mounted else ""
        say(f"the run's files (daemon log, competitions, state) are in {workdir}{mounted}")
    return 0 if report.passed else 1
