"""The seams between the search and whatever writes or reviews code: `Coder` (the offline coder
or a model) and `Reviewer` (a model that judges runs and summarises phases)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from mlmaster_daemon.models import CallRecord, Operator
from mlmaster_daemon.search.memory import MemoryItem
from mlmaster_daemon.tasks.spec import TaskSpec


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
    # The task's validation plan, the same for every node so that nodes are compared on the
    # same rows: `cv_folds`-fold cross-validation, StratifiedKFold (classification) or KFold
    # with shuffle=True and random_state=cv_seed over the labelled rows in file order;
    # cv_folds < 2 means one 80/20 split with that seed. Scripts write the per-fold scores as
    # `fold_metrics` in metrics.json besides `validation_metric`.
    cv_folds: int = 5
    cv_seed: int = 0
    # The most this node's script may run (seconds), when known: scripts plan their work to
    # end well inside it.
    node_timeout_s: float | None = None


@dataclass(frozen=True)
class CodeResponse:
    plan: str
    code: str
    summary: str
    # The model calls that produced this code (none for the offline coder).
    calls: tuple[CallRecord, ...] = ()


@dataclass(frozen=True)
class JudgeVerdict:
    """The judge's reading of one run. It never carries a metric: the harness measures that."""

    is_bug: bool
    analysis: str
    summary: str


class Coder(Protocol):
    """Writes one solution script for one expansion."""

    async def generate(self, request: CodeRequest) -> CodeResponse: ...

    async def wait_available(self) -> None:
        """Return when `generate` may be tried again after it reported its model down."""
        ...


class Reviewer(Protocol):
    """Reads what a run did, and what a phase of the search taught."""

    @property
    def judges(self) -> bool:
        """Whether `judge` can give verdicts (a feedback model is configured)."""
        ...

    async def judge(self, task: TaskSpec, code: str, output_tail: str,
                    harness_error: str | None,
                    ) -> tuple[JudgeVerdict | None, Sequence[CallRecord]]:
        """A verdict on one run (None when none could be had) and the calls it took."""
        ...

    async def summarise(self, entries_text: str, task: TaskSpec,
                        ) -> tuple[str | None, Sequence[CallRecord]]:
        """A phase summary for the memory hierarchy (None when none could be had)."""
        ...
