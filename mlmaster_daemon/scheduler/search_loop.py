"""One task's search: the loop only dispatches. It picks with the policy, hands each pick to an
expansion, and ends the task when its steps or time run out, nothing is left to expand, or it
is cancelled; a daemon stop drains it (the task resumes on the next start)."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import replace

from mlmaster_daemon.artefacts import copy_top, task_root
from mlmaster_daemon.bus import TaskStateChanged
from mlmaster_daemon.errors import InvalidTaskDir
from mlmaster_daemon.faults import StorageFault, describe, is_storage_fault
from mlmaster_daemon.logs import get_logger
from mlmaster_daemon.models import NodeState, TaskState
from mlmaster_daemon.scheduler.expansion import expand
from mlmaster_daemon.scheduler.final_selection import choose_final
from mlmaster_daemon.scheduler.holdout_stage import prepare
from mlmaster_daemon.scheduler.parts import SearchParts
from mlmaster_daemon.scheduler.pipeline import Pipeline
from mlmaster_daemon.scheduler.resume import collector_paused, ranked, repair_best, restore
from mlmaster_daemon.scheduler.search_state import MAX_FAILED_IN_A_ROW, SearchState
from mlmaster_daemon.search.policy import Pick
from mlmaster_daemon.store.records import NodeRecord, TaskRecord
from mlmaster_daemon.tasks.profile import data_preview, task_profile

log = get_logger("mlmaster.scheduler")


class ExpansionsFailing(Exception):
    """Every recent expansion failed with an error (not a buggy script): the task fails."""
# How often the active time is saved while the task runs, so a crash loses little of it.
SAVE_ACTIVE_EVERY_S = 10.0


class TaskSearch:
    """Searches one task until it ends. `cancel()` ends it as cancelled; `drain()` stops new
    work for a daemon stop."""

    def __init__(self, task: TaskRecord, parts: SearchParts) -> None:
        self.parts = parts
        self.state = SearchState(task, parts)
        self.pipeline = Pipeline()

    def cancel(self) -> None:
        """Mark the search cancelled; the caller then cancels its asyncio task."""
        self.state.cancel_requested = True

    def drain(self) -> None:
        self.state.draining = True

    def resize(self, parallel: int) -> None:
        self.state.run_slots.total_tokens = parallel

    async def run(self) -> None:
        """Search until the task ends. An unexpected error fails the task, saying why, once;
        a storage fault pauses it and raises `StorageFault` for the queue to retry later."""
        state = self.state
        try:
            await self._run()
        except asyncio.CancelledError:
            if not state.cancel_requested:
                with contextlib.suppress(Exception):
                    await asyncio.shield(self._save_active())
                raise
            await self._end(TaskState.CANCELLED)
        except Exception as exc:
            if is_storage_fault(exc):
                await self._pause_on_fault(exc)
                raise StorageFault(describe(exc)) from exc
            log.exception("task failed", task_id=state.task.id)
            await self._end(TaskState.FAILED, f"internal error: {exc}")

    async def _run(self) -> None:
        state, store = self.state, self.parts.store
        # Listings leave the description out; the prompts need it.
        task = state.task = await store.get_task(state.task.id)
        if task.state.terminal:
            # A queue fill that read the task before a cancel committed launched this search.
            log.info("task already ended; nothing to run", task_id=task.id,
                     state=task.state.value)
            return
        now = state.now()
        # After a fault paused this task, its nodes may still show the states they had then.
        await store.interrupt_unfinished(
            "interrupted: the task paused while this node was being generated", now,
            task_id=task.id, crashed=False)
        await state.publish.task_state(TaskState.RUNNING, None,
                                       started_at=task.started_at or now)
        log.info("task started", task_id=task.id, name=task.name, steps=task.steps)
        try:
            nodes, resume = await self._prepare()
        except Exception as exc:
            if is_storage_fault(exc):
                raise
            log.exception("task could not start", task_id=task.id)
            await self._end(TaskState.FAILED,
                            f"could not start or resume: {type(exc).__name__}: {exc}")
            return
        keeper = asyncio.create_task(self._keep_active_time())
        try:
            await self._dispatch(nodes, resume)
        finally:
            keeper.cancel()
            await asyncio.gather(keeper, return_exceptions=True)
        if state.draining:
            # The daemon is stopping: the task stays running and resumes on the next start.
            await self._save_active()
            log.info("task drained for the stop", task_id=task.id)
            return
        await self._finish()

    async def _prepare(self) -> tuple[list[NodeRecord], list[tuple[NodeRecord, Pick]]]:
        """Everything before the loop: the holdout, the saved tree, best/, data preview,
        lessons."""
        state = self.state
        await self._prepare_holdout()
        # Without their code (most of a big tree's bytes): restore and repair_best read the
        # few nodes whose code they need.
        with collector_paused():
            nodes = await self.parts.store.list_nodes(state.task.id, code=False)
            resume = await restore(state, nodes)
            await repair_best(state, nodes)
        state.preview = await asyncio.to_thread(data_preview, state.task.spec)
        state.profile = await asyncio.to_thread(task_profile, state.task.spec)
        if not nodes:
            await state.memory.prefetch_lessons(self.parts.store, state.profile, state.task.id)
        return nodes, resume

    async def _prepare_holdout(self) -> None:
        """Plan and build the task's holdout (kept from its first start), say in the task
        whether it has one and why not; from here on its nodes work on the holdout's view."""
        state, config = self.state, self.parts.settings.config
        task = state.task
        if not await asyncio.to_thread(task.spec.public_dir.is_dir):
            # The holdout's view would still let it run, on data its user has taken away.
            raise InvalidTaskDir(f"the task's data folder {task.spec.public_dir} is gone; "
                                 "submit the task again with its folder in place")
        previous = task.holdout or {}
        if previous.get("state") == "off":
            return  # decided at its first start: a task never gains a holdout midway
        if not previous and (await self.parts.store.node_counts(task.id))[0]:
            await self.parts.store.update_task(task.id, holdout={
                "state": "off", "reason": "the task started before this daemon kept holdouts"})
            return
        active, note = await asyncio.to_thread(
            prepare, task.spec, task_root(self.parts.state_dir, task.id), task.id,
            config.holdout, config.search.seed, bool(previous))
        if config.execution.sandbox == "none" and active is not None:
            note["warning"] = ("the sandbox is off: node scripts can read the holdout's "
                               "answers in the daemon's state folder")
        await self.parts.store.update_task(task.id, holdout=note)
        log.info("holdout prepared", task_id=task.id, holdout=note)
        if active is not None:
            state.holdout = active
            state.task = replace(task, spec=active.view)

    async def _dispatch(self, nodes: list[NodeRecord],
                        resume: list[tuple[NodeRecord, Pick]]) -> None:
        state, settings = self.state, self.parts.settings
        next_id = max((n.id for n in nodes), default=0) + 1
        # Nodes a daemon stop interrupted before they had code are not steps.
        created = sum(1 for n in nodes if not n.interrupted)
        pipeline = self.pipeline
        # Nodes whose code was paid for before a restart run now, without asking again.
        expansions: set[asyncio.Task[None]] = set()
        for node, resumed in resume:
            pipeline.started(node.id)
            expansions.add(asyncio.create_task(expand(state, node.id, resumed, existing=node,
                                                      pipeline=pipeline)))
        try:
            while True:
                # Pipelining (pipeline.py): generation runs ahead of the running nodes by a
                # depth adapted to the task's L / E; a node being judged no longer counts.
                while (not state.draining
                       and pipeline.room(settings.config, len(expansions), state.run_seconds,
                                         state.budget.left_s(state.now()))
                       and created < state.task.steps and state.node_fits()
                       and not await self._over_budget()):
                    pick = state.policy.select()
                    if pick is None:
                        break
                    # Reserve the child now, so the next select() sees the slot as taken.
                    state.policy.add(next_id, pick)
                    state.open_picks[next_id] = pick
                    pipeline.started(next_id)
                    expansions.add(asyncio.create_task(expand(state, next_id, pick,
                                                              pipeline=pipeline)))
                    next_id += 1
                    created += 1
                if not expansions:
                    return
                done = await pipeline.wait(expansions)
                expansions -= done
                # Every one is read (a full disk fails several at once); the first is raised.
                errors = [e for f in done if not f.cancelled()
                          if (e := f.exception()) is not None]
                if errors:
                    raise errors[0]
                if state.failed_in_a_row >= MAX_FAILED_IN_A_ROW:
                    raise ExpansionsFailing(
                        f"{state.failed_in_a_row} expansions in a row failed before their "
                        f"nodes had an outcome; the last: {state.last_failure[:300]}")
        except BaseException:
            for pending in expansions:
                pending.cancel()
            await asyncio.gather(*expansions, return_exceptions=True)
            raise

    async def _over_budget(self) -> bool:
        """Whether the task's token or money cap is reached: no new generation then, and the
        running nodes finish."""
        budget = self.state.budget
        if not budget.limits_usage:
            return False
        if budget.exhausted is not None:
            return True
        usage = await self.parts.store.usage(self.state.task.id)
        note = budget.check_usage(usage["total_tokens"], usage["cost"])
        if note is not None:
            log.info("budget reached; no new generation", task_id=self.state.task.id, note=note)
        return note is not None

    async def _finish(self) -> None:
        """The end of a task whose search ran out: settle, keep the top k, keep lessons."""
        state = self.state
        error = None if state.best_metric is not None else "no working solution was found"
        if state.budget.exhausted and error is None:
            error = state.budget.exhausted
        await self._settle_unfinished()
        await choose_final(state)
        await self._keep_top_k()
        if state.profile is not None:
            await state.memory.promote_lessons(self.parts.store, state.profile, state.task.id,
                                               state.now())
        await self._end(TaskState.FINISHED, error)

    async def _settle_unfinished(self) -> None:
        """A task never ends with nodes that still look alive: any the search lost track of
        (their outcome could not be written) are failed, saying so."""
        task_id = self.state.task.id
        for node in await self.parts.store.list_nodes(task_id):
            if not node.state.terminal:
                log.error("node left unfinished at the end of its task", task_id=task_id,
                          node_id=node.id, state=node.state.value)
                await self.parts.store.update_node(
                    task_id, node.id, state=NodeState.FAILED,
                    error=f"lost while {node.state.value}: its outcome was never recorded",
                    finished_at=self.state.now())

    async def _keep_top_k(self) -> None:
        """With keep_top_k > 1 the k best working nodes (by the final-selection rule) keep
        their submissions in top/<rank>-node<id>/, best first."""
        k = self.parts.settings.config.search.keep_top_k
        if k <= 1:
            return
        task = self.state.task
        nodes = ranked(self.state, await self.parts.store.list_nodes(task.id))
        root = task_root(self.parts.state_dir, task.id)
        await asyncio.to_thread(copy_top, root, [(n.id, n.code or "") for n in nodes[:k]])

    async def _end(self, ending: TaskState, error: str | None = None) -> None:
        state = self.state
        now = state.now()
        await state.publish.task_state(ending, error, finished_at=now,
                                       active_s=round(state.budget.active_s(now), 3))
        log.info("task ended", task_id=state.task.id, state=ending.value, error=error,
                 best_metric=state.best_metric)

    async def _pause_on_fault(self, exc: BaseException) -> None:
        """Say in the task's state why it stopped, when the store can still take that."""
        reason = describe(exc)
        log.error("task paused: the daemon cannot write its state", task_id=self.state.task.id,
                  error=reason)
        with contextlib.suppress(Exception):
            await self.parts.store.update_task(self.state.task.id, state=TaskState.PAUSED,
                                               error=reason)
        self.parts.bus.publish(TaskStateChanged(task_id=self.state.task.id,
                                                state=TaskState.PAUSED.value, error=reason))

    async def _save_active(self) -> None:
        now = self.state.now()
        await self.parts.store.update_task(self.state.task.id,
                                           active_s=round(self.state.budget.active_s(now), 3))

    async def _keep_active_time(self) -> None:
        """Until cancelled: save the active time now and then, so a crash loses little."""
        while True:
            await self.parts.clock.sleep(SAVE_ACTIVE_EVERY_S)
            try:
                await self._save_active()
            except Exception as exc:
                if not is_storage_fault(exc):
                    raise
                # The next node's own write meets the same fault and pauses the task.
                log.warning("could not save the active time", task_id=self.state.task.id,
                            error=str(exc))
