"""The seam between the scheduler and whatever writes code: the offline coder or an LLM pool."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, cast

from mlmaster_daemon.errors import MlmasterError
from mlmaster_daemon.models import Operator
from mlmaster_daemon.tasks.spec import TaskSpec

if TYPE_CHECKING:
    from mlmaster_daemon.llm.llm_coder import LlmCoder


class LlmError(MlmasterError):
    """The model refused or could not answer usefully; the node fails with this reason."""

    code = "llm_error"
    status = 502


class EndpointUnavailable(LlmError):
    """The endpoint kept failing after retries; the task waits for it to come back."""

    code = "llm_unavailable"
    status = 503


def as_llm_coder(coder: object) -> LlmCoder | None:
    """`coder` when it is the model-backed coder (judge, summaries, endpoints), else None.
    Asked without importing the OpenAI client: an offline daemon never loads it."""
    module = sys.modules.get("mlmaster_daemon.llm.llm_coder")
    if module is None or not isinstance(coder, module.LlmCoder):
        return None
    return cast("LlmCoder", coder)


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


class NoCodeInAnswer(LlmError):
    """No code after every retry; carries the calls so they are still accounted."""

    code = "llm_no_code"

    def __init__(self, message: str, calls: tuple[CallRecord, ...]):
        super().__init__(message)
        self.calls = calls
