"""Daemon memory: the RSS of the real daemon process idle and with 4 tasks running, against the
issue's targets (< 120 MB idle, < 250 MB with 4 running tasks), side by side with a bare Python
process that imports aiohttp and serves nothing, measured in the same run so the ratio
daemon / bare Python means something on a busy machine.

The daemon starts as a user starts it (`python -m mlmaster_daemon daemon --socket --state-dir`)
in a temp folder, with no MLMASTER_* variables, so the default config and the offline coder
(no [llm.code] endpoint) are used; it is ready at its first 200 from GET /v1/health. Idle: the
RSS sampled for a few seconds after the start-up backup. Then 4 tasks on copies of the bundled
breast_cancer example, with 4 CPU slots so each task's scripts run; once every task is running
with a node in flight, the daemon's RSS is sampled for some seconds (median and peak). Node
scripts run as child processes: the target is the daemon's own RSS, the sum with its children
is printed beside it for reference. Everything is stopped at the end (cancel, SIGTERM).

Usage: .venv/bin/python benchmarks/bench_memory.py [--quick] [--tasks 4] [--seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from mlmaster_daemon.api.client import ApiError, Client
from mlmaster_daemon.errors import DaemonUnreachable
from mlmaster_daemon.models import NodeState
from mlmaster_daemon.tasks.examples import build_example

IDLE_TARGET_MB = 120.0
BUSY_TARGET_MB = 250.0
MB = 2**20
# Guards a hang only.
START_TIMEOUT_S = 60.0
RUNNING_TIMEOUT_S = 90.0
TERMINAL = {s.value for s in NodeState if s.terminal}
# The reference: an interpreter with aiohttp imported and a loop that serves nothing.
BARE = ("import asyncio, aiohttp, sys\n"
        "from aiohttp import web\n"
        "async def main():\n"
        "    sys.stdout.write('ready\\n'); sys.stdout.flush()\n"
        "    await asyncio.sleep(3600)\n"
        "asyncio.run(main())\n")


@dataclass(frozen=True)
class Samples:
    """RSS samples in MB of one process alone and with its children."""

    own: list[float]
    tree: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.own)

    @property
    def peak(self) -> float:
        return max(self.own)

    @property
    def tree_median(self) -> float:
        return statistics.median(self.tree)

    @property
    def tree_peak(self) -> float:
        return max(self.tree)


def rss_mb(proc: psutil.Process) -> tuple[float, float]:
    """The RSS of `proc` alone and summed with all its descendants, in MB."""
    own = proc.memory_info().rss
    tree = own
    for child in proc.children(recursive=True):
        try:
            tree += child.memory_info().rss
        except psutil.Error:
            pass  # a script that ended between the listing and the read
    return own / MB, tree / MB


async def sample(proc: psutil.Process, seconds: float, every_s: float = 0.2) -> Samples:
    own: list[float] = []
    tree: list[float] = []
    deadline = time.monotonic() + seconds
    while True:
        a, b = rss_mb(proc)
        own.append(a)
        tree.append(b)
        if time.monotonic() >= deadline:
            return Samples(own, tree)
        await asyncio.sleep(every_s)


def env() -> dict[str, str]:
    # The default config: nothing from the caller's MLMASTER_* or model keys.
    return {k: v for k, v in os.environ.items()
            if not k.startswith("MLMASTER_") and not k.endswith("_API_KEY")}


def read_log(log: Path) -> str:
    return log.read_text(errors="replace")


async def wait_healthy(sock: Path, proc: asyncio.subprocess.Process, log: Path) -> float:
    """Seconds from now until the daemon answers GET /v1/health."""
    t0 = time.monotonic()
    while True:
        if proc.returncode is not None:
            raise SystemExit(f"the daemon exited with {proc.returncode}:\n{read_log(log)}")
        if time.monotonic() - t0 > START_TIMEOUT_S:
            raise SystemExit(f"the daemon was not ready in {START_TIMEOUT_S:.0f} s")
        if await asyncio.to_thread(sock.exists):
            try:
                async with Client(sock, timeout_s=5) as client:
                    await client.health()
                return time.monotonic() - t0
            except (OSError, DaemonUnreachable, ApiError):
                pass  # not listening yet
        await asyncio.sleep(0.1)


async def wait_started(log: Path, proc: asyncio.subprocess.Process) -> None:
    """Until the start-up backup is done ("daemon ready" in the log), so idle means idle."""
    t0 = time.monotonic()
    while "daemon ready" not in await asyncio.to_thread(read_log, log):
        if proc.returncode is not None or time.monotonic() - t0 > START_TIMEOUT_S:
            raise SystemExit(f"no 'daemon ready' log line:\n{read_log(log)}")
        await asyncio.sleep(0.1)


async def wait_running(client: Client, ids: list[str]) -> float:
    """Seconds until every task is running with a node in flight."""
    t0 = time.monotonic()
    while True:
        ready = 0
        for task_id in ids:
            task = await client.task(task_id)
            if task["state"] in ("finished", "failed", "cancelled"):
                raise SystemExit(f"task {task_id} ended early: {task['state']}")
            if task["state"] != "running":
                continue
            nodes = await client.nodes(task_id)
            if any(n["status"] not in TERMINAL for n in nodes):
                ready += 1
        if ready == len(ids):
            return time.monotonic() - t0
        if time.monotonic() - t0 > RUNNING_TIMEOUT_S:
            raise SystemExit(f"only {ready}/{len(ids)} tasks running in {RUNNING_TIMEOUT_S} s")
        await asyncio.sleep(0.3)


async def bare_python(seconds: float) -> Samples:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", BARE,
                                                stdout=asyncio.subprocess.PIPE)
    try:
        assert proc.stdout is not None
        await asyncio.wait_for(proc.stdout.readline(), START_TIMEOUT_S)
        return await sample(psutil.Process(proc.pid), seconds)
    finally:
        proc.kill()
        await proc.wait()


@dataclass(frozen=True)
class Run:
    ready_s: float
    idle: Samples
    running_s: float
    busy: Samples
    stop_s: float
    exit_code: int


async def measure(root: Path, tasks: int, seconds: float, idle_seconds: float) -> Run:
    example = build_example("breast_cancer", root / "example")
    dirs = []
    for i in range(tasks):
        dest = root / f"task{i}"
        shutil.copytree(example, dest)
        dirs.append(dest)
    sock, log_path = root / "d.sock", root / "daemon.log"
    daemon_env = env()
    # One slot per task, so every task has a script running while it is measured.
    daemon_env["MLMASTER_EXECUTION__MAX_CONCURRENT_NODES"] = str(tasks)
    daemon_env["MLMASTER_DAEMON__MAX_RUNNING_TASKS"] = str(tasks)
    with log_path.open("wb") as log:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "mlmaster_daemon", "daemon", "--socket", str(sock),
            "--state-dir", str(root / "state"), stdout=log, stderr=subprocess.STDOUT,
            env=daemon_env)
        try:
            ready_s = await wait_healthy(sock, proc, log_path)
            await wait_started(log_path, proc)
            daemon = psutil.Process(proc.pid)
            idle = await sample(daemon, idle_seconds)
            async with Client(sock) as client:
                ids = []
                for d in dirs:
                    created = await client.submit({"task_dir": str(d), "steps": 1000,
                                                   "time_limit_s": 3600.0})
                    ids.append(str(created["id"]))
                running_s = await wait_running(client, ids)
                busy = await sample(daemon, seconds)
                ended = []
                for task_id in ids:
                    task = await client.task(task_id)
                    if task["state"] != "running":
                        ended.append(f"{task_id} {task['state']}: {task.get('error')}")
                        continue
                    await client.cancel(task_id)
            if ended:
                # Measured all the same, but said: fewer tasks ran than claimed.
                print("tasks that ended while measured:", *ended, sep="\n  ")
            t0 = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            code = await asyncio.wait_for(proc.wait(), 60)
            return Run(ready_s, idle, running_s, busy, time.monotonic() - t0, code)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


def verdict(value: float, target: float) -> str:
    return f"{'PASS' if value < target else 'MISS'} (target < {target:.0f} MB)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short samples (for the tests)")
    parser.add_argument("--tasks", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=None,
                        help="seconds of samples with the tasks running (default 10; 3 quick)")
    args = parser.parse_args()
    seconds = args.seconds if args.seconds is not None else (3.0 if args.quick else 10.0)
    idle_seconds = 1.0 if args.quick else 3.0
    # A short path: a Unix socket's path is limited to about 100 bytes.
    root = Path(tempfile.mkdtemp(prefix="mlm-mem-"))
    try:
        bare = asyncio.run(bare_python(idle_seconds))
        run = asyncio.run(measure(root, args.tasks, seconds, idle_seconds))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    ratio = run.idle.median / bare.median
    print(f"daemon memory (RSS, MB; python {sys.version.split()[0]}, "
          f"{'quick' if args.quick else 'full'} run)")
    print(f"  bare python + aiohttp        median {bare.median:7.1f}  peak {bare.peak:7.1f}")
    print(f"  daemon idle                  median {run.idle.median:7.1f}  "
          f"peak {run.idle.peak:7.1f}  {ratio:.2f}x bare  {verdict(run.idle.peak, IDLE_TARGET_MB)}")
    print(f"  daemon with {args.tasks} running tasks  median {run.busy.median:7.1f}  "
          f"peak {run.busy.peak:7.1f}  {run.busy.median / bare.median:.2f}x bare  "
          f"{verdict(run.busy.peak, BUSY_TARGET_MB)}")
    print(f"  daemon + node scripts        median {run.busy.tree_median:7.1f}  "
          f"peak {run.busy.tree_peak:7.1f}  (reference: scripts are child processes)")
    print(f"  (ready in {run.ready_s:.2f} s; {args.tasks} tasks running with nodes in flight "
          f"after {run.running_s:.2f} s; {len(run.busy.own)} samples over {seconds:.0f} s; "
          f"SIGTERM -> exit {run.stop_s:.2f} s, exit code {run.exit_code})")
    if run.exit_code != 0:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
