"""Pipelining: slot occupancy of the daemon against ML-Master's serial worker, in one run.

A local OpenAI-compatible server answers every request after a fixed latency L with a script
that runs for E seconds (then writes a valid submission and metric); K slots run them. The
daemon keeps `prefetch` generations ahead of its running nodes. The serial baseline is K
workers that each do LLM call -> run -> LLM call -> ..., as ML-Master's threads do, against
the same server. Occupancy = busy run-seconds / (K x wall time from the first run's start to
the last run's end). Target: daemon occupancy >= 0.9 at L = E, K = 4.

Usage: .venv/bin/python benchmarks/bench_pipeline.py [--latency 1.5] [--job 1.5] [--slots 4]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from openai_server import FakeOpenAI

from mlmaster_daemon.api.client import Client
from mlmaster_daemon.config import load_config
from mlmaster_daemon.daemon import Daemon
from mlmaster_daemon.logs import configure_logging
from mlmaster_daemon.tasks.examples import build_example

JOB = """import json, os, random, shutil, time
time.sleep({seconds})
os.makedirs("submission", exist_ok=True)
shutil.copyfile("input/sample_submission.csv", "submission/submission.csv")
json.dump({{"validation_metric": 0.5 + random.random() / 10}}, open("metrics.json", "w"))
"""


def occupancy(intervals: list[tuple[float, float]], slots: int) -> float:
    start = min(s for s, _ in intervals)
    end = max(e for _, e in intervals)
    busy = sum(e - s for s, e in intervals)
    return busy / (slots * (end - start))


async def run_daemon(server: FakeOpenAI, workdir: Path, slots: int, nodes: int,
                     prefetch: int) -> float:
    os.environ["BENCH_KEY"] = "unused"
    config = load_config(None, environ={}, overrides={
        "daemon.state_dir": str(workdir / "state"), "daemon.socket": str(workdir / "d.sock"),
        "search.parallel": slots, "execution.max_concurrent_nodes": slots,
        "llm.prefetch": prefetch,
        "llm.code": {"base_url": server.base_url, "model": "bench", "timeout_s": 120},
    })
    daemon = Daemon(config)
    await daemon.start()
    try:
        async with Client(daemon.socket_path) as client:
            task = await client.submit({"task_dir": str(workdir / "competition"),
                                        "steps": nodes})
            while (await client.task(task["id"]))["state"] not in ("finished", "failed"):  # noqa: ASYNC110
                await asyncio.sleep(0.2)
        assert daemon.store is not None
        rows = await daemon.store.list_nodes(task["id"])
    finally:
        await daemon.stop()
    intervals = [(n.started_at, n.finished_at) for n in rows
                 if n.started_at is not None and n.finished_at is not None]
    return occupancy(intervals, slots)


async def run_serial(server: FakeOpenAI, slots: int, nodes: int, job_s: float) -> float:
    """ML-Master's worker: each of K threads calls the model, then runs, then calls again."""
    import openai

    client = openai.AsyncOpenAI(api_key="unused", base_url=server.base_url, max_retries=0)
    intervals: list[tuple[float, float]] = []
    remaining = [nodes]

    async def worker() -> None:
        while remaining[0] > 0:
            remaining[0] -= 1
            await client.chat.completions.create(
                model="bench", messages=[{"role": "user", "content": "code please"}])
            started = time.monotonic()
            await asyncio.sleep(job_s)
            intervals.append((started, time.monotonic()))

    await asyncio.gather(*(worker() for _ in range(slots)))
    await client.close()
    return occupancy(intervals, slots)


async def main(latency: float, job: float, slots: int, nodes: int, prefetch: int) -> None:
    configure_logging("warning")
    server = await FakeOpenAI(code=JOB.format(seconds=job), latency_s=latency).start()
    try:
        with tempfile.TemporaryDirectory(prefix="mlm-bench-") as tmp:
            workdir = Path(tmp)
            build_example("breast_cancer", workdir / "competition")
            daemon = await run_daemon(server, workdir, slots, nodes, prefetch)
        serial = await run_serial(server, slots, nodes, job)
    finally:
        await server.stop()
    print(f"L = {latency} s, E = {job} s, K = {slots} slots, {nodes} nodes, prefetch {prefetch}")
    print(f"slot occupancy  daemon (pipelined): {daemon:.3f}")
    print(f"slot occupancy  serial worker:      {serial:.3f}")
    print(f"ratio daemon / serial: {daemon / serial:.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--latency", type=float, default=1.5)
    parser.add_argument("--job", type=float, default=1.5)
    parser.add_argument("--slots", type=int, default=4)
    parser.add_argument("--nodes", type=int, default=48)
    parser.add_argument("--prefetch", type=int, default=6)
    args = parser.parse_args()
    asyncio.run(main(args.latency, args.job, args.slots, args.nodes, args.prefetch))
