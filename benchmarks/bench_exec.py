"""Launch overhead of a node job: spawn to the script's first output line, for a bare
subprocess, the daemon's runner without a sandbox (launcher + cgroup) and with bubblewrap,
measured side by side (interleaved runs) and printed as p50 and ratios; then the lease rate of
a SlotPool when that module is present.

Usage: .venv/bin/python benchmarks/bench_exec.py [--runs 20] [--leases 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from mlmaster_daemon.execution.lease import JobLimits
from mlmaster_daemon.execution.runner import run_script
from mlmaster_daemon.execution.sandbox import resolve_sandbox
from mlmaster_daemon.execution.workspace import Workspace

# CLOCK_MONOTONIC is one clock for the whole machine, so the child's reading is comparable.
SCRIPT = "import time\nprint(time.monotonic(), flush=True)\n"
LIMITS = JobLimits(memory_mb=2048, max_processes=256, max_file_size_mb=1024)

Launch = Callable[[Workspace, Path], Awaitable[None]]


async def _bare(ws: Workspace, public: Path) -> None:
    with ws.stdout.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(sys.executable, ws.script.name, cwd=ws.root,
                                                    stdout=out, start_new_session=True)
    await proc.wait()


def _runner(sandbox: str) -> Launch:
    async def launch(ws: Workspace, public: Path) -> None:
        result = await run_script(ws, 60, sandbox=sandbox, public_dir=public, limits=LIMITS)
        if result.exit_code != 0:
            raise RuntimeError(f"{sandbox}: exit {result.exit_code}: {ws.stderr.read_text()}")
    return launch


async def _measure(root: Path, public: Path, name: str, run: int,
                   launch: Launch) -> tuple[float, float]:
    ws = Workspace.create(root / f"{name}-{run}", public, SCRIPT)
    started = time.monotonic()
    await launch(ws, public)
    total = time.monotonic() - started
    first_line = float(ws.stdout.read_text().split()[0]) - started
    return first_line, total


async def bench_launch(runs: int) -> None:
    modes: dict[str, Launch] = {"bare subprocess": _bare, "runner, no sandbox": _runner("none")}
    if resolve_sandbox("auto") == "bwrap":
        modes["runner, bwrap"] = _runner("bwrap")
    else:
        print("bubblewrap missing or not working: sandboxed runs skipped")
    first: dict[str, list[float]] = {name: [] for name in modes}
    total: dict[str, list[float]] = {name: [] for name in modes}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        public = root / "public"
        public.mkdir()
        for name, launch in modes.items():
            await _measure(root, public, f"warm-{name}", 0, launch)
        # Interleaved, so machine noise hits every mode alike.
        for run in range(runs):
            for name, launch in modes.items():
                line, whole = await _measure(root, public, name.replace(" ", "_"), run, launch)
                first[name].append(line)
                total[name].append(whole)
    print(f"launch overhead over {runs} interleaved runs each (p50):")
    print(f"  {'mode':<20} {'spawn->first line':>18} {'whole job':>10}")
    for name in modes:
        print(f"  {name:<20} {statistics.median(first[name]) * 1000:15.1f} ms "
              f"{statistics.median(total[name]) * 1000:7.1f} ms")
    base = statistics.median(first["runner, no sandbox"])
    bare = statistics.median(first["bare subprocess"])
    print(f"ratio runner/bare (launcher + cgroup): {base / bare:.2f}")
    if "runner, bwrap" in modes:
        print(f"ratio bwrap/no sandbox: {statistics.median(first['runner, bwrap']) / base:.2f}")


async def bench_slots(leases: int) -> None:
    try:
        from mlmaster_daemon.execution.slots import SlotPool
    except ImportError as exc:
        print(f"SlotPool not available ({exc}): lease benchmark skipped")
        return
    pool = SlotPool([], cpu_slots=4, slots_per_gpu=1, cpus=range(8))
    started = time.perf_counter()
    for _ in range(leases):
        pool.release(await pool.acquire("t0"))
    alone = leases / (time.perf_counter() - started)

    async def worker(task_id: str, count: int) -> None:
        for _ in range(count):
            lease = await pool.acquire(task_id)
            await asyncio.sleep(0)
            pool.release(lease)

    tasks = 16
    started = time.perf_counter()
    await asyncio.gather(*(worker(f"t{k}", leases // tasks) for k in range(tasks)))
    contended = (leases // tasks * tasks) / (time.perf_counter() - started)
    print(f"SlotPool leases/s, one task, no waiting:       {alone:10.0f}")
    print(f"SlotPool leases/s, {tasks} tasks on 4 slots:         {contended:10.0f}")


async def main(runs: int, leases: int) -> None:
    await bench_launch(runs)
    await bench_slots(leases)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--leases", type=int, default=20000)
    args = parser.parse_args()
    asyncio.run(main(args.runs, args.leases))
