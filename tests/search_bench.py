"""One task's search without a daemon or a socket, for tests: a real SQLite store in a temp
dir, the offline coder (or another), the local executor (real subprocesses), a manual clock."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlmaster_daemon.bus import EventBus
from mlmaster_daemon.clock import ManualClock
from mlmaster_daemon.coders.offline.coder import OfflineCoder
from mlmaster_daemon.config import Settings, load_config
from mlmaster_daemon.execution.executor import LocalExecutor
from mlmaster_daemon.execution.slots import SlotPool
from mlmaster_daemon.models import TaskState, new_task_id
from mlmaster_daemon.scheduler import SearchParts
from mlmaster_daemon.store import Store, TaskRecord
from mlmaster_daemon.tasks.competition import load_task
from mlmaster_daemon.tokenizer import TiktokenCounter


@dataclass
class Bench:
    parts: SearchParts
    store: Store
    clock: ManualClock
    state_dir: Path

    def set(self, key: str, value: object) -> None:
        """Change one config value (`section.key`), as a reload would."""
        section, name = key.split(".")
        config = self.parts.settings.config
        part = getattr(config, section).model_copy(update={name: value})
        self.parts.settings.swap(config.model_copy(update={section: part}))


async def open_bench(tmp_path: Path, **overrides: Any) -> AsyncIterator[Bench]:
    config = load_config(None, environ={}, overrides={
        "daemon.state_dir": str(tmp_path / "state"), "search.parallel": 2,
        "execution.max_concurrent_nodes": 2, "execution.kill_grace_s": 1.0,
        "daemon.fault_retry_s": 5.0, **overrides})
    settings, state_dir = Settings(config), config.state_dir()
    store = await Store.open(state_dir / "mlmaster.db")
    clock = ManualClock()
    executor = LocalExecutor(settings, SlotPool([], 2, 1), state_dir)
    parts = SearchParts(store, EventBus(), OfflineCoder(), executor, settings, state_dir,
                        TiktokenCounter(), clock=clock)
    yield Bench(parts, store, clock, state_dir)
    await store.close()


async def new_task(bench: Bench, task_dir: Path, steps: int, **fields: Any) -> TaskRecord:
    task = TaskRecord(id=str(fields.pop("id", None) or new_task_id()), name="t",
                      task_dir=str(task_dir),
                      spec=load_task(task_dir), policy="mcts", steps=steps,
                      time_limit_s=float(fields.pop("time_limit_s", 3600.0)),
                      node_timeout_s=120.0, state=TaskState.QUEUED,
                      created_at=bench.clock.time(), **fields)
    await bench.store.insert_task(task)
    return task
