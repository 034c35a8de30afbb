"""One node's way through its states: pending -> generating -> ready -> running -> evaluating ->
done | buggy (or failed), each transition committed before it is published."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import structlog

from mlmaster_daemon.coders.protocol import CodeRequest, CodeResponse
from mlmaster_daemon.errors import EndpointUnavailable, NoCodeInAnswer
from mlmaster_daemon.evaluation import Evaluation, evaluate
from mlmaster_daemon.execution.executor import NodeJob, NodeRun
from mlmaster_daemon.execution.lease import ProcessIdentity
from mlmaster_daemon.execution.workspace import Workspace
from mlmaster_daemon.faults import is_storage_fault
from mlmaster_daemon.logs import get_logger
from mlmaster_daemon.models import NodeState, TaskState
from mlmaster_daemon.scheduler.holdout_stage import score_node
from mlmaster_daemon.scheduler.pipeline import Pipeline
from mlmaster_daemon.scheduler.prompt_inputs import code_request
from mlmaster_daemon.scheduler.search_state import SearchState
from mlmaster_daemon.search.policy import Pick
from mlmaster_daemon.store.records import NodeRecord

log = get_logger("mlmaster.scheduler")
# A run stopped for writing too much leaves only these behind (see execution/runner.py).
DISK_LIMIT_REASONS = ("workspace larger than", "file size limit exceeded")
KEPT_AFTER_DISK_LIMIT = frozenset({"memory.md", "solution.py", "stdout.log", "stderr.log",
                                   "input"})


class KeptForRestart(Exception):
    """A node with code meets a draining daemon before it runs: it stays ready for later."""


class TimeRanOut(Exception):
    """A node's run slot came when too little of the task's time was left to run it."""


async def expand(state: SearchState, node_id: int, pick: Pick,
                 existing: NodeRecord | None = None, pipeline: Pipeline | None = None) -> None:
    """Take one node (new, or `existing` with code from before a restart) to its outcome,
    telling `pipeline` how long its generation took and when its run slot is free again.
    A storage fault propagates (the task pauses); any other error fails only this node."""
    pipeline = pipeline or Pipeline()
    try:
        await _expand(state, node_id, pick, existing, pipeline)
    finally:
        pipeline.ran(node_id)


async def _expand(state: SearchState, node_id: int, pick: Pick, existing: NodeRecord | None,
                  pipeline: Pipeline) -> None:
    store, task = state.parts.store, state.task
    with structlog.contextvars.bound_contextvars(task_id=task.id, node_id=node_id):
        has_code = existing is not None
        try:
            if existing is None:
                began = state.now()
                parent_id = pick.parent_ids[0] if pick.parent_ids else None
                await store.insert_node(NodeRecord(
                    task_id=task.id, id=node_id, parent_id=parent_id,
                    operator=pick.operator, state=NodeState.PENDING, created_at=state.now(),
                    parent_ids=pick.parent_ids,
                    pick_reason=None if pick.reason is None else pick.reason.value,
                ))
                await state.publish.node_changed(node_id, pick, NodeState.PENDING)
                response = await _generate_code(state, node_id, pick)
                pipeline.generated(state.now() - began)
                has_code = True
            else:
                assert existing.code is not None
                response = CodeResponse(existing.plan or "", existing.code,
                                        existing.summary or "")
                log.info("running code generated before the restart")
            await _run_and_evaluate(state, node_id, pick, response, pipeline)
        except KeptForRestart:
            log.info("node kept ready for the restart")
        except TimeRanOut:
            await fail(state, node_id, pick, "not run: too little of the task's time was left "
                       "when a run slot became free")
        except asyncio.CancelledError:
            if has_code and not state.cancel_requested:
                # The daemon is stopping: the paid-for code stays ready for the restart
                # (unless the node's outcome was committed just before the stop).
                with contextlib.suppress(Exception):
                    await asyncio.shield(store.update_unfinished_node(
                        task.id, node_id, state=NodeState.READY, pid=None, started_at=None))
                raise
            if state.cancel_requested:
                await asyncio.shield(fail(state, node_id, pick, "cancelled before it finished"))
            else:
                # A daemon stop before the code existed: not a step; asked again later.
                await asyncio.shield(fail(
                    state, node_id, pick, "interrupted: the daemon stopped while this node was "
                    "being generated", interrupted=True))
            raise
        except Exception as exc:
            if is_storage_fault(exc):
                raise  # the task pauses; this node resumes with it
            log.exception("expansion failed")
            state.failed_in_a_row += 1
            state.last_failure = f"{type(exc).__name__}: {exc}"
            await fail(state, node_id, pick, state.last_failure, quiet=False)


async def fail(state: SearchState, node_id: int, pick: Pick, reason: str,
               interrupted: bool = False, quiet: bool = True) -> None:
    """Fail the node. `quiet` (on a cancel): a write that fails is left to the restart, which
    settles the node; otherwise a storage fault propagates and pauses the task."""
    if node_id not in state.open_picks:
        # Its outcome is already in the search (and committed or being committed): a cancel
        # or an error after that point must not turn it into a failure.
        return
    # A failed node leaves the search tree, so its slot opens again; it counts as a step
    # unless a daemon stop interrupted it before it had code.
    state.open_picks.pop(node_id, None)
    state.policy.abort(node_id, pick)
    try:
        if await state.parts.store.update_unfinished_node(
                state.task.id, node_id, state=NodeState.FAILED, error=reason,
                finished_at=state.now(), interrupted=interrupted):
            await state.publish.node_changed(node_id, pick, NodeState.FAILED, error=reason)
    except Exception as exc:
        if quiet or not is_storage_fault(exc):
            return
        raise


async def _generate_code(state: SearchState, node_id: int, pick: Pick) -> CodeResponse:
    await state.publish.node_state(node_id, pick, NodeState.GENERATING)
    request = await code_request(state, node_id, pick)
    await asyncio.to_thread(_write_text, state.node_dir(node_id) / "memory.md",
                            request.memory_text)
    response = await _ask_coder(state, node_id, request)
    # The answer is committed with the code (and the search state that knows this node)
    # before anything runs: a crash never pays for it twice.
    await state.parts.store.mark_ready(
        state.task.id, node_id,
        {"state": NodeState.READY, "code": response.code, "plan": response.plan,
         "summary": response.summary},
        response.calls, state.now(), state.saved())
    await state.publish.node_changed(node_id, pick, NodeState.READY)
    return response


async def _ask_coder(state: SearchState, node_id: int, request: CodeRequest) -> CodeResponse:
    """Ask the coder; while its model is down the task is paused, never failed."""
    parts = state.parts
    while True:
        try:
            return await parts.coder.generate(request)
        except EndpointUnavailable as exc:
            await _pause(state, exc.message)
            try:
                await parts.coder.wait_available()
            finally:
                await _unpause(state)
        except NoCodeInAnswer as exc:
            await parts.store.record_calls(state.task.id, node_id, exc.calls, state.now())
            raise


async def _pause(state: SearchState, reason: str) -> None:
    if state.budget.pause(state.now()):
        log.warning("task paused: llm endpoint down", task_id=state.task.id, reason=reason)
        await state.publish.task_state(TaskState.PAUSED, reason)


async def _unpause(state: SearchState) -> None:
    # Time spent waiting for the model does not count against the task's budget.
    if state.budget.unpause(state.now()):
        log.info("task resumed: llm endpoint back", task_id=state.task.id)
        await state.publish.task_state(TaskState.RUNNING)


async def _run_and_evaluate(state: SearchState, node_id: int, pick: Pick,
                            response: CodeResponse, pipeline: Pipeline) -> None:
    task, parts = state.task, state.parts
    state.memory.attempted(node_id, pick.operator, response.summary)
    if await parts.executor.attachable(task.id, node_id):
        # Its run from before the restart still writes there (a Ray cluster's).
        ws = Workspace(state.node_dir(node_id))
    else:
        ws = await asyncio.to_thread(Workspace.create, state.node_dir(node_id),
                                     task.spec.public_dir, response.code)

    async def started(identity: ProcessIdentity, slot_id: str) -> None:
        # The journal that lets a restarted daemon prove this process is ours.
        await state.publish.node_state(
            node_id, pick, NodeState.RUNNING, started_at=state.now(), pid=identity.pid,
            pid_start_time=identity.start_time, boot_id=identity.boot_id, slot=slot_id)
        log.info("node running", operator=pick.operator.value, summary=response.summary,
                 slot=slot_id)

    async with state.run_slots:
        if state.draining:
            raise KeptForRestart
        run: NodeRun | None = await parts.executor.run(
            NodeJob(task.id, node_id, task.spec, ws,
                    # Asked once a slot is granted: the task's time runs while it waits.
                    lambda: state.budget.node_timeout(state.now(), task.node_timeout_s)),
            started,
            # Asked once a slot is granted too: a stop keeps the node for the restart, and a
            # task whose time ran out while it waited does not start it.
            lambda: not state.draining and state.node_fits())
    # The slot is free and the outputs are on disk: scoring and judging happen outside it,
    # and the next generation need not wait for them.
    pipeline.ran(node_id)
    if run is None:
        if state.draining:
            raise KeptForRestart
        raise TimeRanOut
    result = run.result
    state.run_seconds.append(result.duration_s)
    await state.publish.node_state(node_id, pick, NodeState.EVALUATING,
                                   exit_code=result.exit_code, gpu_peak_mb=run.gpu_peak_mb,
                                   gpu_seconds=run.gpu_seconds)
    outcome = await asyncio.to_thread(evaluate, ws, task.spec, result, run.timeout_s)
    holdout_metric = None
    if state.holdout is not None and not outcome.buggy:
        holdout_metric, invalid = await asyncio.to_thread(score_node, state.holdout, ws,
                                                          node_id)
        if invalid is not None:
            outcome = Evaluation(None, f"submission invalid: {invalid}")
    if result.reason is not None and result.reason.startswith(DISK_LIMIT_REASONS):
        # It wrote too much: what it wrote goes (its logs and code are kept).
        await asyncio.to_thread(ws.clear, KEPT_AFTER_DISK_LIMIT)
    outcome, analysis, summary = await _judge(state, node_id, ws, response.code, outcome,
                                              response.summary)
    if outcome.buggy:
        holdout_metric = None  # a judge may call a working run buggy
    await _finish(state, node_id, pick, outcome, analysis, summary, holdout_metric)
    log.info("node finished", state="buggy" if outcome.buggy else "done",
             metric=outcome.metric, holdout_metric=holdout_metric, error=outcome.error,
             seconds=round(result.duration_s, 2))
    if outcome.metric is not None:
        key = state.selection_key(outcome.metric, holdout_metric)
        if state.improves(key, outcome.metric):
            state.best_metric, state.best_key = outcome.metric, key
            await state.publish.best(node_id, ws, outcome.metric, response.code)


async def _finish(state: SearchState, node_id: int, pick: Pick, outcome: Evaluation,
                  analysis: str | None, summary: str, holdout_metric: float | None) -> None:
    """The outcome enters the search (backpropagation, memory), then is committed with the
    search state that knows it, then published. The holdout metric is only committed: the
    search never sees it."""
    task, store = state.task, state.parts.store
    parent_metric = state.policy.tree[pick.parent_id].metric if pick.parent_ids else None
    changed = state.policy.complete(node_id, pick, outcome.metric, outcome.folds)
    state.failed_in_a_row = 0
    state.open_picks.pop(node_id, None)
    phase = state.memory.record(node_id, pick, summary, outcome.metric, outcome.buggy,
                                outcome.error, parent_metric, task.spec.lower_is_better)
    if phase is not None:
        calls = await state.memory.summarise_phase(phase, state.parts.reviewer, task.spec)
        if calls:
            await store.record_calls(task.id, node_id, calls, state.now())
    node_state = NodeState.BUGGY if outcome.buggy else NodeState.DONE
    await store.finish_node(
        task.id, node_id,
        {"state": node_state, "metric": outcome.metric, "error": outcome.error,
         "finished_at": state.now(), "analysis": analysis, "holdout_metric": holdout_metric},
        [(n.id, n.visits, n.value, n.uct) for n in changed], state.saved())
    await state.publish.node_changed(node_id, pick, node_state, outcome.metric, outcome.error,
                                     holdout_metric)


async def _judge(state: SearchState, node_id: int, ws: Workspace, code: str,
                 outcome: Evaluation, summary: str) -> tuple[Evaluation, str | None, str]:
    """The reviewer's view of the run, when one judges. It may call a run buggy (e.g.
    leakage) but never sets the metric or its direction."""
    reviewer = state.parts.reviewer
    if reviewer is None or not reviewer.judges:
        return outcome, None, summary
    output = await asyncio.to_thread(
        ws.output_tail, state.parts.settings.config.execution.output_tail_chars)
    verdict, calls = await reviewer.judge(state.task.spec, code, output, outcome.error)
    await state.parts.store.record_calls(state.task.id, node_id, calls, state.now())
    if verdict is None:
        return outcome, None, summary
    if verdict.is_bug and not outcome.buggy:
        outcome = Evaluation(None, f"judged buggy: {verdict.analysis[:300]}")
    return outcome, verdict.analysis, verdict.summary or summary


def _write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
