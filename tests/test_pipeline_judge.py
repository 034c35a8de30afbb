"""Pipelining: a judge call never holds back the next run, and the prefetch depth follows the
task's generation time (L) over its run time (E)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest
from aiohttp import web
from conftest import daemon_config, wait_terminal
from openai_server import FakeOpenAI

from mlmaster_daemon.api.client import Client
from mlmaster_daemon.bus import Event, NodeStateChanged
from mlmaster_daemon.config import Config, load_config
from mlmaster_daemon.daemon import Daemon
from mlmaster_daemon.scheduler.pipeline import SPARE, Pipeline, prefetch_depth

ROOT = Path(__file__).resolve().parents[1]
JOB = """import json, os, shutil
os.makedirs("submission", exist_ok=True)
shutil.copyfile("input/sample_submission.csv", "submission/submission.csv")
json.dump({"validation_metric": 0.5}, open("metrics.json", "w"))
"""


class HeldJudge(FakeOpenAI):
    """A judge model that answers no request until the test opens `gate`."""

    def __init__(self) -> None:
        super().__init__(default="tool")
        self.gate = asyncio.Event()
        self.held = 0

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        self.held += 1
        await self.gate.wait()
        return await self._respond(request, chat=True)


@pytest.mark.parametrize(("slots", "latency", "run", "maximum", "depth"), [
    (4, 0.75, 1.5, 16, 2 + SPARE),  # L = E/2
    (4, 1.5, 1.5, 16, 4 + SPARE),   # L = E
    (4, 3.0, 1.5, 16, 8 + SPARE),   # L = 2E
    (4, 3.0, 1.5, 5, 5),            # bounded by llm.prefetch
    (4, 3.0, 1.5, 0, 0),            # 0: no pipelining
    (2, 0.01, 60.0, 16, 1 + SPARE),  # a fast model still keeps one generation under way
    (4, None, 1.5, 16, 4),          # nothing measured yet: L = E assumed
    (4, 3.0, None, 16, 4),
    (4, 3.0, 0.0, 16, 16),          # runs that end at once: as deep as allowed
])
def test_prefetch_depth_is_k_times_latency_over_run_time(
        slots: int, latency: float | None, run: float | None, maximum: int,
        depth: int) -> None:
    assert prefetch_depth(slots, latency, run, maximum) == depth


def test_pipeline_depth_uses_the_medians_of_recent_generations_and_runs() -> None:
    pipeline = Pipeline()
    for seconds in (2.0, 3.0, 100.0):  # one generation that waited out an outage
        pipeline.generated(seconds)
    assert pipeline.depth(4, [1.5, 1.5, 0.1], maximum=16) == 8 + SPARE


def test_a_run_that_ends_wakes_the_dispatcher_once() -> None:
    pipeline = Pipeline()
    pipeline.started(1)
    pipeline.ran(1)
    assert not pipeline.ahead and pipeline.changed.is_set()
    pipeline.changed.clear()
    pipeline.ran(1)  # its expansion ending later changes nothing
    assert not pipeline.changed.is_set()


def _config(parallel: int, prefetch: int, max_concurrency: int | None = None) -> Config:
    overrides: dict[str, object] = {"search.parallel": parallel, "llm.prefetch": prefetch}
    if max_concurrency is not None:
        overrides["llm.code"] = {"base_url": "http://127.0.0.1:9/v1", "model": "m",
                                 "max_concurrency": max_concurrency}
    return load_config(None, environ={}, overrides=overrides)


def _ahead(count: int, generation_s: float = 3.0) -> Pipeline:
    pipeline = Pipeline()
    pipeline.generated(generation_s)
    for node_id in range(count):
        pipeline.started(node_id)
    return pipeline


def test_room_ahead_of_the_slots_follows_the_depth() -> None:
    config = _config(parallel=4, prefetch=16)  # L = 2E: 9 beyond the 4 slots
    assert _ahead(12).room(config, 12, [1.5], left_s=600)
    assert not _ahead(13).room(config, 13, [1.5], left_s=600)


def test_room_is_bounded_by_what_the_code_model_serves_at_once() -> None:
    config = _config(parallel=4, prefetch=16, max_concurrency=4)
    assert _ahead(7).room(config, 7, [1.5], left_s=600)
    assert not _ahead(8).room(config, 8, [1.5], left_s=600)


def test_no_generation_ahead_when_it_would_arrive_too_late_to_run() -> None:
    config = _config(parallel=4, prefetch=16)
    assert not _ahead(4).room(config, 4, [1.5], left_s=4.0)  # L + E = 4.5 s
    assert _ahead(3).room(config, 3, [1.5], left_s=4.0)  # the slots' own: the task decides


def test_prefetch_zero_counts_every_expansion_until_its_outcome() -> None:
    config = _config(parallel=2, prefetch=0)
    pipeline = _ahead(0)  # both runs ended, both still being judged
    assert not pipeline.room(config, 2, [1.5], left_s=600)
    assert pipeline.room(config, 1, [1.5], left_s=600)


async def test_runs_go_on_while_the_judge_of_an_earlier_node_is_outstanding(
        short_dir: Path, breast_cancer: Path) -> None:
    # One run slot and one generation ahead: before, the node being judged counted as one of
    # the two expansions allowed, so node 3 waited for node 1's verdict.
    coder = await FakeOpenAI(code=JOB).start()
    judge = await HeldJudge().start()
    endpoint = {"base_url": coder.base_url, "model": "m", "timeout_s": 120, "max_retries": 0}
    config = daemon_config(short_dir / "state", short_dir / "api.sock", parallel=1, extra={
        "execution.max_concurrent_nodes": 1, "llm.prefetch": 1, "llm.code": endpoint,
        "llm.feedback": {**endpoint, "base_url": judge.base_url}})
    daemon = Daemon(config)
    await daemon.start()
    seen: dict[int, set[str]] = defaultdict(set)
    ran = asyncio.Event()

    def watch(event: Event) -> None:
        if isinstance(event, NodeStateChanged):
            seen[event.node_id].add(event.state)
            if sum("evaluating" in states for states in seen.values()) == 3:
                ran.set()

    daemon.bus.tap(watch)
    try:
        async with Client(daemon.socket_path) as client:
            task = await client.submit({"task_dir": str(breast_cancer), "steps": 3})
            # A bound for a failure to show, not a measurement.
            async with asyncio.timeout(90):
                await ran.wait()
            assert judge.held >= 1 and not any("done" in s for s in seen.values())
            assert daemon.slots is not None and daemon.slots.busy == 0
            judge.gate.set()
            finished = await wait_terminal(client, task["id"])
        assert finished["state"] == "finished"
        assert daemon.store is not None
        nodes = await daemon.store.list_nodes(task["id"])
        assert [n.state.value for n in nodes] == ["done"] * 3  # the steps, and no more
        assert all(n.analysis == "ran fine" for n in nodes)
    finally:
        judge.gate.set()
        await daemon.stop()
        await coder.stop()
        await judge.stop()


@pytest.mark.slow
def test_pipeline_bench_runs_at_three_ratios() -> None:
    # A smoke run of the benchmark: it prints its figures; timing is not asserted.
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_pipeline.py"),
                          "--quick"], capture_output=True, text=True, timeout=600, check=True)
    assert out.stdout.count("throughput daemon / serial worker") == 3
