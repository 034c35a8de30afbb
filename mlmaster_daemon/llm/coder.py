"""The seam between the scheduler and whatever writes code: the offline coder or an LLM pool."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from mlmaster_daemon.models import Operator
from mlmaster_daemon.tasks.spec import TaskSpec


@dataclass(frozen=True)
class MemoryItem:
    """What one earlier attempt taught: its plan summary and outcome, never its code."""

    node_id: int
    operator: Operator
    summary: str
    metric: float | None
    buggy: bool


@dataclass(frozen=True)
class CodeRequest:
    operator: Operator
    task: TaskSpec
    node_id: int
    data_preview: str
    parent_code: str | None = None
    parent_output: str | None = None
    parent_error: str | None = None
    # Crossover only: the second parent's code and output.
    other_parent_code: str | None = None
    other_parent_output: str | None = None
    memory: tuple[MemoryItem, ...] = field(default_factory=tuple)
    # The scoped, token-bounded memory section for prompts (empty when there is none).
    memory_text: str = ""
    steps_left: int | None = None
    time_left_s: float | None = None


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


@dataclass(frozen=True)
class CodeResponse:
    plan: str
    code: str
    summary: str
    # The model calls that produced this code (none for the offline coder).
    calls: tuple[CallRecord, ...] = ()


class Coder(Protocol):
    """Writes one solution script for one expansion."""

    async def generate(self, request: CodeRequest) -> CodeResponse: ...

    async def wait_available(self) -> None:
        """Return when `generate` may be tried again after it reported its model down."""
        ...
