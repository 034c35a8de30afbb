"""Commit, then publish: each change of a task or a node is written to the store before its
event goes on the bus (and before any file that depends on it)."""

from __future__ import annotations

import asyncio

from mlmaster_daemon.artefacts import (
    best_dir,
    best_submission,
    copy_best,
    task_root,
    write_committed,
)
from mlmaster_daemon.bus import BestImproved, NodeStateChanged, TaskStateChanged
from mlmaster_daemon.execution.workspace import Workspace
from mlmaster_daemon.logs import get_logger
from mlmaster_daemon.models import NodeState, TaskState
from mlmaster_daemon.scheduler.parts import SearchParts
from mlmaster_daemon.search.policy import Pick

log = get_logger("mlmaster.scheduler")


class Publisher:
    """Writes and announces one task's changes."""

    def __init__(self, parts: SearchParts, task_id: str) -> None:
        self.parts = parts
        self.task_id = task_id

    async def task_state(self, state: TaskState, error: str | None = None,
                         **fields: object) -> None:
        await self.parts.store.update_task(self.task_id, state=state, error=error, **fields)
        self.parts.bus.publish(TaskStateChanged(task_id=self.task_id, state=state.value,
                                                error=error))

    async def node_state(self, node_id: int, pick: Pick, state: NodeState,
                         **fields: object) -> None:
        await self.parts.store.update_node(self.task_id, node_id, state=state, **fields)
        await self.node_changed(node_id, pick, state, fields.get("metric"), fields.get("error"))

    async def node_changed(self, node_id: int, pick: Pick, state: NodeState,
                           metric: object = None, error: object = None,
                           holdout_metric: float | None = None) -> None:
        """Announce a node's state that is already committed."""
        total, done = await self.parts.store.node_counts(self.task_id)
        value = metric if isinstance(metric, float) else None
        if state.terminal:
            # What the disk proves was committed: a start that finds the database behind
            # it (a lost or truncated WAL) refuses instead of rebuilding from less.
            await asyncio.to_thread(
                write_committed, task_root(self.parts.state_dir, self.task_id),
                {"node_id": node_id, "state": state.value, "metric": value, "finished": done})
        self.parts.bus.publish(NodeStateChanged(
            task_id=self.task_id, node_id=node_id,
            parent_id=pick.parent_ids[0] if pick.parent_ids else None,
            operator=pick.operator.value, state=state.value, metric=value,
            error=error if isinstance(error, str) else None,
            nodes_total=total, nodes_done=done, holdout_metric=holdout_metric,
        ))

    async def best(self, node_id: int, ws: Workspace, metric: float, code: str) -> None:
        """The node's files become best/ (a rename, never half-written), then the task says so."""
        await asyncio.to_thread(copy_best, ws, best_dir(self.parts.state_dir, self.task_id),
                                node_id, metric, code)
        await self.parts.store.update_task(self.task_id, best_node_id=node_id,
                                           best_metric=metric)
        self.parts.bus.publish(BestImproved(task_id=self.task_id, node_id=node_id,
                                            metric=metric,
                                            submission_path=str(best_submission(
                                                self.parts.state_dir, self.task_id))))
        log.info("best improved", task_id=self.task_id, node_id=node_id, metric=metric)
