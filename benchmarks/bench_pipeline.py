"""Pipelining: slot occupancy of the daemon against ML-Master's serial worker, side by side.

A local OpenAI-compatible server answers every request after a fixed latency L: a code request
with a script that sleeps E seconds (then writes a valid submission and metric), a judge request
(one that offers the `submit_review` tool) with a verdict. K slots run the scripts. For each of
three ratios (L = E/2, L = E, L = 2E) it runs N nodes twice against the same server:

- the daemon: one task of N steps, a code and a feedback (judge) model, `search.parallel` = K,
  `search.num_drafts` = N unless `--drafts` says (the default tree of 5 drafts has nothing to
  expand until a draft's verdict is in: that measures the tree's breadth, not the pipeline);
- ML-Master's serial worker: K workers, each doing code call -> run -> judge call -> ... (the
  run is the same kind of python process, without the daemon's sandbox).

It prints, per ratio:
- occupancy once full: leased slot-seconds / (K x window), the window running from when all K
  slots were first busy at once after the pipeline adapted (its depth needs a run's length, and
  the generations it then starts take L to arrive: the ramp-up is left out) to when the last run
  was handed its slot (after that no work is left to fill a slot: the ramp-down is left out);
  in brackets the same from when all K slots were first busy at all;
- overall occupancy: busy run-seconds / (K x first run's start to the last run's end);
- the wall time for N nodes (submit to the task's end) against N*E/K, and against
  L + N*E/K + L (the first generation and the last verdict cannot overlap any run);
- the daemon's throughput over the serial worker's (the serial wall time over the daemon's).
Target: occupancy once full >= 0.95 at every ratio. `--timeline` also prints each node's way
(generation, slot, run, judge) in seconds from the submit, to see where a slot sat idle.

Usage: .venv/bin/python benchmarks/bench_pipeline.py [--job 1.5] [--slots 4] [--nodes 32]
       [--ratios 0.5,1,2] [--prefetch N] [--drafts D] [--quick] [--timeline]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from aiohttp import web
from openai_server import FakeOpenAI

from mlmaster_daemon.api.client import Client
from mlmaster_daemon.bus import Event, NodeStateChanged
from mlmaster_daemon.config import load_config
from mlmaster_daemon.daemon import Daemon
from mlmaster_daemon.execution.lease import Lease
from mlmaster_daemon.logs import configure_logging
from mlmaster_daemon.tasks.examples import build_example

JOB = """import json, os, random, shutil, time
time.sleep({seconds})
os.makedirs("submission", exist_ok=True)
shutil.copyfile("input/sample_submission.csv", "submission/submission.csv")
json.dump({{"validation_metric": 0.5 + random.random() / 10}}, open("metrics.json", "w"))
"""
Interval = tuple[float, float]


class JudgingServer(FakeOpenAI):
    """The fake server, answering a request that offers tools (the judge's) with a verdict."""

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        if (await request.json()).get("tools"):
            # The body is cached: `_respond` reads it again without yielding in between.
            self.script.appendleft("tool")
        return await self._respond(request, chat=True)


@dataclass
class Timeline:
    """What one run measured, in seconds of `time.monotonic()`."""

    begin: float = 0.0
    end: float = 0.0
    leases: list[Interval] = field(default_factory=list)
    runs: list[Interval] = field(default_factory=list)
    nodes: dict[int, dict[str, float]] = field(default_factory=lambda: defaultdict(dict))


def occupancy(intervals: list[Interval], slots: int) -> float:
    """Busy seconds over K x (first start to last end)."""
    start = min(s for s, _ in intervals)
    end = max(e for _, e in intervals)
    return sum(e - s for s, e in intervals) / (slots * (end - start))


def full_window(intervals: list[Interval], slots: int, after: float) -> Interval | None:
    """From when all `slots` were first busy at once at or after `after` to the last
    interval's start."""
    edges = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    busy = 0
    last_start = max(s for s, _ in intervals)
    for at, step in edges:
        busy += step
        if busy >= slots and at >= after:
            return (at, last_start) if last_start > at else None
    return None


def occupancy_in(intervals: list[Interval], slots: int, window: Interval | None) -> float | None:
    if window is None:
        return None
    lo, hi = window
    busy = sum(max(0.0, min(e, hi) - max(s, lo)) for s, e in intervals)
    return busy / (slots * (hi - lo))


def adapted_at(timeline: Timeline) -> float:
    """When the first node generated with the adapted depth ran: the depth needs a run's
    length, and the generations it starts take L more to arrive."""
    first_end = min(way["evaluating"] for way in timeline.nodes.values()
                    if "evaluating" in way)
    later = [way["running"] for way in timeline.nodes.values()
             if way.get("generating", 0.0) >= first_end and "running" in way]
    return min(later, default=timeline.end)


def _record(timeline: Timeline, event: Event) -> None:
    if isinstance(event, NodeStateChanged):
        timeline.nodes[event.node_id].setdefault(event.state, time.monotonic())


def _watch_slots(daemon: Daemon, timeline: Timeline) -> None:
    """Record every lease's grant and release (the bench's own view; the daemon is as is)."""
    pool = daemon.slots
    assert pool is not None
    acquire, release = pool.acquire, pool.release
    granted: dict[int, float] = {}

    async def timed_acquire(*args: Any, **kwargs: Any) -> Lease:
        lease = await acquire(*args, **kwargs)
        granted[id(lease)] = time.monotonic()
        return lease

    def timed_release(lease: Lease) -> None:
        if id(lease) in granted:
            timeline.leases.append((granted.pop(id(lease)), time.monotonic()))
        release(lease)

    pool.acquire = timed_acquire  # type: ignore[method-assign]
    pool.release = timed_release  # type: ignore[method-assign]


async def run_daemon(server: FakeOpenAI, workdir: Path, slots: int, nodes: int,
                     prefetch: int | None, drafts: int) -> Timeline:
    os.environ["BENCH_KEY"] = "unused"
    endpoint = {"base_url": server.base_url, "model": "bench", "timeout_s": 120,
                "max_concurrency": 64}
    overrides: dict[str, Any] = {
        "daemon.state_dir": str(workdir / "state"), "daemon.socket": str(workdir / "d.sock"),
        "search.parallel": slots, "execution.max_concurrent_nodes": slots,
        "llm.code": endpoint, "llm.feedback": endpoint, "search.num_drafts": drafts,
    }
    if prefetch is not None:
        overrides["llm.prefetch"] = prefetch
    daemon = Daemon(load_config(None, environ={}, overrides=overrides))
    await daemon.start()
    timeline = Timeline()
    daemon.bus.tap(lambda event: _record(timeline, event))
    _watch_slots(daemon, timeline)
    try:
        async with Client(daemon.socket_path) as client:
            timeline.begin = time.monotonic()
            task = await client.submit({"task_dir": str(workdir / "competition"),
                                        "steps": nodes})
            while (await client.task(task["id"]))["state"] not in ("finished", "failed"):  # noqa: ASYNC110
                await asyncio.sleep(0.05)
            timeline.end = time.monotonic()
    finally:
        await daemon.stop()
    for way in timeline.nodes.values():
        if "running" in way and "evaluating" in way:
            timeline.runs.append((way["running"], way["evaluating"]))
    return timeline


async def run_serial(server: FakeOpenAI, slots: int, nodes: int, job_s: float) -> Timeline:
    """ML-Master's worker: each of K workers calls the model, runs the script, calls the
    judge, and only then calls the model again."""
    import openai

    client = openai.AsyncOpenAI(api_key="unused", base_url=server.base_url, max_retries=0)
    timeline = Timeline(begin=time.monotonic())
    remaining = [nodes]
    judge_tool = {"type": "function", "function": {"name": "submit_review", "parameters": {}}}

    async def worker() -> None:
        while remaining[0] > 0:
            remaining[0] -= 1
            await client.chat.completions.create(
                model="bench", messages=[{"role": "user", "content": "code please"}])
            started = time.monotonic()
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-c", f"import time; time.sleep({job_s})")
            await process.wait()
            timeline.runs.append((started, time.monotonic()))
            await client.chat.completions.create(
                model="bench", messages=[{"role": "user", "content": "judge please"}],
                tools=[judge_tool])  # type: ignore[list-item]

    await asyncio.gather(*(worker() for _ in range(slots)))
    timeline.end = time.monotonic()
    await client.close()
    return timeline


def print_timeline(name: str, timeline: Timeline) -> None:
    print(f"  {name}: node  generating  ready  running  evaluating  done   (s from submit)")
    for node_id, way in sorted(timeline.nodes.items()):
        cells = [way.get(s) for s in ("generating", "ready", "running", "evaluating")]
        end = way.get("done", way.get("buggy", way.get("failed")))
        row = "".join(f"{(c - timeline.begin):9.2f}" if c else "        -"
                      for c in [*cells, end])
        print(f"    {node_id:4d}{row}")
    print(f"  task ended at {timeline.end - timeline.begin:.2f}")


def report(latency: float, job: float, slots: int, nodes: int, daemon: Timeline,
           serial: Timeline) -> float | None:
    full = occupancy_in(daemon.leases, slots,
                        full_window(daemon.leases, slots, adapted_at(daemon)))
    from_busy = occupancy_in(daemon.leases, slots, full_window(daemon.leases, slots, 0.0))
    ideal = nodes * job / slots
    wall = daemon.end - daemon.begin
    serial_wall = serial.end - serial.begin

    def show(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f}"

    print(f"L = {latency:g} s, E = {job:g} s (L/E = {latency / job:g}), K = {slots}, "
          f"N = {nodes}")
    print(f"  daemon  occupancy once full {show(full)} (from the first K busy "
          f"{show(from_busy)}), overall {occupancy(daemon.runs, slots):.3f}")
    print(f"          wall {wall:.1f} s = {wall / ideal:.2f} x N*E/K ({ideal:.1f} s), "
          f"{wall / (ideal + 2 * latency):.2f} x (L + N*E/K + L)")
    print(f"  serial  occupancy {occupancy(serial.runs, slots):.3f}; wall {serial_wall:.1f} s"
          f" = {serial_wall / ideal:.2f} x N*E/K")
    print(f"  throughput daemon / serial worker: {serial_wall / wall:.2f}")
    return full


async def main(job: float, slots: int, nodes: int, ratios: list[float],
               prefetch: int | None, drafts: int | None, timeline: bool) -> None:
    configure_logging("warning")
    worst: float | None = 1.0
    for ratio in ratios:
        latency = ratio * job
        server = await JudgingServer(code=JOB.format(seconds=job), latency_s=latency).start()
        try:
            with tempfile.TemporaryDirectory(prefix="mlm-bench-") as tmp:
                workdir = Path(tmp)
                build_example("breast_cancer", workdir / "competition")
                daemon = await run_daemon(server, workdir, slots, nodes, prefetch,
                                          drafts or nodes)
            serial = await run_serial(server, slots, nodes, job)
        finally:
            await server.stop()
        full = report(latency, job, slots, nodes, daemon, serial)
        if timeline:
            print_timeline("daemon", daemon)
        worst = None if full is None or worst is None else min(worst, full)
    verdict = "reached" if worst is not None and worst >= 0.95 else "NOT reached"
    print(f"target occupancy once full >= 0.95: {verdict} (worst {worst})")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--job", type=float, default=1.5, help="E: seconds a script runs")
    parser.add_argument("--slots", type=int, default=4, help="K: run slots")
    parser.add_argument("--nodes", type=int, default=32, help="N: nodes per run")
    parser.add_argument("--ratios", default="0.5,1,2", help="L/E ratios, comma-separated")
    parser.add_argument("--prefetch", type=int, default=None,
                        help="llm.prefetch (default: the config's)")
    parser.add_argument("--drafts", type=int, default=None,
                        help="search.num_drafts (default N: the tree always has a node to "
                        "expand, so what is measured is the pipeline; 5 is the default tree)")
    parser.add_argument("--quick", action="store_true",
                        help="E = 0.5 s, K = 2, N = 8: a smoke run, not a measurement")
    parser.add_argument("--timeline", action="store_true", help="print each node's way")
    args = parser.parse_args()
    if args.quick:
        args.job, args.slots, args.nodes = 0.5, 2, 8
    asyncio.run(main(args.job, args.slots, args.nodes,
                     [float(r) for r in args.ratios.split(",")], args.prefetch, args.drafts,
                     args.timeline))
