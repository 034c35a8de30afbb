"""Domain enums and records shared by the store, the scheduler and the API."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from enum import StrEnum


def new_task_id() -> str:
    """A fresh task id: "t" and 11 lowercase hex digits."""
    return "t" + uuid.uuid4().hex[:11]


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
class CallRecord:
    """One call to a model, for accounting: tokens, latency, cost and what it answered."""

    role: str
    model: str
    endpoint: str
    prompt_tokens: int
    completion_tokens: int
    reasoning_tokens: int
    latency_s: float
    cost: float
    attempts: int
    content: str = ""
    reasoning: str = ""
