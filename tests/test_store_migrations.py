"""Migrations build the schema from an empty file and are idempotent on restart."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from mlmaster_daemon.models import NodeState, Operator, TaskState
from mlmaster_daemon.store import NodeRecord, Store, TaskRecord
from mlmaster_daemon.store.migrations import available
from mlmaster_daemon.tasks.competition import load_task


def _tables(path: Path) -> set[str]:
    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    return {r[0] for r in rows}


def _user_version(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        return int(conn.execute("PRAGMA user_version").fetchone()[0])


async def test_migrations_create_the_schema_from_an_empty_file(tmp_path: Path) -> None:
    db = tmp_path / "m.db"
    store = await Store.open(db)
    await store.close()
    assert {"tasks", "nodes"} <= _tables(db)
    assert _user_version(db) == len(available()) >= 1


async def test_reopening_applies_nothing_and_keeps_data(
    tmp_path: Path, breast_cancer: Path
) -> None:
    db = tmp_path / "m.db"
    store = await Store.open(db)
    task = TaskRecord(
        id="t1", name="bc", task_dir=str(breast_cancer), spec=load_task(breast_cancer),
        policy="mcts", steps=3, time_limit_s=60, node_timeout_s=30, state=TaskState.QUEUED,
        created_at=time.time(),
    )
    await store.insert_task(task)
    await store.close()
    version = _user_version(db)

    store = await Store.open(db)
    try:
        assert _user_version(db) == version
        again = await store.get_task("t1")
        assert again.spec == task.spec
        assert again.state is TaskState.QUEUED
    finally:
        await store.close()


async def test_database_runs_in_wal_mode(tmp_path: Path) -> None:
    db = tmp_path / "m.db"
    store = await Store.open(db)
    await store.close()
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


async def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "m.db"
    with sqlite3.connect(db) as conn:
        conn.execute(f"PRAGMA user_version = {len(available()) + 5}")
    try:
        await Store.open(db)
    except RuntimeError as exc:
        assert "newer" in str(exc)
    else:
        raise AssertionError("a database from a newer daemon must be refused")


async def test_after_a_restart_paid_code_is_requeued_and_the_rest_fails(
    tmp_path: Path, breast_cancer: Path
) -> None:
    store = await Store.open(tmp_path / "m.db")
    try:
        spec = load_task(breast_cancer)
        await store.insert_task(TaskRecord(
            id="t1", name="bc", task_dir=str(breast_cancer), spec=spec, policy="mcts", steps=3,
            time_limit_s=60, node_timeout_s=30, state=TaskState.RUNNING, created_at=1.0))
        for node_id, state in ((1, NodeState.DONE), (2, NodeState.RUNNING), (3, NodeState.READY)):
            await store.insert_node(NodeRecord(task_id="t1", id=node_id, parent_id=None,
                                               operator=Operator.DRAFT, state=state,
                                               created_at=1.0))
        await store.update_node("t1", 3, code="print(1)")
        assert await store.interrupt_unfinished("restart", 2.0) == (1, 1)
        states = {n.id: n.state for n in await store.list_nodes("t1")}
        # Node 3 had its code: it is run again, not regenerated. Node 2 had none: it fails.
        assert states == {1: NodeState.DONE, 2: NodeState.FAILED, 3: NodeState.READY}
    finally:
        await store.close()


async def test_a_writer_cancelled_mid_transaction_leaves_the_store_usable(
    tmp_path: Path, breast_cancer: Path
) -> None:
    import asyncio

    store = await Store.open(tmp_path / "db.sqlite")
    try:
        await store.insert_task(TaskRecord(
            id="t1", name="bc", task_dir=str(breast_cancer), spec=load_task(breast_cancer),
            policy="mcts", steps=3, time_limit_s=60, node_timeout_s=30,
            state=TaskState.RUNNING, created_at=1.0))
        for delay in (0, 0.0001, 0.001, 0.01):
            for _ in range(20):
                writer = asyncio.create_task(store.add_lessons("t1", [("x", "{}", 1.0)], 0.0))
                await asyncio.sleep(delay)
                writer.cancel()
                await asyncio.gather(writer, return_exceptions=True)
                # The next transaction must not find the connection inside the last one.
                await store.add_lessons("t1", [("y", "{}", 1.0)], 0.0)
        assert any(text == "y" for text, _profile, _score in await store.list_lessons())
    finally:
        await store.close()
