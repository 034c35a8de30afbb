"""The queue of tasks: starts queued tasks up to `max_running_tasks`, watches every task's
search, fails a task whose search raised unexpectedly (once, with the reason), waits out a
back-off before resuming a task that a storage fault stopped, and cancels and stops them."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import structlog

from mlmaster_daemon.artefacts import clear_if_present, node_dir
from mlmaster_daemon.bus import TaskStateChanged
from mlmaster_daemon.errors import DaemonStopping, TaskNotCancellable
from mlmaster_daemon.execution.workspace import Workspace
from mlmaster_daemon.faults import (
    StorageFault,
    backoff_s,
    describe,
    is_storage_fault,
    probe_storage,
)
from mlmaster_daemon.logs import get_logger
from mlmaster_daemon.metrics import DaemonMetrics
from mlmaster_daemon.models import TaskState
from mlmaster_daemon.scheduler.parts import SearchParts
from mlmaster_daemon.scheduler.search_loop import TaskSearch
from mlmaster_daemon.store.records import TaskRecord

log = get_logger("mlmaster.scheduler")
HEARTBEAT_EVERY_S = 1.0


class TaskQueue:
    def __init__(self, parts: SearchParts, metrics: DaemonMetrics | None = None) -> None:
        self.parts = parts
        self.metrics = metrics
        self.searches: dict[str, tuple[TaskSearch, asyncio.Task[None]]] = {}
        # Tasks a storage fault stopped, waiting out a back-off before they resume:
        # task id -> (failed launches in a row, the error).
        self.backing_off: dict[str, tuple[int, str]] = {}
        self._stopping = False
        # Relaunches, refills and failure records in flight (the loop holds tasks weakly).
        self._side_tasks: set[asyncio.Task[None]] = set()
        self._ticker: asyncio.Task[None] | None = None

    async def start(self, heartbeat: Callable[[], None] | None = None) -> None:
        """Resume every task that was queued or running when the daemon last stopped; tick
        `heartbeat` while the event loop runs (the systemd watchdog)."""
        if heartbeat is not None:
            self._ticker = asyncio.create_task(self._tick(heartbeat))
        await self.fill()

    async def _tick(self, heartbeat: Callable[[], None]) -> None:
        # Real time, not the injected clock: the watchdog measures the real loop. Ticks
        # through a graceful stop too, until stop() cancels it at the very end.
        while True:
            heartbeat()
            await asyncio.sleep(HEARTBEAT_EVERY_S)

    async def fill(self) -> None:
        """Launch waiting tasks while there is room: those running before a restart first,
        then the queue in submit order."""
        if self._stopping:
            return
        waiting = await self.parts.store.list_tasks(
            [TaskState.RUNNING, TaskState.PAUSED, TaskState.QUEUED])
        waiting.sort(key=lambda t: (t.state is TaskState.QUEUED, t.created_at))
        for task in waiting:
            if len(self.searches) >= self.parts.settings.config.daemon.max_running_tasks:
                break
            if task.id not in self.searches and task.id not in self.backing_off:
                self._launch(task)

    @property
    def stopping(self) -> bool:
        """Whether `stop` has begun: no task is launched or submitted from then on."""
        return self._stopping

    async def settle(self) -> None:
        """Wait until the refills, relaunches and failure records under way have run (a
        relaunch waiting out its back-off included)."""
        while self._side_tasks:
            await asyncio.gather(*list(self._side_tasks), return_exceptions=True)

    def _fill_soon(self) -> None:
        if not self._stopping:
            self._side_task(self.fill())

    def _launch(self, task: TaskRecord) -> None:
        if self.metrics is not None and task.state is TaskState.QUEUED:
            self.metrics.task_waited(self.parts.clock.time() - task.created_at)
        search = TaskSearch(task, self.parts)
        with structlog.contextvars.bound_contextvars(task_id=task.id):
            handle = asyncio.create_task(search.run(), name=f"task-{task.id}")
        self.searches[task.id] = (search, handle)
        handle.add_done_callback(lambda h: self._on_done(task.id, h))

    def _on_done(self, task_id: str, handle: asyncio.Task[None]) -> None:
        self.searches.pop(task_id, None)
        error = None if handle.cancelled() else handle.exception()
        if self._stopping:
            return
        if error is None:
            self.backing_off.pop(task_id, None)
            self._fill_soon()
        elif is_storage_fault(error):
            # Never relaunched at once: the cause (a full disk) is most likely still there.
            reason = error.message if isinstance(error, StorageFault) else describe(error)
            self._back_off(task_id, reason)
        else:
            # A bug, not the machine: running it again would fail again, so the task fails.
            self._side_task(self._fail(task_id, f"internal error: {error}"))

    def _back_off(self, task_id: str, reason: str) -> None:
        attempt = self.backing_off.get(task_id, (0, ""))[0] + 1
        self.backing_off[task_id] = (attempt, reason)
        self._side_task(self._relaunch_later(task_id, attempt, reason))

    async def _fail(self, task_id: str, reason: str) -> None:
        log.error("task search raised; the task fails", task_id=task_id, error=reason)
        try:
            if (await self.parts.store.get_task(task_id)).state.terminal:
                return  # it ended meanwhile (a cancel): that stands
            await self.parts.store.update_task(task_id, state=TaskState.FAILED, error=reason,
                                               finished_at=self.parts.clock.time())
        except Exception as exc:
            if not is_storage_fault(exc):
                raise
            self._back_off(task_id, describe(exc))
            return
        self.backing_off.pop(task_id, None)
        self.parts.bus.publish(TaskStateChanged(task_id=task_id, state=TaskState.FAILED.value,
                                                error=reason))
        await self.fill()

    def _side_task(self, coro: Coroutine[Any, Any, None]) -> None:
        name = getattr(coro, "__qualname__", "side task")
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._side_tasks.add(task)
        task.add_done_callback(self._side_task_done)

    def _side_task_done(self, task: asyncio.Task[None]) -> None:
        self._side_tasks.discard(task)
        if not task.cancelled() and (error := task.exception()) is not None:
            log.error("the task queue's own work failed", work=task.get_name(),
                      error=f"{type(error).__name__}: {error}")

    async def _reclaim(self, task_id: str) -> None:
        """Empty the workspaces of the task's unfinished nodes: their runs start afresh when it
        resumes, and what a stopped job wrote (perhaps what filled the disk) goes now."""
        for node in await self.parts.store.list_nodes(task_id):
            if node.state.terminal:
                continue
            ws = Workspace(node_dir(self.parts.state_dir, task_id, node.id))
            try:
                await asyncio.to_thread(clear_if_present, ws)
            except OSError as exc:
                log.warning("could not empty a stopped node's workspace", task_id=task_id,
                            node_id=node.id, error=str(exc))

    async def _storage_problem(self, task_id: str) -> str | None:
        """Why the task cannot resume yet (its nodes cannot be read and reclaimed, or the
        state dir cannot be written), or None when it can."""
        try:
            await self._reclaim(task_id)
        except Exception as exc:
            if not is_storage_fault(exc):
                raise
            return describe(exc)
        problem = await asyncio.to_thread(probe_storage, self.parts.state_dir)
        return None if problem is None else f"cannot write the daemon's state: {problem}"

    async def _relaunch_later(self, task_id: str, attempt: int, reason: str) -> None:
        """After a back-off, and once a write to the state dir works, launch the task again;
        it resumes from its last commit."""
        while True:
            daemon = self.parts.settings.config.daemon
            delay = backoff_s(attempt, daemon.fault_retry_s, daemon.fault_retry_max_s)
            log.error("task stopped on an error; trying again after a pause", task_id=task_id,
                      error=reason, attempt=attempt, retry_in_s=delay)
            await self.parts.clock.sleep(delay)
            problem = await self._storage_problem(task_id)
            if problem is None:
                break
            attempt += 1
            reason = problem
            self.backing_off[task_id] = (attempt, reason)
        del self.backing_off[task_id]
        log.info("resuming the task", task_id=task_id, attempt=attempt)
        await self.fill()

    async def submit(self, task: TaskRecord) -> None:
        if self._stopping:
            raise DaemonStopping("the daemon is stopping and takes no new tasks; submit again "
                                 "once it is back (systemd restarts it)")
        await self.parts.store.insert_task(task)
        self.parts.bus.publish(TaskStateChanged(task_id=task.id, state=task.state.value))
        log.info("task submitted", task_id=task.id, task_dir=task.task_dir)
        await self.fill()

    async def cancel(self, task_id: str) -> TaskRecord:
        store = self.parts.store
        task = await store.get_task(task_id)
        if task.state.terminal:
            raise TaskNotCancellable(f"task {task_id} is already {task.state.value}")
        await self._stop_search(task_id)
        if not (await store.get_task(task_id)).state.terminal:
            # Queued, or cancelled before its search even began: nothing else records it.
            await store.update_task(task_id, state=TaskState.CANCELLED,
                                    finished_at=self.parts.clock.time())
            self.parts.bus.publish(TaskStateChanged(task_id=task_id,
                                                    state=TaskState.CANCELLED.value))
            # A fill that read the task as queued may have launched it meanwhile.
            await self._stop_search(task_id)
        return await store.get_task(task_id)

    async def _stop_search(self, task_id: str) -> None:
        """Cancel the task's search, if one runs, and wait until it has ended."""
        entry = self.searches.get(task_id)
        if entry is not None:
            search, handle = entry
            search.cancel()
            handle.cancel()
            await asyncio.gather(handle, return_exceptions=True)

    def reconfigure(self) -> None:
        """After a config reload: each task's run cap follows `search.parallel`, and
        `daemon.max_running_tasks` may start queued tasks."""
        parallel = self.parts.settings.config.search.parallel
        for search, _handle in self.searches.values():
            search.resize(parallel)
        self._fill_soon()

    async def stop(self, grace_s: float = 0.0) -> None:
        """Stop every search; their tasks stay `running` in the store and resume on restart.
        Running nodes get up to `grace_s` to finish (nothing new starts meanwhile); then the
        rest is stopped, and nodes with code run again after the restart."""
        self._stopping = True
        searches = list(self.searches.values())
        for search, _handle in searches:
            search.drain()
        handles = [h for _s, h in searches]
        if handles and grace_s > 0:
            log.info("stopping: running nodes may finish", grace_s=grace_s)
            _done, pending = await asyncio.wait(handles, timeout=grace_s)
            if pending:
                log.info("grace period over; stopping the nodes still running",
                         tasks=len(pending))
        for handle in handles:
            handle.cancel()
        await asyncio.gather(*handles, return_exceptions=True)
        # Relaunches waiting out a back-off end here; the next start resumes those tasks.
        side = list(self._side_tasks)
        for task in side:
            task.cancel()
        await asyncio.gather(*side, return_exceptions=True)
        if self._ticker is not None:
            self._ticker.cancel()
