"""Rows of the store as frozen dataclasses."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from mlmaster_daemon.models import CallRecord, NodeState, Operator, TaskState
from mlmaster_daemon.redact import redact
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
    # The hidden holdout: {"state": "on", "rows", "fraction", ...} or {"state": "off",
    # "reason"}; None until the task first starts (tasks/holdout.py, scheduler/holdout_stage.py).
    holdout: dict[str, Any] | None = None
    # The final selection: {"rule", "node_id", "reason", "ensemble"?}; None until chosen.
    selection: dict[str, Any] | None = None


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
    # Its score on the hidden holdout (working nodes of a task with one). Never shown to the
    # search or its prompts: it stays an honest estimate.
    holdout_metric: float | None = None

    def public(self) -> dict[str, Any]:
        """The fields the API lists for every node."""
        return {
            "id": self.id,
            "parent_id": self.parent_id,
            "parent_ids": list(self.parent_ids),
            "operator": self.operator.value,
            "status": self.state.value,
            "metric": self.metric,
            "holdout_metric": self.holdout_metric,
            "visits": self.visits,
            "value": self.value,
            "uct": self.uct,
            "picked_by": self.pick_reason,
            "summary": self.summary,
            "error": self.error,
        }


# What is kept of one call's prompt: the prompt builder caps each part well below this, so only
# a prompt nobody foresaw is cut.
MAX_PROMPT_CHARS = 256_000
PROMPT_CUT = "\n[... {} characters cut]"


@dataclass(frozen=True)
class PromptedCall(CallRecord):
    """A model call with the prompt it was sent, as `prompt_json` writes it ("" when not kept):
    the store keeps it with the call, and trajectory export reads it back."""

    prompt: str = ""

    def messages(self) -> list[dict[str, str]] | str | None:
        """The chat messages sent, the completion prompt sent, or None when not kept."""
        if not self.prompt:
            return None
        value = json.loads(self.prompt)
        if isinstance(value, str):
            return value
        return [{"role": str(m.get("role", "")), "content": str(m.get("content", ""))}
                for m in value if isinstance(m, dict)]


def prompt_json(prompt: list[dict[str, str]] | str) -> str:
    """`prompt` (chat messages or a completion prompt) as stored: redacted before it is
    serialised (a key inside JSON escapes would no longer match), each text cut so that all of
    them hold at most MAX_PROMPT_CHARS characters."""
    left = MAX_PROMPT_CHARS

    def bounded(text: str) -> str:
        nonlocal left
        text = redact(text)
        kept = text[:left]
        left -= len(kept)
        return kept if len(kept) == len(text) else kept + PROMPT_CUT.format(len(text) - len(kept))

    if isinstance(prompt, str):
        return json.dumps(bounded(prompt))
    return json.dumps([{"role": m.get("role", ""), "content": bounded(m.get("content", ""))}
                       for m in prompt])


def with_prompt(record: CallRecord, prompt: list[dict[str, str]] | str) -> PromptedCall:
    """`record` with the prompt it was sent, ready for the store."""
    return PromptedCall(**asdict(record), prompt=prompt_json(prompt))


def _nothing() -> None:
    return None


@dataclass(frozen=True)
class SavedSearch:
    """A task's search state as one node's commit saves it: the head whole (the policy without
    its tree's nodes, the open picks, the memory; all bounded in size) and of the tree only the
    node rows that changed since the last commit, and the ids of nodes that left it."""

    head: dict[str, Any]
    rows: dict[int, list[Any]] = field(default_factory=dict)
    dropped: list[int] = field(default_factory=list)
    # Called when the commit did not happen, so these rows count as unsaved again.
    unsaved: Callable[[], None] = _nothing

