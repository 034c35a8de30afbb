"""Rows of the store as frozen dataclasses."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mlmaster_daemon.models import NodeState, Operator, TaskState
from mlmaster_daemon.tasks.spec import TaskSpec


@dataclass(frozen=True)
class TaskRecord:
    id: str
    name: str
    task_dir: str
    spec: TaskSpec
    policy: str
    steps: int
    time_limit_s: float
    node_timeout_s: float
    state: TaskState
    created_at: float
    error: str | None = None
    best_node_id: int | None = None
    best_metric: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    # Per-task caps on model usage (0: none).
    max_tokens: int = 0
    max_cost: float = 0.0
    # Who submitted it (SO_PEERCRED uid and user name); None for tasks from before that existed.
    submitter_uid: int | None = None
    submitter: str | None = None
    # Active seconds used in earlier runs of the daemon; the time budget counts only these.
    active_s: float = 0.0


@dataclass(frozen=True)
class NodeRecord:
    task_id: str
    id: int
    parent_id: int | None
    operator: Operator
    state: NodeState
    created_at: float
    plan: str | None = None
    summary: str | None = None
    code: str | None = None
    metric: float | None = None
    error: str | None = None
    exit_code: int | None = None
    pid: int | None = None
    visits: int = 0
    value: float = 0.0
    started_at: float | None = None
    finished_at: float | None = None
    # Every parent (a crossover has two); parent_id is the first, the tree edge.
    parent_ids: tuple[int, ...] = ()
    # The feedback model's analysis of the run, when a judge is configured.
    analysis: str | None = None
    # The process journal: with pid, these prove a live process is ours after a crash.
    pid_start_time: float | None = None
    boot_id: str | None = None
    slot: str | None = None
    gpu_peak_mb: int | None = None
    gpu_seconds: float | None = None
    # Stopped by the daemon before it had code: kept for the record, not counted as a step.
    interrupted: bool = False
    # Its UCT score at the last selection that compared it (None: unvisited, scored +inf, or
    # never compared) and why the pick that made it was chosen (see search/policy.PickReason).
    uct: float | None = None
    pick_reason: str | None = None

    def public(self) -> dict[str, Any]:
        """The fields the API lists for every node."""
        return {
            "id": self.id,
            "parent_id": self.parent_id,
            "parent_ids": list(self.parent_ids),
            "operator": self.operator.value,
            "status": self.state.value,
            "metric": self.metric,
            "visits": self.visits,
            "value": self.value,
            "uct": self.uct,
            "picked_by": self.pick_reason,
            "summary": self.summary,
            "error": self.error,
        }
