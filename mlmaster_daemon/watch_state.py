"""What the live view of a followed task knows: a `WatchState` folded from the API's events
and snapshots (task, nodes, slots), and the estimates drawn from it (elapsed time, ETA).

Nothing here trusts a payload's shape: a field of the wrong type is ignored, text is cut short
and stripped of control characters (an error message may hold terminal escapes).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any

TERMINAL = frozenset({"finished", "cancelled", "failed"})
IN_FLIGHT = frozenset({"pending", "generating", "ready", "running", "evaluating"})
NODE_DONE = frozenset({"done", "buggy", "failed"})
# Node states the plain mode prints a line for.
SHOWN_NODE_STATES = frozenset({"running", "done", "buggy", "failed"})
RECENT_LINES = 3
MAX_TEXT = 300


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def number(value: object) -> float | None:
    """`value` as a float when it is a JSON number one can hold, else None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        return float(value)
    except OverflowError:
        return None


def clean(value: object, limit: int = MAX_TEXT) -> str | None:
    """`value`'s first line, at most `limit` characters, control characters replaced."""
    if not isinstance(value, str):
        return None
    first = value.strip().split("\n", 1)[0][:limit]
    return "".join(c if c.isprintable() else " " for c in first)


def holdout_summary(holdout: object) -> str | None:
    """The task's hidden holdout in words ("43 rows (10%), never seen by the search" or
    "off (why)"), or None when the task says nothing of it (not started, or older)."""
    if not isinstance(holdout, dict):
        return None
    if holdout.get("state") != "on":
        return f"off ({clean(holdout.get('reason')) or 'no reason given'})"
    rows, fraction = _int(holdout.get("rows")), number(holdout.get("fraction"))
    share = "" if fraction is None else f" ({fraction * 100:.3g}%)"
    text = f"{'?' if rows is None else rows} rows{share}, never seen by the search"
    warning = clean(holdout.get("warning"))
    return f"{text}; warning: {warning}" if warning else text


def selection_summary(selection: object) -> str | None:
    """Why the final submission is what it is, in words, or None before it is chosen."""
    if not isinstance(selection, dict) or _int(selection.get("node_id")) is None:
        return None
    rule = clean(selection.get("rule"), 20) or "?"
    text = f"node {selection['node_id']} by the {rule} rule"
    reason = clean(selection.get("reason"))
    if reason:
        text += f": {reason}"
    ensemble = selection.get("ensemble")
    if isinstance(ensemble, dict):
        members = ensemble.get("members")
        names = (", ".join(str(m) for m in members[:16] if _int(m) is not None)
                 if isinstance(members, list) else "")
        if ensemble.get("kept") is True:
            method = clean(ensemble.get("method"), 20) or "average"
            text += f"; ensemble kept (the {method} of nodes {names})"
        else:
            text += "; no ensemble"
        why = clean(ensemble.get("reason"))
        if why:
            text += f": {why}"
    return text


def worth_a_line(event: dict[str, Any]) -> bool:
    """Whether the plain mode prints a line for `event`: a node running or ending, a new
    best, a task's state."""
    kind = event.get("type")
    return ((kind == "node.state" and event.get("state") in SHOWN_NODE_STATES)
            or kind in ("task.best", "task.state"))


@dataclass(frozen=True)
class Progress:
    """An event worth a line, and what the line shows with it."""

    event: dict[str, Any]
    best: dict[str, Any] | None
    steps: int | None


@dataclass
class NodeRow:
    id: int
    parent_id: int | None = None
    operator: str = "?"
    status: str = "?"
    metric: float | None = None
    # Its score on the task's hidden holdout (None: not scored, or no holdout).
    holdout_metric: float | None = None
    visits: int | None = None
    picked_by: str | None = None
    error: str | None = None
    # A crossover's other parents.
    also_from: tuple[int, ...] = ()


@dataclass
class WatchState:
    """What the view knows of one task; the `apply_*` functions fold payloads into it."""

    task_id: str
    name: str = ""
    state: str = "unknown"
    error: str | None = None
    policy: str = ""
    metric_name: str = ""
    lower_is_better: bool | None = None
    steps: int | None = None
    nodes_done: int = 0
    time_limit_s: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    best_node: int | None = None
    best_metric: float | None = None
    tokens: int = 0
    cost: float = 0.0
    calls: int = 0
    max_tokens: int = 0
    max_cost: float = 0.0
    slot_kind: str = "cpu"
    slots_total: int | None = None
    slots_ours: int = 0
    slots_busy: int = 0
    notice: str | None = None
    # The holdout's state as one line (holdout_summary), and the final choice's.
    holdout: str | None = None
    selection: str | None = None
    nodes: dict[int, NodeRow] = field(default_factory=dict)
    # The latest events worth a line, with the best and the steps as they were then.
    recent: deque[Progress] = field(default_factory=lambda: deque(maxlen=RECENT_LINES))


def _merge_node(state: WatchState, node_id: int, payload: dict[str, Any], status_key: str) -> None:
    row = state.nodes.setdefault(node_id, NodeRow(node_id))
    if "parent_id" in payload:
        parent = _int(payload["parent_id"])
        row.parent_id = parent if parent != node_id else None
    row.operator = clean(payload.get("operator"), 20) or row.operator
    status = clean(payload.get(status_key), 20)
    # A node's end is final: a snapshot read before it cannot take it back.
    if status and not (row.status in NODE_DONE and status not in NODE_DONE):
        row.status = status
    if "metric" in payload:
        row.metric = number(payload["metric"]) if payload["metric"] is not None else None
    if "holdout_metric" in payload:
        row.holdout_metric = number(payload["holdout_metric"])
    row.visits = _int(payload.get("visits")) if "visits" in payload else row.visits
    row.picked_by = clean(payload.get("picked_by"), 20) or row.picked_by
    row.error = clean(payload.get("error")) or row.error
    others = payload.get("parent_ids")
    if isinstance(others, list):
        row.also_from = tuple(p for p in others[1:16] if _int(p) is not None)


