"""Faults of the machine lose nothing committed: a full disk pauses the task (and never
relaunches it in a loop) until writes work again, then it resumes and finishes; a node that
keeps taking the daemon down with it is failed instead of run a third time."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import TERMINAL, daemon_config
from structlog.testing import capture_logs

from mlmaster_daemon.api.client import Client
from mlmaster_daemon.daemon import Daemon
from mlmaster_daemon.models import NodeState, Operator, TaskState
from mlmaster_daemon.store import NodeRecord, Store, TaskRecord
from mlmaster_daemon.store.db import CRASHED_TOO_OFTEN
from mlmaster_daemon.tasks.competition import load_task


@pytest.fixture
def small_disk(short_dir: Path) -> Iterator[Path]:
    """A 96 MiB tmpfs to hold a daemon's state, so the test can fill it."""
    mount = short_dir / "state"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96m", "tmpfs", str(mount)],
                          capture_output=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(disk: Path) -> Path:
    """Write a ballast file until the disk is full; its path."""
    ballast = disk / "ballast"
    with ballast.open("wb") as handle:
        chunk = b"\1" * (1 << 20)
        with contextlib.suppress(OSError):
            while True:
                handle.write(chunk)
                handle.flush()
    with pytest.raises(OSError) as full:
        (disk / "probe").write_bytes(b"\1" * 65536)
    assert full.value.errno == errno.ENOSPC
    return ballast


async def _wait(check: Any, timeout_s: float = 180) -> Any:
    async with asyncio.timeout(timeout_s):
        while not (found := await check()):
            await asyncio.sleep(0.1)
    return found


async def test_a_full_disk_pauses_the_task_until_space_returns_then_it_finishes(
    small_disk: Path, short_dir: Path, breast_cancer: Path,
) -> None:
    config = daemon_config(small_disk, short_dir / "api.sock", steps=8, extra={
        "daemon.fault_retry_s": 0.1, "daemon.fault_retry_max_s": 0.4,
        "execution.max_workspace_mb": 0})
    daemon = Daemon(config)
    await daemon.start()
    try:
        async with Client(daemon.socket_path) as client:
            task_id = (await client.submit({"task_dir": str(breast_cancer)}))["id"]

            async def some_done() -> list[dict[str, Any]]:
                nodes = await client.nodes(task_id)
                return [n for n in nodes if n["status"] == "done"]

            before = await _wait(some_done)
            with capture_logs() as logs:
                ballast = _fill(small_disk)

                async def backing_off() -> bool:
                    assert daemon.queue is not None
                    entry = daemon.queue.backing_off.get(task_id)
                    return entry is not None and entry[0] >= 4

                await _wait(backing_off)
                paused = await client.task(task_id)
                starts = [e for e in logs if e["event"] == "task started"]
            # Paused, saying why, and not relaunched in a loop while the disk stayed full. One
            # relaunch may come: the back-off first reclaims the failed nodes' scratch files,
            # and when a script had written enough there, the write probe then succeeds once.
            assert paused["state"] == "paused"
            assert "No space left on device" in (paused["error"] or "")
            assert len(starts) <= 1
            ballast.unlink()

            async def ended() -> dict[str, Any] | None:
                task = await client.task(task_id)
                return task if task["state"] in TERMINAL else None

            final = await _wait(ended)
            nodes = await client.nodes(task_id)
    finally:
        await daemon.stop()
    assert final["state"] == "finished" and final["best"] is not None
    assert all(n["status"] in ("done", "buggy", "failed") for n in nodes)
    kept = {n["id"]: n["metric"] for n in nodes}
    assert all(kept[n["id"]] == n["metric"] for n in before)


async def test_a_node_running_at_two_crashes_in_a_row_is_not_run_a_third_time(
    tmp_path: Path, breast_cancer: Path,
) -> None:
    store = await Store.open(tmp_path / "m.db")
    try:
        await store.insert_task(TaskRecord(
            id="t1", name="bc", task_dir=str(breast_cancer), spec=load_task(breast_cancer),
            policy="mcts", steps=3, time_limit_s=60, node_timeout_s=30,
            state=TaskState.RUNNING, created_at=time.time()))
        for node_id in (1, 2):
            await store.insert_node(NodeRecord(
                task_id="t1", id=node_id, parent_id=None, operator=Operator.DRAFT,
                state=NodeState.RUNNING, created_at=time.time(), code="print(1)", pid=4242))
        # First crash: both were running; both are run again.
        assert await store.interrupt_unfinished("interrupted", time.time()) == (2, 0)
        await store.update_node("t1", 1, state=NodeState.RUNNING, pid=4343)
        # Second crash: node 1 was running again, node 2 was only waiting for a slot.
        assert await store.interrupt_unfinished("interrupted", time.time()) == (1, 1)
        first, second = await store.get_node("t1", 1), await store.get_node("t1", 2)
        # A task relaunched after a storage fault is no crash.
        await store.update_node("t1", 2, state=NodeState.RUNNING, pid=4444)
        await store.interrupt_unfinished("paused", time.time(), task_id="t1", crashed=False)
        third = await store.get_node("t1", 2)
    finally:
        await store.close()
    assert first.state is NodeState.FAILED and first.error == CRASHED_TOO_OFTEN
    assert second.state is NodeState.READY
    assert third.state is NodeState.READY


async def test_the_crash_count_that_fails_a_node_is_configurable(
    tmp_path: Path, breast_cancer: Path,
) -> None:
    assert daemon_config(tmp_path / "s", tmp_path / "a.sock").execution.max_node_crashes == 2
    store = await Store.open(tmp_path / "m.db")
    try:
        await store.insert_task(TaskRecord(
            id="t1", name="bc", task_dir=str(breast_cancer), spec=load_task(breast_cancer),
            policy="mcts", steps=3, time_limit_s=60, node_timeout_s=30,
            state=TaskState.RUNNING, created_at=time.time()))
        await store.insert_node(NodeRecord(
            task_id="t1", id=1, parent_id=None, operator=Operator.DRAFT,
            state=NodeState.RUNNING, created_at=time.time(), code="print(1)", pid=4242))
        states = []
        for _ in range(3):
            await store.interrupt_unfinished("interrupted", time.time(), max_crashes=3)
            states.append((await store.get_node("t1", 1)).state)
            await store.update_node("t1", 1, state=NodeState.RUNNING, pid=4343)
    finally:
        await store.close()
    assert states == [NodeState.READY, NodeState.READY, NodeState.FAILED]
