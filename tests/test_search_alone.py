"""One task's search, run without a daemon or a socket: a real SQLite store in a temp dir, the
offline coder, the local executor (real subprocesses) and a manual clock."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from mlmaster_daemon.bus import NodeStateChanged, Subscription, TaskStateChanged
from mlmaster_daemon.coders.protocol import CodeRequest, CodeResponse
from mlmaster_daemon.execution.executor import LocalExecutor
from mlmaster_daemon.execution.slots import SlotPool
from mlmaster_daemon.models import NodeState, Operator, TaskState
from mlmaster_daemon.scheduler import TaskQueue, TaskSearch
from mlmaster_daemon.store import NodeRecord, TaskRecord
from tests.search_bench import Bench, new_task, open_bench


@pytest.fixture
async def bench(tmp_path: Path) -> AsyncIterator[Bench]:
    async for opened in open_bench(tmp_path):
        yield opened


async def _task(bench: Bench, task_dir: Path, steps: int, **fields: object) -> TaskRecord:
    return await new_task(bench, task_dir, steps, **fields)


async def test_a_whole_search_runs_without_a_daemon_and_keeps_its_best(
    bench: Bench, breast_cancer: Path,
) -> None:
    task = await _task(bench, breast_cancer, steps=4)
    await TaskSearch(task, bench.parts).run()
    done = await bench.store.get_task(task.id)
    nodes = await bench.store.list_nodes(task.id)
    assert done.state is TaskState.FINISHED and done.error is None
    assert len(nodes) == 4 and all(n.state.terminal for n in nodes)
    ids = {n.id for n in nodes}
    assert all(n.parent_id is None or n.parent_id in ids for n in nodes)
    assert nodes[0].operator is Operator.DRAFT and nodes[0].parent_id is None
    working = [n for n in nodes if n.state is NodeState.DONE and n.metric is not None]
    # The final submission is chosen by the hidden holdout (the default rule).
    assert done.selection is not None and done.selection["rule"] == "holdout"
    best = next(n for n in working if n.id == done.selection["node_id"])
    assert best.holdout_metric == max(n.holdout_metric or 0.0 for n in working)
    assert done.best_node_id == best.id and done.best_metric == best.metric
    best_dir = bench.state_dir / "tasks" / task.id / "best"
    assert json.loads((best_dir / "node.json").read_text())["node_id"] == best.id
    assert (best_dir / "submission.csv").read_text().startswith("id,")
    # The outcome of every node is in the saved search state a restart continues from.
    saved = await bench.store.search_state(task.id)
    assert saved is not None and saved["inflight"] == {}


async def test_the_time_budget_counts_active_time_not_downtime(
    bench: Bench, breast_cancer: Path,
) -> None:
    bench.parts.coder = QuickCoder()
    task = await _task(bench, breast_cancer, steps=10_000, time_limit_s=100.0)
    queue = TaskQueue(bench.parts)
    async with bench.parts.bus.subscribe(lambda e: True) as events:
        await queue.start()
        await _until_node_done(events)
    bench.clock.advance(40)
    await queue.stop()
    stopped = await bench.store.get_task(task.id)
    assert stopped.state is TaskState.RUNNING and stopped.active_s == pytest.approx(40)
    # Down for longer than the whole budget: on a wall clock the task would be over.
    bench.clock.advance(1000)
    again = TaskQueue(bench.parts)
    async with bench.parts.bus.subscribe(lambda e: True) as events:
        await again.start()
        await _until_node_done(events)
        assert (await bench.store.get_task(task.id)).state is TaskState.RUNNING
        bench.clock.advance(70)
        await _until_ended(events, task.id)
    final = await bench.store.get_task(task.id)
    assert final.state is TaskState.FINISHED
    assert final.active_s == pytest.approx(110)


async def test_a_search_that_raises_at_its_end_fails_the_task_once(
    bench: Bench, breast_cancer: Path,
) -> None:
    _set(bench, "search.keep_top_k", 2)
    bench.parts.coder = QuickCoder()
    task = await _task(bench, breast_cancer, steps=2)
    # top/ cannot be made: keeping the top k raises after the search ran out.
    root = bench.state_dir / "tasks" / task.id
    root.mkdir(parents=True)
    (root / "top").write_text("in the way")
    queue = TaskQueue(bench.parts)
    async with bench.parts.bus.subscribe(
            lambda e: isinstance(e, TaskStateChanged)) as events:
        await queue.start()
        await _until_ended(events, task.id)
        # Any relaunch would wait out a back-off first: let it come.
        bench.clock.advance(3600)
        for _ in range(20):
            await asyncio.sleep(0)
        seen = []
        while not events.queue.empty():
            seen.append(events.queue.get_nowait())
    final = await bench.store.get_task(task.id)
    assert final.state is TaskState.FAILED and final.error is not None
    assert final.error.startswith("internal error:") and "top" in final.error
    assert not queue.backing_off and not queue.searches
    assert not [e for e in seen if isinstance(e, TaskStateChanged) and e.state == "running"]
    await queue.stop()


QUICK_SCRIPT = """import json, os, shutil
os.makedirs("submission", exist_ok=True)
shutil.copyfile("input/sample_submission.csv", "submission/submission.csv")
json.dump({"validation_metric": METRIC}, open("metrics.json", "w"))
"""


class QuickCoder:
    """Writes a script that submits the sample submission at once (for tests where what the
    model learns does not matter, only how the search goes), and keeps every request."""

    def __init__(self) -> None:
        self.requests: list[CodeRequest] = []

    async def generate(self, request: CodeRequest) -> CodeResponse:
        self.requests.append(request)
        code = QUICK_SCRIPT.replace("METRIC", repr(0.5 + request.node_id / 1000))
        return CodeResponse("Submit the sample.", code, f"quick node {request.node_id}")

    async def wait_available(self) -> None:
        return None


async def test_steps_left_in_the_prompt_leave_out_nodes_a_stop_interrupted(
    bench: Bench, breast_cancer: Path,
) -> None:
    coder = QuickCoder()
    bench.parts.coder = coder
    # One node at a time, so each prompt is built before the next node exists.
    _set(bench, "search.parallel", 1)
    _set(bench, "llm.prefetch", 0)
    task = await _task(bench, breast_cancer, steps=3)
    # A daemon stop interrupted this node before it had code: it is not a step.
    await bench.store.insert_node(NodeRecord(
        task_id=task.id, id=1, parent_id=None, operator=Operator.DRAFT,
        state=NodeState.FAILED, created_at=bench.clock.time(), interrupted=True))
    await TaskSearch(task, bench.parts).run()
    assert [r.steps_left for r in coder.requests] == [2, 1, 0]


def _set(bench: Bench, key: str, value: object) -> None:
    bench.set(key, value)


async def _until_node_done(events: Subscription) -> None:
    async with asyncio.timeout(120):
        while True:
            event = await events.get()
            if isinstance(event, NodeStateChanged) and event.state in ("done", "buggy"):
                return


async def _until_ended(events: Subscription, task_id: str) -> None:
    async with asyncio.timeout(180):
        while True:
            event = await events.get()
            if (isinstance(event, TaskStateChanged) and event.task_id == task_id
                    and TaskState(event.state).terminal):
                return


async def test_a_cancel_before_the_search_starts_keeps_the_active_time_it_had(
    bench: Bench, breast_cancer: Path,
) -> None:
    task = await _task(bench, breast_cancer, steps=3, active_s=12.5)
    search = TaskSearch(task, bench.parts)
    running = asyncio.create_task(search.run())
    await asyncio.sleep(0)  # it starts, and waits for its task's row
    search.cancel()
    running.cancel()
    await running
    final = await bench.store.get_task(task.id)
    assert final.state is TaskState.CANCELLED and final.active_s == 12.5


async def test_no_node_starts_once_too_little_of_the_tasks_time_is_left(
    bench: Bench, breast_cancer: Path,
) -> None:
    bench.parts.coder = QuickCoder()
    # One run slot for two picks: one node waits for a slot while the other runs.
    bench.parts.executor = LocalExecutor(bench.parts.settings, SlotPool([], 1, 1),
                                         bench.state_dir)
    task = await _task(bench, breast_cancer, steps=10_000, time_limit_s=100.0)
    queue = TaskQueue(bench.parts)
    async with bench.parts.bus.subscribe(lambda e: True) as events:
        await queue.start()
        await _until_node_done(events)
        # 3 s left: under the 5 s a node needs at least. Nothing new starts; the task ends.
        bench.clock.advance(97)
        cut = bench.clock.time()
        await _until_ended(events, task.id)
    await queue.stop()
    final = await bench.store.get_task(task.id)
    assert final.state is TaskState.FINISHED
    nodes = await bench.store.list_nodes(task.id)
    assert all(n.started_at is None or n.started_at < cut for n in nodes)
    for node in nodes:
        if node.state is NodeState.FAILED:
            assert node.error is not None and node.error.startswith("not run: too little")


class BrokenCoder:
    """A coder with a bug: it raises on every request."""

    def __init__(self) -> None:
        self.calls = 0

    async def generate(self, request: CodeRequest) -> CodeResponse:
        self.calls += 1
        raise AttributeError("'Recipe' object has no attribute 'ensemble_with'")

    async def wait_available(self) -> None:
        return None


async def test_a_coder_that_always_raises_fails_the_task_instead_of_spinning(
    bench: Bench, breast_cancer: Path,
) -> None:
    coder = BrokenCoder()
    bench.parts.coder = coder
    task = await _task(bench, breast_cancer, steps=10_000)
    queue = TaskQueue(bench.parts)
    async with bench.parts.bus.subscribe(lambda e: True) as events:
        await queue.start()
        await _until_ended(events, task.id)
    await queue.stop()
    final = await bench.store.get_task(task.id)
    assert final.state is TaskState.FAILED and final.error is not None
    assert re.search(r"1\d expansions in a row failed", final.error)
    assert "no attribute 'ensemble_with'" in final.error
    # It stopped soon: the parallel picks in flight at the tenth failure, no more.
    assert coder.calls <= 10 + 2 * 2
