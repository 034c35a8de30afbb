"""Reads of the store: a read whose caller is cancelled leaves nothing behind that would hide
later commits from the next reads."""

from __future__ import annotations

import asyncio
from pathlib import Path

from mlmaster_daemon.models import TaskState, new_task_id
from mlmaster_daemon.store import Store, TaskRecord
from mlmaster_daemon.tasks.competition import load_task


async def test_a_cancelled_read_does_not_pin_the_reader_to_an_old_snapshot(
    tmp_path: Path, breast_cancer: Path,
) -> None:
    store = await Store.open(tmp_path / "mlmaster.db")
    try:
        task = TaskRecord(id=new_task_id(), name="t", task_dir=str(breast_cancer),
                          spec=load_task(breast_cancer), policy="mcts", steps=1,
                          time_limit_s=60.0, node_timeout_s=60.0, state=TaskState.QUEUED,
                          created_at=1.0)
        await store.insert_task(task)
        for _ in range(5):
            reading = asyncio.create_task(store.get_task(task.id))
            await asyncio.sleep(0)
            reading.cancel()
            await asyncio.gather(reading, return_exceptions=True)
        await store.update_task(task.id, state=TaskState.RUNNING)
        assert (await store.get_task(task.id)).state is TaskState.RUNNING
        assert [t.id for t in await store.list_tasks([TaskState.RUNNING])] == [task.id]
    finally:
        await store.close()
