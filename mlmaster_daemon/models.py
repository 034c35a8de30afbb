"""Domain enums and records shared by the store, the scheduler and the API."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class TaskState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    # Waiting for an LLM endpoint that is down; resumes by itself when a probe succeeds.
    PAUSED = "paused"
    FINISHED = "finished"
    CANCELLED = "cancelled"
    FAILED = "failed"

    @property
    def terminal(self) -> bool:
        return self in (TaskState.FINISHED, TaskState.CANCELLED, TaskState.FAILED)


class NodeState(StrEnum):
    PENDING = "pending"
    GENERATING = "generating"
    READY = "ready"
    RUNNING = "running"
    EVALUATING = "evaluating"
    DONE = "done"
    BUGGY = "buggy"
    FAILED = "failed"

    @property
    def terminal(self) -> bool:
        return self in (NodeState.DONE, NodeState.BUGGY, NodeState.FAILED)


class Operator(StrEnum):
    DRAFT = "draft"
    IMPROVE = "improve"
    DEBUG = "debug"
    CROSSOVER = "crossover"


@dataclass(frozen=True)
class Best:
    node_id: int
    metric: float
    submission_path: str
