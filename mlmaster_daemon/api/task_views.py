"""What the API shows of a task: its row, node counts, model usage and kept submissions, read
for a whole listing at once (one query per kind and one thread hop for the files, however
many tasks), not task by task; and the listing's answer, kept while it stays true (see
read_cache.py)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mlmaster_daemon.api.parts import ApiParts
from mlmaster_daemon.artefacts import best_submission, task_root, top_submissions
from mlmaster_daemon.models import TaskState
from mlmaster_daemon.store import Store, TaskRecord


async def listing_body(parts: ApiParts, limit: int, now: float) -> bytes:
    """GET /v1/tasks's JSON body: the newest `limit` tasks, oldest first, and how many there
    are; built again once a commit changed the database or a task paused or resumed on a
    fault, else at most `read_cache.MAX_AGE_S` old."""
    async def build() -> bytes:
        tasks, total = await parts.store.list_recent_tasks(limit)
        views = await task_views(parts.store, parts.state_dir, parts.queue.backing_off, tasks)
        return json.dumps({"tasks": views, "total": total}).encode()

    faults = tuple(sorted(parts.queue.backing_off.items()))
    key = ("tasks", await parts.store.data_version(), limit, faults)
    return await parts.reads.body(key, now, build)


async def task_views(store: Store, state_dir: Path, backing_off: Mapping[str, tuple[int, str]],
                     tasks: Sequence[TaskRecord]) -> list[dict[str, Any]]:
    """Each task as the API shows it, in the order given. `backing_off` holds the tasks a
    storage fault paused (task id -> (failed launches, the error)), shown as paused."""
    ids = [task.id for task in tasks]
    counts, usage, tops = await asyncio.gather(
        store.node_counts_of(ids), store.usage_of(ids),
        asyncio.to_thread(_tops, state_dir, ids))
    return [_view(state_dir, backing_off.get(task.id), task, counts[task.id], usage[task.id],
                  tops[task.id]) for task in tasks]


def _tops(state_dir: Path, task_ids: Sequence[str]) -> dict[str, list[dict[str, Any]]]:
    """Task id -> what its top/ holds, best first. Blocking."""
    return {task_id: [{"rank": kept.rank, "node_id": kept.node_id,
                       "submission_path": str(kept.submission)}
                      for kept in top_submissions(task_root(state_dir, task_id))]
            for task_id in task_ids}


def _view(state_dir: Path, fault: tuple[int, str] | None, task: TaskRecord,
          counts: tuple[int, int], usage: dict[str, Any],
          top: list[dict[str, Any]]) -> dict[str, Any]:
    total, done = counts
    state, error = task.state.value, task.error
    if fault is not None and not task.state.terminal:
        # Paused on a fault the store may not even be able to record (a full disk).
        state, error = TaskState.PAUSED.value, fault[1]
    best = None
    if task.best_node_id is not None and task.best_metric is not None:
        best = {"node_id": task.best_node_id, "metric": task.best_metric,
                "submission_path": str(best_submission(state_dir, task.id))}
    return {
        "id": task.id,
        "name": task.name,
        "state": state,
        "error": error,
        "task_dir": task.task_dir,
        "policy": task.policy,
        "metric": task.spec.metric.value,
        "lower_is_better": task.spec.lower_is_better,
        "steps": task.steps,
        "time_limit_s": task.time_limit_s,
        "node_timeout_s": task.node_timeout_s,
        "nodes_total": total,
        "nodes_done": done,
        "best": best,
        "top": top,
        "holdout": task.holdout,
        "selection": task.selection,
        "usage": usage,
        "budget": {"max_tokens": task.max_tokens, "max_cost": task.max_cost},
        "submitter": task.submitter,
        "submitter_uid": task.submitter_uid,
        "created_at": task.created_at,
        "started_at": task.started_at,
        "finished_at": task.finished_at,
    }
