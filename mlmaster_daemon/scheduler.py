"""The per-task loop that ties search, coder and execution together, and the task queue.

One `TaskRunner` per running task keeps up to `parallel` expansions in flight. Each expansion
walks its node through pending -> generating -> ready -> running -> evaluating -> done | buggy
(or failed), committing every transition before publishing it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import psutil
import structlog

from mlmaster_daemon.artefacts import (
    best_dir,
    best_node_id,
    clear_if_present,
    copy_best,
    copy_top,
    has_submission,
    node_dir,
    task_root,
    write_committed,
)
from mlmaster_daemon.bus import BestImproved, EventBus, NodeStateChanged, TaskStateChanged
from mlmaster_daemon.config import Config
from mlmaster_daemon.errors import DaemonStopping, TaskNotCancellable
from mlmaster_daemon.evaluation import Evaluation, evaluate
from mlmaster_daemon.execution.lease import Lease, ProcessIdentity
from mlmaster_daemon.execution.limits import Machine, job_limits
from mlmaster_daemon.execution.runner import RunResult, run_script
from mlmaster_daemon.execution.slots import GpuSampler, SlotPool
from mlmaster_daemon.execution.workspace import Workspace
from mlmaster_daemon.faults import (
    StorageFault,
    backoff_s,
    describe,
    is_storage_fault,
    probe_storage,
)
from mlmaster_daemon.llm.coder import (
    Coder,
    CodeRequest,
    CodeResponse,
    EndpointUnavailable,
    MemoryItem,
    NoCodeInAnswer,
    as_llm_coder,
)
from mlmaster_daemon.logs import get_logger
from mlmaster_daemon.models import NodeState, TaskState
from mlmaster_daemon.policies import make_policy, restore_policy
from mlmaster_daemon.search.hcc import (
    HierarchicalCache,
    L2Summary,
    Lesson,
    StagnationDetector,
    TaskProfile,
)
from mlmaster_daemon.search.memory import MemoryEntry
from mlmaster_daemon.search.policy import Pick, Policy
from mlmaster_daemon.search.tokens import TiktokenCounter
from mlmaster_daemon.store import NodeRecord, Store, TaskRecord
from mlmaster_daemon.tasks import registry
from mlmaster_daemon.tasks.competition import count_rows, read_csv_header
from mlmaster_daemon.tasks.spec import TaskSpec

log = get_logger("mlmaster.scheduler")
# A run stopped for writing too much leaves only these behind (see execution/runner.py).
DISK_LIMIT_REASONS = ("workspace larger than", "file size limit exceeded")
KEPT_AFTER_DISK_LIMIT = frozenset({"memory.md", "solution.py", "stdout.log", "stderr.log",
                                   "input"})
Clock = Callable[[], float]


def new_task_id() -> str:
    return "t" + uuid.uuid4().hex[:11]


@dataclass
class Runtime:
    """What every task runner shares: the daemon's parts, the execution slots and the clock.
    `config` is swapped in place by a live reload (SIGHUP), so runners read it, never copy it."""

    store: Store
    bus: EventBus
    coder: Coder
    config: Config
    slots: SlotPool
    state_dir: Path
    clock: Clock = time.time
    sampler: GpuSampler | None = None
    # The API socket (jobs must never reach it), when the daemon serves one.
    socket_path: Path | None = None
    # How the scheduler waits out a back-off (tests pass one they drive).
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep


class TaskRunner:
    """Searches one task until its steps or time run out, nothing is left to expand, or cancel."""

    def __init__(self, task: TaskRecord, rt: Runtime):
        self.task = task
        self.rt = rt
        self.cancel_requested = False
        # Set when the daemon stops: no new expansion, no new run; running nodes finish.
        self.draining = False
        self.policy: Policy = make_policy(task.policy, rt.config.search,
                                          task.spec.lower_is_better, task.steps,
                                          rt.config.search.seed)
        # Picks whose node exists but has not finished, saved with the policy's state.
        self.inflight: dict[int, Pick] = {}
        self.memory: dict[int, MemoryItem] = {}
        mem = rt.config.memory
        self.cache = HierarchicalCache(
            detector=StagnationDetector(mem.stagnation_window, mem.stagnation_min_gain,
                                        mem.stagnation_relative),
            l1_cap=mem.l1_cap,
        )
        self.counter = TiktokenCounter(mem.encoding)
        # This task's own cap on parallel runs; generation may run ahead of it. A limiter
        # rather than a semaphore: a config reload can change its size while nodes run.
        self.run_slots = anyio.CapacityLimiter(rt.config.search.parallel)
        self.waiting = 0
        self.paused_at: float | None = None
        self.budget_note: str | None = None
        self.resume: list[tuple[NodeRecord, Pick]] = []
        self.profile: TaskProfile | None = None
        self.best_metric = task.best_metric
        self.preview = ""
        self.deadline = 0.0

    def active_s(self) -> float:
        """Active seconds the task has used, this run and earlier ones: downtime of the daemon
        and time paused for the model do not count."""
        now = self.paused_at if self.paused_at is not None else self.rt.clock()
        return max(self.task.time_limit_s - (self.deadline - now), 0.0)

    async def _save_active(self) -> None:
        await self.rt.store.update_task(self.task.id, active_s=round(self.active_s(), 3))

    async def _keep_active_time(self, every_s: float = 10.0) -> None:
        """Until cancelled: save the active time now and then, so a crash loses little of it."""
        while True:
            await asyncio.sleep(every_s)
            try:
                await self._save_active()
            except Exception as exc:
                if not is_storage_fault(exc):
                    raise
                # The next node's own write meets the same fault and pauses the task.
                log.warning("could not save the active time", task_id=self.task.id,
                            error=str(exc))

    async def run(self) -> None:
        """Search until the task ends; a cancel that lands while it is still starting up
        cancels it too."""
        try:
            await self._run()
        except asyncio.CancelledError:
            if not self.cancel_requested:
                raise
            await self._set_state(TaskState.CANCELLED)

    async def _run(self) -> None:
        # Listings leave the description out; the prompts need it.
        task = self.task = await self.rt.store.get_task(self.task.id)
        if task.state.terminal:
            # A queue pump that read the task before a cancel committed launched this runner.
            log.info("task already ended; nothing to run", task_id=task.id,
                     state=task.state.value)
            return
        started = task.started_at or self.rt.clock()
        # The time budget counts active time only: what earlier runs used is carried over.
        self.deadline = self.rt.clock() + task.time_limit_s - task.active_s
        # After a fault paused this task, its nodes may still show the states they had then.
        await self.rt.store.interrupt_unfinished(
            "interrupted: the task paused while this node was being generated",
            self.rt.clock(), task_id=task.id, crashed=False)
        await self.rt.store.update_task(task.id, state=TaskState.RUNNING, started_at=started,
                                        error=None)
        self.rt.bus.publish(TaskStateChanged(task_id=task.id, state=TaskState.RUNNING.value))
        log.info("task started", task_id=task.id, name=task.name, steps=task.steps)
        try:
            nodes = await self._prepare()
        except Exception as exc:
            if is_storage_fault(exc):
                raise StorageFault(describe(exc)) from exc
            # Failing the task, rather than raising, keeps the scheduler from relaunching it
            # forever.
            log.exception("task could not start", task_id=task.id)
            await self._set_state(TaskState.FAILED,
                                  f"could not start or resume: {type(exc).__name__}: {exc}")
            return
        next_id = max((n.id for n in nodes), default=0) + 1
        # Nodes a daemon stop interrupted before they had code are not steps.
        created = sum(1 for n in nodes if not n.interrupted)
        # Nodes whose code was paid for before a restart run now, without asking again.
        inflight: set[asyncio.Task[None]] = {
            asyncio.create_task(self._expand(node.id, pick, existing=node))
            for node, pick in self.resume
        }
        keeper = asyncio.create_task(self._keep_active_time())
        try:
            while True:
                # Pipelining: up to `prefetch` expansions beyond the running ones generate
                # code ahead, so it is ready when a run slot frees up.
                limit = self.rt.config.search.parallel + self.rt.config.llm.prefetch
                while (not self.draining and len(inflight) < limit and created < task.steps
                       and self.rt.clock() < self.deadline and not await self._over_budget()):
                    pick = self.policy.select()
                    if pick is None:
                        break
                    # Reserve the child now, so the next select() sees the slot as taken.
                    self.policy.add(next_id, pick)
                    self.inflight[next_id] = pick
                    inflight.add(asyncio.create_task(self._expand(next_id, pick)))
                    next_id += 1
                    created += 1
                if not inflight:
                    break
                done, inflight = await asyncio.wait(inflight, return_when=asyncio.FIRST_COMPLETED)
                for finished in done:
                    if not finished.cancelled() and finished.exception() is not None:
                        raise finished.exception()  # type: ignore[misc]
        except asyncio.CancelledError:
            for pending in inflight:
                pending.cancel()
            await asyncio.gather(*inflight, return_exceptions=True)
            if self.cancel_requested:
                await self._set_state(TaskState.CANCELLED)
                return
            await asyncio.shield(self._save_active())
            raise
        except Exception as exc:
            for pending in inflight:
                pending.cancel()
            await asyncio.gather(*inflight, return_exceptions=True)
            if is_storage_fault(exc):
                # Not the task's fault: it pauses and the scheduler resumes it from its last
                # commit once writes work again.
                await self._pause_on_fault(exc)
                raise StorageFault(describe(exc)) from exc
            log.exception("task failed", task_id=task.id)
            await self._set_state(TaskState.FAILED, f"internal error: {exc}")
            return
        finally:
            keeper.cancel()
        if self.draining:
            # The daemon is stopping: the task stays running and resumes on the next start.
            await self._save_active()
            log.info("task drained for the stop", task_id=task.id)
            return
        error = None if self.best_metric is not None else "no working solution was found"
        if self.budget_note and error is None:
            error = self.budget_note
        await self._settle_unfinished()
        await self._keep_top_k()
        await self._promote_lessons()
        await self._set_state(TaskState.FINISHED, error)

    async def _pause_on_fault(self, exc: BaseException) -> None:
        """Say in the task's state why it stopped, when the store can still take that."""
        reason = describe(exc)
        log.error("task paused: the daemon cannot write its state", task_id=self.task.id,
                  error=reason)
        with contextlib.suppress(Exception):
            await self.rt.store.update_task(self.task.id, state=TaskState.PAUSED, error=reason)
        self.rt.bus.publish(TaskStateChanged(task_id=self.task.id,
                                             state=TaskState.PAUSED.value, error=reason))

    async def _settle_unfinished(self) -> None:
        """A task never ends with nodes that still look alive: any the search lost track of
        (their outcome could not be written) are failed, saying so."""
        for node in await self.rt.store.list_nodes(self.task.id):
            if not node.state.terminal:
                log.error("node left unfinished at the end of its task", task_id=self.task.id,
                          node_id=node.id, state=node.state.value)
                await self.rt.store.update_node(
                    self.task.id, node.id, state=NodeState.FAILED,
                    error=f"lost while {node.state.value}: its outcome was never recorded",
                    finished_at=self.rt.clock())

    async def _prepare(self) -> list[NodeRecord]:
        """Everything before the search loop: the saved tree, best/, data preview, lessons."""
        nodes = await self.rt.store.list_nodes(self.task.id)
        await self._restore(nodes)
        await self._repair_best(nodes)
        self.preview = await asyncio.to_thread(_data_preview, self.task.spec)
        self.profile = await asyncio.to_thread(task_profile, self.task.spec)
        if not nodes:
            await self._prefetch_lessons()
        return nodes

    async def _restore(self, nodes: list[NodeRecord]) -> None:
        """Continue from the policy state saved with the last outcome; expansions that were in
        flight then are undone (their nodes were marked interrupted at start-up)."""
        saved = await self.rt.store.search_state(self.task.id)
        if saved is not None:
            self.policy = restore_policy(self.task.policy, self.rt.config.search,
                                         saved["policy"])
            by_id = {n.id: n for n in nodes}
            for key, raw in saved["inflight"].items():
                pick, node = Pick.from_state(raw), by_id.get(int(key))
                if node is not None and node.state is NodeState.READY and node.code:
                    self.inflight[node.id] = pick
                    self.resume.append((node, pick))
                else:
                    self.policy.abort(int(key), pick)
            self.cache = HierarchicalCache.from_state(saved["memory"])
        known = {node.id for node, _pick in self.resume}
        for node in nodes:
            if node.state is NodeState.READY and node.id not in known:
                # Ready but unknown to the saved search state: cannot be placed in the tree.
                await self.rt.store.update_node(self.task.id, node.id, state=NodeState.FAILED,
                                                error="interrupted before it could run",
                                                finished_at=self.rt.clock())
        for node in nodes:
            if node.state in (NodeState.DONE, NodeState.BUGGY):
                self.memory[node.id] = MemoryItem(node.id, node.operator, node.summary or "",
                                                  node.metric, node.state is NodeState.BUGGY)

    async def _repair_best(self, nodes: list[NodeRecord]) -> None:
        """best/ is derived from the finished nodes: a crash between a node's outcome and the
        copy of its files can leave it behind, so each start puts it right."""
        done = self._ranked(nodes)
        if not done:
            return
        # The best whose files are still there (a workspace removed by hand cannot be used).
        exists = await asyncio.to_thread(
            lambda: [has_submission(self._node_dir(n.id)) for n in done])
        usable = [n for n, ok in zip(done, exists, strict=True) if ok]
        if not usable:
            log.warning("no finished node has its submission any more; best/ left as it is",
                        task_id=self.task.id)
            return
        best = usable[0]
        assert best.metric is not None and best.code is not None
        target = best_dir(self.rt.state_dir, self.task.id)
        recorded = await asyncio.to_thread(best_node_id, target)
        holder = next((n for n in done if n.id == recorded), None)
        # Another node with the same metric may hold it (it finished first): that stands.
        if (holder is not None and holder.metric == best.metric
                and self.task.best_node_id == holder.id):
            return
        log.warning("best submission out of date after a restart; rebuilt", task_id=self.task.id,
                    node_id=best.id, was=recorded)
        ws = Workspace(self._node_dir(best.id))
        await self._record_best(best.id, ws, best.metric, best.code)

    def _state(self) -> dict[str, object]:
        return {"policy": self.policy.to_state(),
                "inflight": {str(k): p.to_state() for k, p in self.inflight.items()},
                "memory": self.cache.to_state()}

    async def _prefetch_lessons(self) -> None:
        """L3: lessons from earlier tasks, the most similar first, join this task's memory."""
        k = self.rt.config.memory.lessons_k
        if k == 0 or self.profile is None:
            return
        rows = await self.rt.store.list_lessons()
        lessons = [Lesson(text, TaskProfile.from_state(json.loads(profile)), score)
                   for text, profile, score in rows]
        self.cache.prefetch(lessons, self.profile, k)
        log.info("lessons prefetched", task_id=self.task.id, available=len(lessons),
                 used=len(self.cache.lessons))

    async def _promote_lessons(self) -> None:
        """At the end of a task its phase summaries become lessons for later tasks."""
        if self.profile is None:
            return
        lessons = self.cache.promote_task(self.profile)
        await self.rt.store.add_lessons(
            self.task.id,
            [(x.text, json.dumps(x.profile.to_state()), x.score) for x in lessons],
            self.rt.clock(),
        )

    async def _set_state(self, state: TaskState, error: str | None = None) -> None:
        await self.rt.store.update_task(self.task.id, state=state, error=error,
                                        finished_at=self.rt.clock(),
                                        active_s=round(self.active_s(), 3))
        self.rt.bus.publish(TaskStateChanged(task_id=self.task.id, state=state.value, error=error))
        log.info("task ended", task_id=self.task.id, state=state.value, error=error,
                 best_metric=self.best_metric)

    async def _node_state(
        self, node_id: int, pick: Pick, state: NodeState, **fields: object
    ) -> None:
        await self.rt.store.update_node(self.task.id, node_id, state=state, **fields)
        await self._publish_node(node_id, pick, state, fields.get("metric"), fields.get("error"))

    async def _publish_node(
        self, node_id: int, pick: Pick, state: NodeState, metric: object = None,
        error: object = None,
    ) -> None:
        total, done = await self.rt.store.node_counts(self.task.id)
        if state.terminal:
            # What the disk proves was committed: a start that finds the database behind
            # it (a lost or truncated WAL) refuses instead of rebuilding from less.
            await asyncio.to_thread(
                write_committed, task_root(self.rt.state_dir, self.task.id),
                {"node_id": node_id, "state": state.value,
                 "metric": metric if isinstance(metric, float) else None, "finished": done})
        self.rt.bus.publish(NodeStateChanged(
            task_id=self.task.id, node_id=node_id,
            parent_id=pick.parent_ids[0] if pick.parent_ids else None,
            operator=pick.operator.value, state=state.value,
            metric=metric if isinstance(metric, float) else None,
            error=error if isinstance(error, str) else None,
            nodes_total=total, nodes_done=done,
        ))

    async def _expand(self, node_id: int, pick: Pick, existing: NodeRecord | None = None,
                      ) -> None:
        with structlog.contextvars.bound_contextvars(task_id=self.task.id, node_id=node_id):
            parent_id = pick.parent_ids[0] if pick.parent_ids else None
            has_code = existing is not None
            try:
                if existing is None:
                    await self.rt.store.insert_node(NodeRecord(
                        task_id=self.task.id, id=node_id, parent_id=parent_id,
                        operator=pick.operator, state=NodeState.PENDING,
                        created_at=self.rt.clock(), parent_ids=pick.parent_ids,
                    ))
                    await self._publish_node(node_id, pick, NodeState.PENDING)
                    response = await self._generate_code(node_id, pick)
                    has_code = True
                else:
                    assert existing.code is not None
                    response = CodeResponse(existing.plan or "", existing.code,
                                            existing.summary or "")
                    log.info("running code generated before the restart")
                await self._run_evaluate(node_id, pick, response)
            except _Held:
                log.info("node kept ready for the restart")
            except asyncio.CancelledError:
                if has_code and not self.cancel_requested:
                    # The daemon is stopping: the paid-for code stays ready for the restart
                    # (unless the node's outcome was committed just before the stop).
                    with contextlib.suppress(Exception):
                        await asyncio.shield(self.rt.store.update_unfinished_node(
                            self.task.id, node_id, state=NodeState.READY, pid=None,
                            started_at=None))
                    raise
                if self.cancel_requested:
                    await asyncio.shield(self._fail(node_id, pick, "cancelled before it finished"))
                else:
                    # A daemon stop before the code existed: not a step; asked again later.
                    await asyncio.shield(self._fail(
                        node_id, pick, "interrupted: the daemon stopped while this node was "
                        "being generated", interrupted=True))
                raise
            except Exception as exc:
                if is_storage_fault(exc):
                    raise  # the task pauses; this node resumes with it
                log.exception("expansion failed")
                await self._fail(node_id, pick, f"{type(exc).__name__}: {exc}",
                                 quiet=False)

    async def _fail(self, node_id: int, pick: Pick, reason: str,
                    interrupted: bool = False, quiet: bool = True) -> None:
        """Fail the node. `quiet` (on a cancel): a write that fails is left to the restart,
        which settles the node; otherwise a storage fault propagates and pauses the task."""
        if node_id not in self.inflight:
            # Its outcome is already in the search (and committed or being committed): a
            # cancel or an error after that point must not turn it into a failure.
            return
        # A failed node leaves the search tree, so its slot opens again; it counts as a step
        # unless a daemon stop interrupted it before it had code.
        self.inflight.pop(node_id, None)
        self.policy.abort(node_id, pick)
        try:
            fields = {"state": NodeState.FAILED, "error": reason,
                      "finished_at": self.rt.clock(), "interrupted": interrupted}
            if await self.rt.store.update_unfinished_node(self.task.id, node_id, **fields):
                await self._publish_node(node_id, pick, NodeState.FAILED, error=reason)
        except Exception as exc:
            if quiet or not is_storage_fault(exc):
                return
            raise

    async def _generate_code(self, node_id: int, pick: Pick) -> CodeResponse:
        task = self.task
        await self._node_state(node_id, pick, NodeState.GENERATING)
        request = await self._request(node_id, pick)
        await asyncio.to_thread(_write_text, self._node_dir(node_id) / "memory.md",
                                request.memory_text)
        response = await self._generate(node_id, request)
        # The answer is committed with the code (and the search state that knows this node)
        # before anything runs: a crash never pays for it twice.
        await self.rt.store.mark_ready(
            task.id, node_id,
            {"state": NodeState.READY, "code": response.code, "plan": response.plan,
             "summary": response.summary},
            response.calls, self.rt.clock(), self._state())
        await self._publish_node(node_id, pick, NodeState.READY)
        return response

    async def _run_evaluate(self, node_id: int, pick: Pick, response: CodeResponse) -> None:
        task = self.task
        # Siblings generated from now on see this attempt, even before it has run.
        self.memory[node_id] = MemoryItem(node_id, pick.operator, response.summary, None, False)
        root = self._node_dir(node_id)
        ws = await asyncio.to_thread(Workspace.create, root, task.spec.public_dir, response.code)
        async with self.run_slots:
            if self.draining:
                raise _Held
            sampler = self.rt.sampler
            lease = await self.rt.slots.acquire(
                task.id, sampler.free_memory_mb if sampler else None,
                holder=f"{task.id}/{node_id}")
            try:
                if self.draining:
                    raise _Held
                result, gpu, timeout = await self._run_on(lease, node_id, pick, ws,
                                                          response.summary)
            finally:
                self.rt.slots.release(lease)
        await self._node_state(node_id, pick, NodeState.EVALUATING, exit_code=result.exit_code,
                               gpu_peak_mb=gpu[0], gpu_seconds=gpu[1])
        outcome = await asyncio.to_thread(evaluate, ws, task.spec, result, timeout)
        if result.reason is not None and result.reason.startswith(DISK_LIMIT_REASONS):
            # It wrote too much: what it wrote goes (its logs and code are kept).
            await asyncio.to_thread(ws.clear, KEPT_AFTER_DISK_LIMIT)
        outcome, analysis, summary = await self._judge(node_id, ws, response.code, outcome,
                                                       response.summary)
        parent_metric = (self.policy.tree[pick.parent_id].metric if pick.parent_ids else None)
        changed = self.policy.complete(node_id, pick, outcome.metric)
        self.inflight.pop(node_id, None)
        phase = self.cache.record(
            MemoryEntry(node_id, pick.operator, pick.parent_ids, summary,
                        outcome.metric, outcome.buggy, outcome.error, created=node_id),
            parent_metric, task.spec.lower_is_better,
        )
        if phase is not None:
            await self._summarise_phase(node_id, phase)
        state = NodeState.BUGGY if outcome.buggy else NodeState.DONE
        await self.rt.store.finish_node(
            task.id, node_id,
            {"state": state, "metric": outcome.metric, "error": outcome.error,
             "finished_at": self.rt.clock(), "analysis": analysis},
            [(n.id, n.visits, n.value) for n in changed],
            self._state(),
        )
        self.memory[node_id] = MemoryItem(node_id, pick.operator, summary,
                                          outcome.metric, outcome.buggy)
        await self._publish_node(node_id, pick, state, outcome.metric, outcome.error)
        log.info("node finished", state=state.value, metric=outcome.metric, error=outcome.error,
                 seconds=round(result.duration_s, 2))
        if outcome.metric is not None and self._improves(outcome.metric):
            await self._record_best(node_id, ws, outcome.metric, response.code)

    async def _run_on(self, lease: Lease, node_id: int, pick: Pick, ws: Workspace,
                      summary: str,
                      ) -> tuple[RunResult, tuple[int | None, float | None], float]:
        """Run the node's script under its lease; returns the result, (peak GPU MiB,
        GPU-seconds) when a GPU was leased, and the time limit it ran under."""
        task, execution = self.task, self.rt.config.execution
        timeout = max(1.0, min(task.node_timeout_s, self.deadline - self.rt.clock()))

        async def started(identity: ProcessIdentity) -> None:
            # The journal that lets a restarted daemon prove this process is ours.
            await self._node_state(node_id, pick, NodeState.RUNNING, started_at=self.rt.clock(),
                                   pid=identity.pid, pid_start_time=identity.start_time,
                                   boot_id=identity.boot_id, slot=lease.slot_id)
            job_pids.add(identity.pid)
            log.info("node running", operator=pick.operator.value, summary=summary,
                     slot=lease.slot_id)

        machine = await asyncio.to_thread(Machine.read, self.rt.state_dir,
                                          self.rt.slots.capacity)
        limits = job_limits(execution, machine)
        job_pids: set[int] = set()
        watcher = asyncio.create_task(_collect_descendants(job_pids)) \
            if lease.gpu_uuid and self.rt.sampler else None
        try:
            result = await run_script(
                ws, timeout, execution.kill_grace_s, execution.python or None, started,
                lease=lease, limits=limits, sandbox=execution.sandbox,
                public_dir=task.spec.public_dir, job_id=f"{task.id}-{node_id}",
                hidden_paths=self._hidden_paths(), readable_paths=self._readable_paths(),
            )
        finally:
            if watcher is not None:
                watcher.cancel()
        if watcher is None or self.rt.sampler is None:
            return result, (None, None), timeout
        peak, seconds = self.rt.sampler.usage(job_pids)
        self.rt.sampler.forget(job_pids)
        return result, (peak, round(seconds, 2)), timeout

    def _hidden_paths(self) -> tuple[Path, ...]:
        """What a job must not see: the daemon's state (database, other nodes and tasks; its
        own workspace is bound back in), any API key file, the API socket and the task's
        hidden answers (the sandbox shows none of these anyway; this holds if one lies inside
        what it shows)."""
        llm = self.rt.config.llm
        keys = [Path(e.api_key_file).expanduser() for e in (llm.code, llm.feedback)
                if e is not None and e.api_key_file]
        sockets = [self.rt.socket_path] if self.rt.socket_path is not None else []
        private = [self.task.spec.private_dir] if self.task.spec.private_dir else []
        return (self.rt.state_dir, *keys, *sockets, *private)

    def _readable_paths(self) -> tuple[Path, ...]:
        """The sample submission when a competition keeps it only beside its hidden answers
        (`../private/<name>`): the one file of that folder a job may read."""
        spec = self.task.spec
        sample = (spec.public_dir / spec.sample_submission_file).resolve()
        if sample.is_relative_to(spec.public_dir.resolve()):
            return ()
        return (sample,)

    async def _summarise_phase(self, node_id: int, phase: L2Summary) -> None:
        """A phase closed on stagnation: with a model configured, it rewrites the
        deterministic L2 summary (the fallback kept when it cannot answer)."""
        log.info("phase closed on stagnation", phase=phase.phase, best=phase.best_metric)
        coder = as_llm_coder(self.rt.coder)
        if coder is None:
            return
        text, calls = await coder.summarise(phase.text, self.task.spec)
        await self.rt.store.record_calls(self.task.id, node_id, calls, self.rt.clock())
        if text and self.cache.l2 and self.cache.l2[-1] is phase:
            self.cache.l2[-1] = dataclasses.replace(phase, text=text)

    async def _generate(self, node_id: int, request: CodeRequest) -> CodeResponse:
        """Ask the coder; while its model is down the task is paused, never failed."""
        while True:
            try:
                return await self.rt.coder.generate(request)
            except EndpointUnavailable as exc:
                await self._pause(exc.message)
                try:
                    await self.rt.coder.wait_available()
                finally:
                    await self._unpause()
            except NoCodeInAnswer as exc:
                await self.rt.store.record_calls(self.task.id, node_id, exc.calls,
                                                 self.rt.clock())
                raise

    async def _pause(self, reason: str) -> None:
        self.waiting += 1
        if self.waiting == 1:
            self.paused_at = self.rt.clock()
            log.warning("task paused: llm endpoint down", task_id=self.task.id, reason=reason)
            await self.rt.store.update_task(self.task.id, state=TaskState.PAUSED, error=reason)
            self.rt.bus.publish(TaskStateChanged(task_id=self.task.id,
                                                 state=TaskState.PAUSED.value, error=reason))

    async def _unpause(self) -> None:
        self.waiting -= 1
        if self.waiting == 0:
            # Time spent waiting for the model does not count against the task's budget.
            if self.paused_at is not None:
                self.deadline += self.rt.clock() - self.paused_at
                self.paused_at = None
            log.info("task resumed: llm endpoint back", task_id=self.task.id)
            await self.rt.store.update_task(self.task.id, state=TaskState.RUNNING, error=None)
            self.rt.bus.publish(TaskStateChanged(task_id=self.task.id,
                                                 state=TaskState.RUNNING.value))

    async def _over_budget(self) -> bool:
        """Whether the task's token or money cap is reached: no new generation then, and the
        running nodes finish."""
        task = self.task
        if not task.max_tokens and not task.max_cost:
            return False
        if self.budget_note is not None:
            return True
        usage = await self.rt.store.usage(task.id)
        if task.max_tokens and usage["total_tokens"] >= task.max_tokens:
            self.budget_note = (f"token budget reached: {usage['total_tokens']} of "
                                f"{task.max_tokens}")
        elif task.max_cost and usage["cost"] >= task.max_cost:
            self.budget_note = f"cost budget reached: ${usage['cost']:.4f} of ${task.max_cost}"
        if self.budget_note:
            log.info("budget reached; no new generation", task_id=task.id,
                     note=self.budget_note)
        return self.budget_note is not None

    async def _judge(self, node_id: int, ws: Workspace, code: str, outcome: Evaluation,
                     summary: str) -> tuple[Evaluation, str | None, str]:
        """The feedback model's view of the run, when one is configured. It may call a run
        buggy (e.g. leakage) but never sets the metric or its direction."""
        coder = as_llm_coder(self.rt.coder)
        if coder is None or coder.feedback is None:
            return outcome, None, summary
        output = await asyncio.to_thread(ws.output_tail,
                                         self.rt.config.execution.output_tail_chars)
        verdict, calls = await coder.judge(self.task.spec, code, output, outcome.error)
        await self.rt.store.record_calls(self.task.id, node_id, calls, self.rt.clock())
        if verdict is None:
            return outcome, None, summary
        if verdict.is_bug and not outcome.buggy:
            outcome = Evaluation(None, f"judged buggy: {verdict.analysis[:300]}")
        return outcome, verdict.analysis, verdict.summary or summary

    async def _request(self, node_id: int, pick: Pick) -> CodeRequest:
        task = self.task
        parents = [await self._parent_view(pid) for pid in pick.parent_ids]
        parent_code, parent_output, parent_error = parents[0] if parents else (None, None, None)
        other_code, other_output, _ = parents[1] if len(parents) > 1 else (None, None, None)
        total, _ = await self.rt.store.node_counts(task.id)
        # Read last, after every await, so attempts generated meanwhile are included.
        siblings = tuple(
            self.memory[c] for c in self.policy.tree[pick.parent_id].children if c in self.memory
        )
        memory_text = self.cache.context(pick.operator, pick.parent_ids, self.policy.tree,
                                         self.rt.config.memory.budget_tokens, self.counter)
        return CodeRequest(
            operator=pick.operator, task=task.spec, node_id=node_id, data_preview=self.preview,
            parent_code=parent_code, parent_output=parent_output, parent_error=parent_error,
            other_parent_code=other_code, other_parent_output=other_output,
            memory=siblings, memory_text=memory_text, steps_left=max(task.steps - total, 0),
            time_left_s=max(self.deadline - self.rt.clock(), 0.0),
        )

    async def _keep_top_k(self) -> None:
        """Final selection: the best node is already in best/; with keep_top_k > 1 the k best
        working nodes' submissions are also copied to top/<rank>-node<id>/, best first."""
        k = self.rt.config.search.keep_top_k
        if k <= 1:
            return
        nodes = self._ranked(await self.rt.store.list_nodes(self.task.id))
        root = task_root(self.rt.state_dir, self.task.id)
        await asyncio.to_thread(copy_top, root, [(n.id, n.code or "") for n in nodes[:k]])

    def _ranked(self, nodes: list[NodeRecord]) -> list[NodeRecord]:
        """The working nodes, best first (the earlier of equal metrics first)."""
        sign = 1.0 if self.task.spec.lower_is_better else -1.0
        done = [n for n in nodes if n.state is NodeState.DONE and n.metric is not None]
        return sorted(done, key=lambda n: (sign * (n.metric or 0.0), n.id))

    def _node_dir(self, node_id: int) -> Path:
        return node_dir(self.rt.state_dir, self.task.id, node_id)

    async def _parent_view(self, node_id: int) -> tuple[str | None, str, str | None]:
        """(code, output tail, error) of a parent node, for the prompt."""
        parent = await self.rt.store.get_node(self.task.id, node_id)
        ws = Workspace(self._node_dir(node_id))
        output = await asyncio.to_thread(ws.output_tail,
                                         self.rt.config.execution.output_tail_chars)
        return parent.code, output, parent.error

    def _improves(self, metric: float) -> bool:
        if self.best_metric is None:
            return True
        if self.task.spec.lower_is_better:
            return metric < self.best_metric
        return metric > self.best_metric

    async def _record_best(self, node_id: int, ws: Workspace, metric: float, code: str) -> None:
        self.best_metric = metric
        target = best_dir(self.rt.state_dir, self.task.id)
        await asyncio.to_thread(copy_best, ws, target, node_id, metric, code)
        submission = str(target / "submission.csv")
        await self.rt.store.update_task(self.task.id, best_node_id=node_id, best_metric=metric)
        self.rt.bus.publish(BestImproved(task_id=self.task.id, node_id=node_id, metric=metric,
                                      submission_path=submission))
        log.info("best improved", metric=metric)


