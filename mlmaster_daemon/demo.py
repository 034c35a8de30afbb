"""`mlmaster demo`: the daemon's main job on a bundled example, end to end, offline.

It builds an example competition, starts a real daemon process on a private socket and state
dir, submits the task over the socket, follows its progress, grades the best submission on the
hidden answers, and shuts the daemon down with SIGTERM.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from mlmaster_daemon.api.client import Client
from mlmaster_daemon.errors import DaemonUnreachable, MlmasterError
from mlmaster_daemon.tasks.competition import load_task
from mlmaster_daemon.tasks.examples import build_example
from mlmaster_daemon.tasks.grading import grade, grade_sample_submission
from mlmaster_daemon.watch import format_metric, live_console, watch_task

READY_TIMEOUT_S = 60.0


def _say(line: str) -> None:
    print(line, flush=True)


def _tail(log: Path) -> str:
    return log.read_text(errors="replace")[-3000:] if log.exists() else ""


async def wait_ready(client: Client, daemon: subprocess.Popen[bytes], log: Path) -> None:
    """Wait until the daemon answers on `client`'s socket; MlmasterError with the log's tail
    when it exits first or is not ready within READY_TIMEOUT_S."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        if daemon.poll() is not None:
            tail = _tail(log)
            raise MlmasterError(f"the daemon exited with code {daemon.returncode}:\n{tail}")
        try:
            await client.health()
            return
        except DaemonUnreachable:
            if time.monotonic() > deadline:
                raise MlmasterError(f"the daemon was not ready after {READY_TIMEOUT_S:.0f} s; "
                                    f"see {log}") from None
            await asyncio.sleep(0.2)


def result_lines(final: dict[str, Any], competition: Path | None = None) -> list[str]:
    """How a followed task ended: its state, nodes and time, the best metric and submission,
    and that submission's score on the hidden answers when the competition folder
    (`competition`, else the task's `task_dir`) has them."""
    started, ended = final.get("started_at"), final.get("finished_at")
    took = f" in {ended - started:.1f} s" if started is not None and ended is not None else ""
    done = final["nodes_done"]
    lines = [f"search {final['state']}: {done} node{'' if done == 1 else 's'}{took}"]
    best = final.get("best")
    if not best:
        return [*lines, f"no working solution: {final.get('error')}"]
    if final.get("error"):
        lines.append(f"stopped by: {final['error']}")
    lines.append(f"best validation {final['metric']}: {format_metric(best['metric'])} "
                 f"(node {best['node_id']})")
    lines += _holdout_lines(final)
    lines.append(f"best submission:  {best['submission_path']}")
    try:
        spec = load_task(competition or Path(final["task_dir"]))
        if spec.private_dir is None:
            return [*lines, "score on the hidden answers: none (the folder has no "
                            "prepared/private answers)"]
        hidden = grade(spec, Path(best["submission_path"]))
        baseline = grade_sample_submission(spec)
    except (MlmasterError, OSError) as exc:
        return [*lines, f"score on the hidden answers: not graded ({exc})"]
    return [*lines, f"score on the hidden answers: {format_metric(hidden)} "
                    f"(sample submission scores {format_metric(baseline)})"]


def _holdout_lines(final: dict[str, Any]) -> list[str]:
    """The hidden holdout, and why the final submission is the one it is."""
    holdout, selection = final.get("holdout") or {}, final.get("selection") or {}
    lines = []
    if holdout.get("state") == "on":
        lines.append(f"hidden holdout:   {holdout.get('rows')} train rows the search never saw")
    elif holdout.get("state") == "off":
        lines.append(f"hidden holdout:   off ({holdout.get('reason')})")
    if selection.get("reason"):
        lines.append(f"final choice:     {selection['reason']}")
    ensemble = selection.get("ensemble") or {}
    if ensemble.get("reason"):
        kept = "kept" if ensemble.get("kept") else "not kept"
        lines.append(f"ensemble {kept}: {ensemble['reason']}")
    return lines


async def _drive(workdir: Path, example: str, steps: int, daemon: subprocess.Popen[bytes],
                 log: Path, plain: bool) -> int:
    competition = workdir / "competition"
    async with Client(workdir / "mlmaster.sock") as client:
        await wait_ready(client, daemon, log)
        _say(f"daemon ready (pid {daemon.pid}, log {log})")
        task = await client.submit({"task_dir": str(competition), "steps": steps})
        _say(f"submitted task {task['id']} over the socket: metric {task['metric']} "
             f"({'lower' if task['lower_is_better'] else 'higher'} is better), {steps} nodes")
        final = await watch_task(client, task["id"], _say, live_console(plain))
    _say("")
    for line in result_lines(final, competition):
        _say(line)
    return 0 if final.get("best") else 1


def run_demo(example: str = "breast_cancer", steps: int = 20, clean: bool = False,
             plain: bool = False) -> int:
    """Run the demo; its progress is the live view on a terminal, lines otherwise or when
    `plain`."""
    workdir = Path(tempfile.mkdtemp(prefix="mlmaster-demo-"))
    build_example(example, workdir / "competition")
    _say(f"built example competition {example!r} in {workdir / 'competition'}")
    log = workdir / "daemon.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLMASTER_")}
    with log.open("wb") as out:
        daemon = subprocess.Popen(
            [sys.executable, "-m", "mlmaster_daemon", "daemon", "--socket",
             str(workdir / "mlmaster.sock"), "--state-dir", str(workdir / "state")],
            stdout=out, stderr=subprocess.STDOUT, env=env,
        )
    code = 1
    try:
        code = asyncio.run(_drive(workdir, example, steps, daemon, log, plain))
    finally:
        if daemon.poll() is None:
            daemon.send_signal(signal.SIGTERM)
            try:
                daemon.wait(timeout=30)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait()
        _say(f"daemon stopped (exit code {daemon.returncode})")
        if clean and code == 0:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            _say(f"the demo's files (state, daemon log, best submission) are in {workdir}")
    return code