def apply_event(state: WatchState, event: object) -> None:
    """Fold one `/v1/events` line into `state`; anything unexpected is skipped."""
    if not isinstance(event, dict):
        return
    kind = event.get("type")
    if kind == "node.state" and _int(event.get("node_id")) is not None:
        _merge_node(state, event["node_id"], event, "state")
        state.nodes_done = max(state.nodes_done, _int(event.get("nodes_done")) or 0)
    elif kind == "task.best" and _int(event.get("node_id")) is not None:
        state.best_node = event["node_id"]
        state.best_metric = number(event.get("metric"))
    elif kind == "task.state" and clean(event.get("state"), 20):
        state.state = clean(event["state"], 20) or state.state
        state.error = clean(event.get("error"))
    else:
        return
    if worth_a_line(event):
        best = (None if state.best_node is None
                else {"node_id": state.best_node, "metric": state.best_metric})
        state.recent.append(Progress(event, best, state.steps))


def apply_task(state: WatchState, task: object) -> None:
    """Fold a `GET /v1/tasks/{id}` answer into `state`."""
    if not isinstance(task, dict):
        return
    state.name = clean(task.get("name"), 60) or state.name
    if not (state.state in TERMINAL and task.get("state") not in TERMINAL):
        state.state = clean(task.get("state"), 20) or state.state
        state.error = clean(task.get("error"))
    state.policy = clean(task.get("policy"), 20) or state.policy
    state.metric_name = clean(task.get("metric"), 40) or state.metric_name
    lower = task.get("lower_is_better")
    state.lower_is_better = lower if isinstance(lower, bool) else state.lower_is_better
    state.nodes_done = max(state.nodes_done, _int(task.get("nodes_done")) or 0)
    steps = _int(task.get("steps"))
    state.steps = steps if steps is not None and steps > 0 else state.steps
    for key in ("time_limit_s", "started_at", "finished_at"):
        value = number(task.get(key))
        if value is not None and math.isfinite(value):
            setattr(state, key, value)
    best = task.get("best")
    if isinstance(best, dict) and _int(best.get("node_id")) is not None:
        state.best_node, state.best_metric = best["node_id"], number(best.get("metric"))
    usage = task.get("usage")
    if isinstance(usage, dict):
        state.tokens = _int(usage.get("total_tokens")) or 0
        state.cost = number(usage.get("cost")) or 0.0
        state.calls = _int(usage.get("calls")) or 0
    budget = task.get("budget")
    if isinstance(budget, dict):
        state.max_tokens = _int(budget.get("max_tokens")) or 0
        state.max_cost = number(budget.get("max_cost")) or 0.0
    state.holdout = holdout_summary(task.get("holdout")) or state.holdout
    state.selection = selection_summary(task.get("selection")) or state.selection


# The keys of a node that `apply_nodes` reads: a snapshot asks the API for these only.
NODE_KEYS = ("id", "parent_id", "parent_ids", "operator", "status", "metric", "holdout_metric",
             "visits", "picked_by", "error")


def apply_nodes(state: WatchState, nodes: object) -> None:
    """Fold a `GET /v1/tasks/{id}/nodes` list into `state`."""
    for node in nodes if isinstance(nodes, list) else []:
        if isinstance(node, dict) and _int(node.get("id")) is not None:
            _merge_node(state, node["id"], node, "status")


def apply_slots(state: WatchState, slots: object) -> None:
    """Fold a `GET /v1/slots` answer into `state`: slots in all, busy, and held by the task."""
    if not isinstance(slots, dict) or not isinstance(slots.get("slots"), list):
        return
    rows = [s for s in slots["slots"] if isinstance(s, dict)]
    state.slot_kind = "gpu" if any(s.get("gpu_uuid") for s in rows) else "cpu"
    state.slots_total = len(rows)
    state.slots_busy = sum(1 for s in rows if s.get("busy") is True)
    state.slots_ours = sum(1 for s in rows if s.get("busy") is True
                           and s.get("task_id") == state.task_id)


def elapsed_s(state: WatchState, now: float) -> float | None:
    """Seconds since the task started (to its end once it ended); None before it starts."""
    if state.started_at is None:
        return None
    end = state.finished_at if state.finished_at is not None else now
    return max(end - state.started_at, 0.0)


@dataclass(frozen=True)
class Estimate:
    """Seconds left, and what bounds them: "steps" or "time limit"."""

    seconds: float
    bound: str


def estimate(state: WatchState, now: float) -> Estimate | None:
    """The time left: the steps not yet done at the pace so far (elapsed seconds per node
    done), or the time left before the time limit, whichever comes first; None when neither
    is known or the task has ended."""
    elapsed = elapsed_s(state, now)
    if elapsed is None or state.state in TERMINAL:
        return None
    options: list[Estimate] = []
    if state.time_limit_s:
        options.append(Estimate(max(state.time_limit_s - elapsed, 0.0), "time limit"))
    if state.steps and state.nodes_done > 0 and elapsed > 0:
        left = max(state.steps - state.nodes_done, 0)
        options.append(Estimate(left * elapsed / state.nodes_done, "steps"))
    return min(options, key=lambda e: e.seconds) if options else None
