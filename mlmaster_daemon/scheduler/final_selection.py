"""The end of a task's search: which working node's submission is final, by the selection rule
(`[holdout] selection`), and whether the average of the k best nodes by holdout replaces it.
The task records what was chosen and why (`selection`); best/ holds it."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from mlmaster_daemon.artefacts import best_dir, best_node_id, has_submission
from mlmaster_daemon.evaluation import SUBMISSION
from mlmaster_daemon.execution.workspace import Workspace
from mlmaster_daemon.logs import get_logger
from mlmaster_daemon.models import NodeState
from mlmaster_daemon.scheduler.holdout_stage import ActiveHoldout
from mlmaster_daemon.scheduler.search_state import SearchState
from mlmaster_daemon.tasks.ensemble import Member, NoEnsemble, beats, combine, write_submission
from mlmaster_daemon.tasks.selection import Candidate, Rule, by_holdout, choose

log = get_logger("mlmaster.scheduler")
ENSEMBLE_FILE = "ensemble.json"


async def choose_final(state: SearchState) -> None:
    """Choose the task's final submission among its working nodes whose submission is still
    there, put it in best/ and record the choice in the task."""
    parts, task = state.parts, state.task
    config = parts.settings.config.holdout
    nodes = [n for n in await parts.store.list_nodes(task.id)
             if n.state is NodeState.DONE and n.metric is not None and n.code is not None]
    present = await asyncio.to_thread(
        lambda: [has_submission(state.node_dir(n.id)) for n in nodes])
    nodes = [n for n, ok in zip(nodes, present, strict=True) if ok]
    candidates = [Candidate(n.id, n.metric, n.holdout_metric)
                  for n in nodes if n.metric is not None]
    rule = Rule(config.selection)
    lower = task.spec.lower_is_better
    choice = choose(candidates, rule, lower)
    if choice is None:
        return
    chosen = next(n for n in nodes if n.id == choice.node_id)
    assert chosen.metric is not None and chosen.code is not None
    best = best_dir(parts.state_dir, task.id)
    if await asyncio.to_thread(best_node_id, best) != chosen.id:
        state.best_metric = chosen.metric
        await state.publish.best(chosen.id, Workspace(state.node_dir(chosen.id)),
                                 chosen.metric, chosen.code)
    selection: dict[str, Any] = {"rule": choice.rule.value, "node_id": chosen.id,
                                 "metric": chosen.metric,
                                 "holdout_metric": chosen.holdout_metric,
                                 "reason": choice.reason}
    if state.holdout is not None and config.ensemble_k > 1 and rule is not Rule.VALIDATION:
        selection["ensemble"] = await asyncio.to_thread(
            _ensemble, state, state.holdout, candidates, config.ensemble_k)
    await parts.store.update_task(task.id, selection=selection)
    log.info("final submission chosen", task_id=task.id, node_id=chosen.id,
             rule=choice.rule.value, reason=choice.reason,
             ensemble=selection.get("ensemble", {}).get("kept"))


def _ensemble(state: SearchState, active: ActiveHoldout, candidates: list[Candidate],
              k: int) -> dict[str, Any]:
    """The average of the k best nodes by holdout; it becomes best/'s submission only when
    it beats the best of them alone on the holdout. What was tried, and the outcome."""
    lower = state.task.spec.lower_is_better
    top = by_holdout(candidates, lower)[:k]
    members = [Member(c.node_id, c.holdout, state.node_dir(c.node_id), SUBMISSION,
                      active.private_dir, active.rows_file(c.node_id))
               for c in top if c.holdout is not None]
    result = combine(active.spec, members, active.private_dir)
    if isinstance(result, NoEnsemble):
        return {"kept": False, "reason": result.reason}
    best = top[0]
    assert best.holdout is not None
    outcome: dict[str, Any] = {"members": list(result.members), "method": result.method,
                               "holdout_metric": result.holdout_metric,
                               "best_single": {"node_id": best.node_id,
                                               "holdout_metric": best.holdout}}
    kept = beats(result.holdout_metric, best.holdout, lower)
    names = ", ".join(str(i) for i in result.members)
    reason = (f"the {result.method} of nodes {names} scored {result.holdout_metric:.6g} on "
              f"the holdout, {'better than' if kept else 'no better than'} node "
              f"{best.node_id} alone ({best.holdout:.6g})")
    if kept:
        target = best_dir(state.parts.state_dir, state.task.id)
        write_submission(result.real, target / "submission.csv")
        (target / ENSEMBLE_FILE).write_text(json.dumps(outcome, indent=2) + "\n")
    return {"kept": kept, **outcome, "reason": reason}