class _Held(Exception):
    """A node with code meets a draining daemon before it runs: it stays ready for later."""


async def _collect_descendants(pids: set[int], interval_s: float = 1.0) -> None:
    """Keep adding a job's descendant pids (the GPU work runs in them) until cancelled."""
    while True:
        for pid in list(pids):
            with contextlib.suppress(psutil.Error):
                pids.update(c.pid for c in psutil.Process(pid).children(recursive=True))
        await asyncio.sleep(interval_s)


def _data_preview(spec: TaskSpec) -> str:
    # pandas loads here, in a worker thread, not at daemon start.
    from mlmaster_daemon.tasks.preview import data_preview

    return data_preview(spec)


def task_profile(spec: TaskSpec) -> TaskProfile:
    """What L3 compares tasks by: modality, metric, task type and size."""
    train = spec.public_dir / spec.train_file
    known = registry.lookup(spec.competition_id or "")
    modality = known.modality if known is not None else "tabular"
    rows = features = 0
    if spec.train_file.lower().endswith(".csv"):
        columns = read_csv_header(train)
        rows = count_rows(train)
        features = len([c for c in columns if c not in (spec.target, spec.id_column)])
    return TaskProfile.build(modality, spec.metric.value, not spec.metric.is_regression,
                             rows, features)


