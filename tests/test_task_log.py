"""Each task's human-readable log, `tasks/<id>/task.log`: a line per event of that task as it
happens (state changes, each node's outcome, new bests, pauses), only that task's, bounded,
without keys, and never written through a link."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import daemon_config, wait_terminal

from mlmaster_daemon.api.client import Client
from mlmaster_daemon.bus import BestImproved, EventBus, NodeStateChanged, TaskStateChanged
from mlmaster_daemon.daemon import Daemon
from mlmaster_daemon.redact import MARK, forget_secrets, register_secret
from mlmaster_daemon.task_log import TASK_LOG, TaskLogs, describe

KEY = "sk-task-log-never-shows-77aa"
LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ  \S")


def node_event(task_id: str, node_id: int, state: str, **fields: object) -> NodeStateChanged:
    return NodeStateChanged(task_id=task_id, node_id=node_id, parent_id=None, operator="draft",
                            state=state, ts=0.0, **fields)  # type: ignore[arg-type]


async def test_each_task_logs_its_own_nodes_and_end(short_dir: Path,
                                                    breast_cancer: Path) -> None:
    config = daemon_config(short_dir / "state", short_dir / "api.sock")
    daemon = Daemon(config)
    await daemon.start()
    try:
        async with Client(daemon.socket_path) as client:
            # Two tasks at once, of different sizes: their logs must not mix.
            ids = [(await client.submit({"task_dir": str(breast_cancer), "steps": steps}))["id"]
                   for steps in (1, 2)]
            ends = [await wait_terminal(client, task_id) for task_id in ids]
            nodes = {task_id: await client.nodes(task_id) for task_id in ids}
    finally:
        await daemon.stop()
    assert [end["state"] for end in ends] == ["finished", "finished"]
    for task_id, other in (ids, ids[::-1]):
        text = (short_dir / "state" / "tasks" / task_id / TASK_LOG).read_text()
        lines = text.splitlines()
        assert all(LINE.match(line) for line in lines), text
        assert other not in text
        assert f"task {task_id} queued" in lines[0]
        assert any(line.endswith(f"task {task_id} running") for line in lines)
        assert lines[-1].endswith(f"task {task_id} finished")
        finished = [line for line in lines if "nodes done]" in line]
        assert len(finished) == len(nodes[task_id])
        for node in nodes[task_id]:
            mine = [line for line in finished if f"  node {node['id']} " in line]
            assert len(mine) == 1, finished
            assert f"node {node['id']} {node['operator']} from root: {node['status']}" in mine[0]
            assert f"metric {node['metric']:.6g}" in mine[0]
            # Picked (generating) and running come before the outcome.
            states = [line.rsplit(": ", 1)[-1] for line in lines
                      if f"  node {node['id']} " in line and "nodes done]" not in line]
            assert "running" in states
        best = ends[ids.index(task_id)]["best"]
        assert any(f"best improved: node {best['node_id']}" in line for line in lines)


def test_lines_say_what_happened_in_words() -> None:
    assert describe(TaskStateChanged(task_id="t1", state="paused", ts=0.0,
                                     error="llm endpoint down: HTTP 503")) == (
        "1970-01-01 00:00:00Z  task t1 paused: llm endpoint down: HTTP 503")
    assert describe(NodeStateChanged(
        task_id="t1", node_id=4, parent_id=2, operator="debug", state="buggy", ts=0.0,
        error="Traceback (most recent call last):\n  KeyError: 'id'", nodes_done=4,
        nodes_total=5)) == (
        "1970-01-01 00:00:00Z  node 4 debug from node 2: buggy, error: Traceback (most "
        "recent call last): KeyError: 'id' [4/5 nodes done]")
    assert describe(BestImproved(task_id="t1", node_id=3, metric=0.98765432, ts=0.0,
                                 submission_path="/x")) == (
        "1970-01-01 00:00:00Z  best improved: node 3, metric 0.987654")


@pytest.fixture
def secret() -> Iterator[str]:
    register_secret(KEY)
    yield KEY
    forget_secrets()


async def test_keys_never_reach_the_log(tmp_path: Path, secret: str) -> None:
    bus = EventBus()
    logs = TaskLogs(tmp_path)
    logs.follow(bus)
    # A long error whose key sits where the line's cut would split it.
    bus.publish(node_event("t1", 1, "failed", error="x" * 290 + f" {secret} " + "y" * 50))
    bus.publish(TaskStateChanged(task_id="t1", state="failed", error=f"died: {secret}"))
    await logs.flush()
    text = logs.path("t1").read_text()
    assert secret not in text and secret[:12] not in text
    assert f"died: {MARK}" in text


async def test_a_log_past_its_bound_turns_over_keeping_the_newest(tmp_path: Path) -> None:
    bus = EventBus()
    logs = TaskLogs(tmp_path, max_bytes=2000)
    logs.follow(bus)
    for node_id in range(1, 101):
        bus.publish(node_event("t1", node_id, "running"))
        # Small batches, as a running task makes them.
        await logs.flush()
    bus.publish(TaskStateChanged(task_id="t1", state="finished", ts=0.0))
    await logs.flush()
    current, older = logs.path("t1"), logs.path("t1").with_name(TASK_LOG + ".1")
    assert current.stat().st_size <= 2000
    assert older.stat().st_size <= 2000
    lines = current.read_text().splitlines()
    assert lines[0].startswith("(earlier lines are in task.log.1")
    assert lines[-1].endswith("task t1 finished")
    assert "node 100 " in current.read_text()


async def test_a_link_in_place_of_the_log_is_not_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_text("untouched\n")
    bus = EventBus()
    logs = TaskLogs(tmp_path / "state")
    logs.follow(bus)
    logs.path("t1").parent.mkdir(parents=True)
    logs.path("t1").symlink_to(outside)
    bus.publish(TaskStateChanged(task_id="t1", state="running"))
    await logs.flush()
    assert outside.read_text() == "untouched\n"
    # The bus and its publisher went on.
    bus.publish(TaskStateChanged(task_id="t2", state="running"))
    await logs.flush()
    assert logs.path("t2").read_text().endswith("task t2 running\n")


async def test_lines_are_written_in_publish_order_across_batches(tmp_path: Path) -> None:
    bus = EventBus()
    logs = TaskLogs(tmp_path)
    logs.follow(bus)
    for node_id in range(1, 51):
        bus.publish(node_event("t1", node_id, "generating"))
        if node_id % 7 == 0:
            await asyncio.sleep(0)
    await logs.flush()
    ids = [int(line.split("  node ")[1].split()[0])
           for line in logs.path("t1").read_text().splitlines()]
    assert ids == list(range(1, 51))