def _write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


class Scheduler:
    """Starts queued tasks up to `max_running_tasks`, cancels them, and stops them all."""

    def __init__(self, store: Store, bus: EventBus, coder: Coder, config: Config,
                 state_dir: Path, clock: Clock = time.time, slots: SlotPool | None = None,
                 sampler: GpuSampler | None = None, socket_path: Path | None = None):
        pool = slots or SlotPool([], config.execution.max_concurrent_nodes, 1)
        self.rt = Runtime(store, bus, coder, config, pool, state_dir, clock, sampler,
                          socket_path)
        self.runners: dict[str, tuple[TaskRunner, asyncio.Task[None]]] = {}
        # Tasks whose runner stopped on an error, waiting out a back-off before they are
        # launched again: task id -> (failed launches in a row, the error).
        self.backing_off: dict[str, tuple[int, str]] = {}
        self._stopping = False
        self._pumps: set[asyncio.Task[None]] = set()
        self._ticker: asyncio.Task[None] | None = None

    async def start(self, heartbeat: Callable[[], None] | None = None) -> None:
        """Resume every task that was queued or running when the daemon last stopped; tick
        `heartbeat` every second while the scheduler's loop runs (the systemd watchdog)."""
        if heartbeat is not None:
            self._ticker = asyncio.create_task(self._tick(heartbeat))
        await self.pump()

    async def _tick(self, heartbeat: Callable[[], None]) -> None:
        # Ticks through a graceful stop too, until stop() cancels it at the very end.
        while True:
            # A runner that died unexpectedly would show here; the tick proves the loop runs.
            heartbeat()
            await asyncio.sleep(1.0)

    async def pump(self) -> None:
        if self._stopping:
            return
        waiting = await self.rt.store.list_tasks(
            [TaskState.RUNNING, TaskState.PAUSED, TaskState.QUEUED])
        # Tasks that were running before a restart go first, then the queue in submit order.
        waiting.sort(key=lambda t: (t.state is TaskState.QUEUED, t.created_at))
        for task in waiting:
            if len(self.runners) >= self.rt.config.daemon.max_running_tasks:
                break
            if task.id not in self.runners and task.id not in self.backing_off:
                self._launch(task)

    def _launch(self, task: TaskRecord) -> None:
        runner = TaskRunner(task, self.rt)
        with structlog.contextvars.bound_contextvars(task_id=task.id):
            handle = asyncio.create_task(runner.run(), name=f"task-{task.id}")
        self.runners[task.id] = (runner, handle)
        handle.add_done_callback(lambda h: self._on_done(task.id, h))

    def _on_done(self, task_id: str, handle: asyncio.Task[None]) -> None:
        self.runners.pop(task_id, None)
        error = None if handle.cancelled() else handle.exception()
        if self._stopping:
            return
        if error is None:
            self.backing_off.pop(task_id, None)
            self._spawn(self.pump())
            return
        # Never relaunched at once: the cause (a full disk) is most likely still there.
        attempt = self.backing_off.get(task_id, (0, ""))[0] + 1
        if isinstance(error, StorageFault):
            reason = error.message
        elif is_storage_fault(error):
            reason = describe(error)
        else:
            reason = f"{type(error).__name__}: {error}"
        self.backing_off[task_id] = (attempt, reason)
        self._spawn(self._relaunch_later(task_id, attempt, reason))

    async def _reclaim(self, task_id: str) -> None:
        """Empty the workspaces of the task's unfinished nodes: their runs start afresh when it
        resumes, and what a stopped job wrote (perhaps what filled the disk) goes now."""
        for node in await self.rt.store.list_nodes(task_id):
            if node.state.terminal:
                continue
            ws = Workspace(node_dir(self.rt.state_dir, task_id, node.id))
            try:
                await asyncio.to_thread(clear_if_present, ws)
            except OSError as exc:
                log.warning("could not empty a stopped node's workspace", task_id=task_id,
                            node_id=node.id, error=str(exc))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        # Keep a reference: the loop holds tasks only weakly.
        pump = asyncio.get_running_loop().create_task(coro)
        self._pumps.add(pump)
        pump.add_done_callback(self._pumps.discard)

    async def _relaunch_later(self, task_id: str, attempt: int, reason: str) -> None:
        """After a back-off, and once a write to the state dir works, launch the task again;
        it resumes from its last commit."""
        daemon = self.rt.config.daemon
        while True:
            delay = backoff_s(attempt, daemon.fault_retry_s, daemon.fault_retry_max_s)
            log.error("task stopped on an error; trying again after a pause", task_id=task_id,
                      error=reason, attempt=attempt, retry_in_s=delay)
            await self.rt.sleep(delay)
            await self._reclaim(task_id)
            problem = await asyncio.to_thread(probe_storage, self.rt.state_dir)
            if problem is None:
                break
            attempt += 1
            reason = f"cannot write the daemon's state: {problem}"
            self.backing_off[task_id] = (attempt, reason)
        del self.backing_off[task_id]
        log.info("resuming the task", task_id=task_id, attempt=attempt)
        await self.pump()

    async def submit(self, task: TaskRecord) -> None:
        if self._stopping:
            raise DaemonStopping("the daemon is stopping and takes no new tasks; submit again "
                                 "once it is back (systemd restarts it)")
        await self.rt.store.insert_task(task)
        self.rt.bus.publish(TaskStateChanged(task_id=task.id, state=task.state.value))
        log.info("task submitted", task_id=task.id, task_dir=task.task_dir)
        await self.pump()

    async def cancel(self, task_id: str) -> TaskRecord:
        task = await self.rt.store.get_task(task_id)
        if task.state.terminal:
            raise TaskNotCancellable(f"task {task_id} is already {task.state.value}")
        await self._stop_runner(task_id)
        if not (await self.rt.store.get_task(task_id)).state.terminal:
            # Queued, or cancelled before its runner even began: nothing else records it.
            await self.rt.store.update_task(task_id, state=TaskState.CANCELLED,
                                            finished_at=self.rt.clock())
            self.rt.bus.publish(TaskStateChanged(task_id=task_id,
                                                 state=TaskState.CANCELLED.value))
            # A pump that read the task as queued may have launched it meanwhile.
            await self._stop_runner(task_id)
        return await self.rt.store.get_task(task_id)

    async def _stop_runner(self, task_id: str) -> None:
        """Cancel the task's runner, if one runs, and wait until it has ended."""
        entry = self.runners.get(task_id)
        if entry is not None:
            runner, handle = entry
            runner.cancel_requested = True
            handle.cancel()
            await asyncio.gather(handle, return_exceptions=True)

    def reconfigure(self, config: Config) -> None:
        """Take a reloaded config: runners read it from now on, each task's run cap follows
        `search.parallel`, and `daemon.max_running_tasks` may start queued tasks."""
        self.rt.config = config
        for runner, _handle in self.runners.values():
            runner.run_slots.total_tokens = config.search.parallel
        if not self._stopping:
            self._spawn(self.pump())

    async def stop(self, grace_s: float = 0.0) -> None:
        """Stop every runner; their tasks stay `running` in the store and resume on restart.
        Running nodes get up to `grace_s` to finish (nothing new starts meanwhile); then the
        rest is stopped, and nodes with code run again after the restart."""
        self._stopping = True
        runners = list(self.runners.values())
        for runner, _handle in runners:
            runner.draining = True
        handles = [h for _r, h in runners]
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
        pending_pumps = list(self._pumps)
        for pump in pending_pumps:
            pump.cancel()
        await asyncio.gather(*pending_pumps, return_exceptions=True)
        if self._ticker is not None:
            self._ticker.cancel()
