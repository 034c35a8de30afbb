"""The live view of a followed task: a `WatchState` built from the API's events and snapshots,
and `render`, a pure function of that state and the time, so tests render it to a string.

Nothing here trusts a payload's shape: a field of the wrong type is ignored, text is cut short
and stripped of control characters (an error message may hold terminal escapes).
"""

from __future__ import annotations

import math
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

from rich.console import Group, RenderableType
from rich.text import Text

TERMINAL = frozenset({"finished", "cancelled", "failed"})
IN_FLIGHT = frozenset({"pending", "generating", "ready", "running", "evaluating"})
NODE_DONE = frozenset({"done", "buggy", "failed"})
RECENT_LINES = 3
MAX_TEXT = 300
STATUS_STYLE = {"done": "green", "buggy": "red", "failed": "bold red", "running": "yellow",
                "evaluating": "yellow", "generating": "cyan", "ready": "cyan", "pending": "dim"}
TASK_STYLE = {"finished": "bold green", "failed": "bold red", "cancelled": "bold yellow",
              "running": "bold cyan", "paused": "bold yellow", "queued": "bold"}
# The tree's top: nodes without a (known) parent hang from it.
TOP = -1


def format_metric(value: float | None) -> str:
    return "-" if value is None else f"{value:.5f}"


def progress_line(event: dict[str, Any], best: dict[str, Any] | None,
                  steps: int | None = None) -> str | None:
    """One human line for an event worth showing, or None (the plain mode prints these). The
    counter is nodes finished out of the task's step budget `steps` (the nodes created so far
    when it is not known)."""
    kind = event.get("type")
    if kind == "node.state" and event.get("state") in ("running", "done", "buggy", "failed"):
        best_text = "none yet" if best is None else (
            f"{format_metric(_number(best.get('metric')))} (node {best.get('node_id')})")
        outcome = str(event["state"])
        if outcome == "done":
            outcome = f"done    metric={format_metric(_number(event.get('metric')))}"
        elif outcome in ("buggy", "failed") and event.get("error"):
            outcome = f"{outcome:<7} {str(event['error'])[:70]}"
        out_of = steps if steps is not None else event.get("nodes_total", 0)
        return (f"[{event.get('nodes_done', 0)!s:>3}/{out_of!s:<3} done] "
                f"node {event.get('node_id')!s:<3} {event.get('operator')!s:<7} {outcome}  "
                f"| best {best_text}")
    if kind == "task.best":
        metric = format_metric(_number(event.get("metric")))
        return f"           new best: node {event.get('node_id')} metric={metric}"
    if kind == "task.state":
        suffix = f" ({event['error']})" if event.get("error") else ""
        return f"task {event.get('task_id')} is {event.get('state')}{suffix}"
    return None


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _number(value: object) -> float | None:
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


@dataclass
class NodeRow:
    id: int
    parent_id: int | None = None
    operator: str = "?"
    status: str = "?"
    metric: float | None = None
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
    nodes: dict[int, NodeRow] = field(default_factory=dict)
    recent: deque[str] = field(default_factory=lambda: deque(maxlen=RECENT_LINES))


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
        row.metric = _number(payload["metric"]) if payload["metric"] is not None else None
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
        state.best_metric = _number(event.get("metric"))
    elif kind == "task.state" and clean(event.get("state"), 20):
        state.state = clean(event["state"], 20) or state.state
        state.error = clean(event.get("error"))
    else:
        return
    best = (None if state.best_node is None
            else {"node_id": state.best_node, "metric": state.best_metric})
    line = progress_line(event, best, state.steps)
    if line:
        state.recent.append(clean(line, 200) or "")


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
        value = _number(task.get(key))
        if value is not None and math.isfinite(value):
            setattr(state, key, value)
    best = task.get("best")
    if isinstance(best, dict) and _int(best.get("node_id")) is not None:
        state.best_node, state.best_metric = best["node_id"], _number(best.get("metric"))
    usage = task.get("usage")
    if isinstance(usage, dict):
        state.tokens = _int(usage.get("total_tokens")) or 0
        state.cost = _number(usage.get("cost")) or 0.0
        state.calls = _int(usage.get("calls")) or 0
    budget = task.get("budget")
    if isinstance(budget, dict):
        state.max_tokens = _int(budget.get("max_tokens")) or 0
        state.max_cost = _number(budget.get("max_cost")) or 0.0


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


def duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    whole = int(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


@dataclass(frozen=True)
class Forest:
    """The nodes' tree edges, made safe: a parent that is unknown, the node itself or part of
    a cycle counts as none, so every node hangs below TOP exactly once."""

    parent: dict[int, int]
    # Every node once, parents before their children.
    order: list[int]

    @classmethod
    def of(cls, nodes: dict[int, NodeRow]) -> Forest:
        parent = {i: (row.parent_id if row.parent_id in nodes else TOP)
                  for i, row in nodes.items()}
        below: dict[int, list[int]] = {}
        for i in sorted(nodes):
            below.setdefault(parent[i], []).append(i)
        order: list[int] = []
        seen: set[int] = set()
        for start in [TOP, *sorted(nodes)]:
            if start != TOP and start in seen:
                continue
            if start != TOP:
                parent[start] = TOP  # a cycle's member: cut it loose
            stack = [start]
            while stack:
                current = stack.pop()
                if current != TOP:
                    if current in seen:
                        continue
                    seen.add(current)
                    order.append(current)
                stack.extend(reversed([c for c in below.get(current, []) if c not in seen]))
        return cls(parent, order)

    def ancestors(self, node_id: int) -> list[int]:
        """From the node's parent up to its top-level ancestor."""
        chain: list[int] = []
        current = self.parent.get(node_id, TOP)
        while current != TOP:
            chain.append(current)
            current = self.parent[current]
        return chain

    def hidden_under(self, shown: set[int]) -> dict[int, list[int]]:
        """The nodes not in `shown`, grouped by their nearest shown ancestor (or TOP)."""
        anchor: dict[int, int] = {}
        groups: dict[int, list[int]] = {}
        for i in self.order:
            if i in shown:
                anchor[i] = i
                continue
            up = self.parent[i]
            anchor[i] = TOP if up == TOP else anchor[up]
            groups.setdefault(anchor[i], []).append(i)
        return groups


def visible_nodes(state: WatchState, forest: Forest, rows: int) -> set[int]:
    """The nodes that fit in `rows` lines, each hidden group taking one line of its own: the
    best node and the root of its branch first, then the nodes in flight (newest first), the
    best node's path upwards, the parents of those in flight, then the newest nodes."""
    if len(state.nodes) <= rows:
        return set(state.nodes)
    best = [state.best_node] if state.best_node in state.nodes else []
    flying = sorted((i for i, n in state.nodes.items() if n.status in IN_FLIGHT), reverse=True)
    path = [a for b in best for a in forest.ancestors(b)]
    wanted = [*best, *path[-1:], *flying, *path,
              *(forest.parent[i] for i in flying if forest.parent[i] != TOP),
              *sorted(state.nodes, reverse=True)]
    shown: set[int] = set()
    for node_id in wanted:
        if node_id in shown:
            continue
        trial = shown | {node_id}
        if len(trial) + len(forest.hidden_under(trial)) > rows:
            break
        shown = trial
    return shown


def _node_label(state: WatchState, row: NodeRow, skipped: int) -> Text:
    label = Text(no_wrap=True, overflow="ellipsis")
    if skipped:
        label.append(f"⋯{skipped} ", style="dim")
    label.append(f"#{row.id} ", style="bold")
    label.append(f"{row.operator:<10}", style="magenta")
    label.append(f"{row.status:<11}", style=STATUS_STYLE.get(row.status, ""))
    if row.metric is not None:
        label.append(f"{format_metric(row.metric)} ",
                     style="bold green" if row.id == state.best_node else "")
    if row.visits:
        label.append(f"visits {row.visits} ", style="dim")
    if row.picked_by:
        label.append(f"[{row.picked_by}] ", style="dim")
    if row.also_from:
        label.append("with " + ", ".join(f"#{p}" for p in row.also_from) + " ", style="dim")
    if row.id == state.best_node:
        label.append("★ best ", style="bold yellow")
    if row.error and row.status in ("buggy", "failed"):
        label.append(row.error[:80], style="red dim")
    return label


def _hidden_label(state: WatchState, hidden: list[int]) -> Text:
    counts = Counter(state.nodes[i].status for i in hidden)
    parts = ", ".join(f"{n} {status}" for status, n in counts.most_common())
    return Text(f"… {len(hidden)} more node{'' if len(hidden) == 1 else 's'} ({parts})",
                style="dim", no_wrap=True, overflow="ellipsis")


def tree_lines(state: WatchState, rows: int, width: int) -> list[Text]:
    """The tree as lines, at most `rows` of them below its top line when it has to be cut
    (see visible_nodes); a node whose parent is hidden shows how many hidden nodes lie
    between them (⋯N)."""
    forest = Forest.of(state.nodes)
    shown = visible_nodes(state, forest, max(rows, 1))
    hidden = forest.hidden_under(shown)
    kids: dict[int, list[int]] = {}
    for i in forest.order:
        if i in shown:
            up = next((a for a in forest.ancestors(i) if a in shown), TOP)
            kids.setdefault(up, []).append(i)
    for group in kids.values():
        group.sort()
    top = Text(no_wrap=True, overflow="ellipsis")
    top.append(f"task {state.task_id}", style="bold")
    if state.name:
        top.append(f" {state.name}")
    lines = [top]
    # Guides deeper than half the width are cut to their last levels.
    max_prefix = max(width // 2, 8)

    def walk(anchor: int, prefix: str) -> None:
        below: list[int | None] = [*kids.get(anchor, []), *([None] if anchor in hidden else [])]
        for n, child in enumerate(below):
            last = n == len(below) - 1
            guide = prefix + ("└─ " if last else "├─ ")
            if len(guide) > max_prefix:
                guide = "…" + guide[-(max_prefix - 1):]
            line = Text(no_wrap=True, overflow="ellipsis")
            line.append(guide, style="dim")
            if child is None:
                line.append_text(_hidden_label(state, hidden[anchor]))
                lines.append(line)
                continue
            between = forest.ancestors(child)
            skipped = next((k for k, a in enumerate(between) if a in shown), len(between))
            line.append_text(_node_label(state, state.nodes[child], skipped))
            lines.append(line)
            walk(child, prefix + ("   " if last else "│  "))

    walk(TOP, "")
    return lines


def _budget_text(used: str, cap: str | None) -> str:
    return used if cap is None else f"{used} of {cap}"


def header_lines(state: WatchState, now: float) -> list[Text]:
    """The lines above the tree: task, progress and time, best and slots, picks, usage."""
    title = Text(no_wrap=True, overflow="ellipsis")
    title.append("mlmaster watch ", style="bold")
    title.append(f"{state.task_id} ")
    title.append(state.state, style=TASK_STYLE.get(state.state, "bold"))
    if state.policy:
        title.append(f" · policy {state.policy}")
    if state.metric_name:
        better = {True: "lower", False: "higher", None: "?"}[state.lower_is_better]
        title.append(f" · {state.metric_name} ({better} is better)")

    progress = Text(no_wrap=True, overflow="ellipsis")
    steps = "?" if state.steps is None else str(state.steps)
    progress.append(f"[{state.nodes_done:>3}/{steps:<3} done]", style="bold")
    progress.append(f" · {len(state.nodes)} nodes in the tree")
    took = elapsed_s(state, now)
    limit = None if state.time_limit_s is None else duration(state.time_limit_s)
    progress.append(" · elapsed " + ("not started" if took is None
                                     else _budget_text(duration(took), limit)))
    eta = estimate(state, now)
    if eta is not None:
        progress.append(f" · ETA ~{duration(eta.seconds)} ({eta.bound})", style="cyan")

    best = Text(no_wrap=True, overflow="ellipsis")
    if state.best_node is None:
        best.append("best: none yet")
    else:
        best.append("best ")
        best.append(format_metric(state.best_metric), style="bold green")
        best.append(f" (node {state.best_node})")
    if state.slots_total is not None:
        best.append(f" · slots {state.slots_ours} of {state.slots_total} in use by this task"
                    f" ({state.slot_kind}; {state.slots_busy} busy in all)")
    flying = sorted((n for n in state.nodes.values() if n.status in IN_FLIGHT),
                    key=lambda n: n.id)
    picks = ", ".join(
        f"#{n.id} {n.operator}" + ("" if n.parent_id is None else f" of #{n.parent_id}")
        + (f" ({n.picked_by})" if n.picked_by else "") + f" {n.status}" for n in flying)
    picks_line = Text(f"picks: {picks or 'none in flight'}", no_wrap=True, overflow="ellipsis")

    usage = Text(no_wrap=True, overflow="ellipsis")
    tokens_cap = f"{state.max_tokens:,}" if state.max_tokens else None
    cost_cap = f"${state.max_cost:.4f}" if state.max_cost else None
    usage.append(f"tokens {_budget_text(f'{state.tokens:,}', tokens_cap)} · cost "
                 f"{_budget_text(f'${state.cost:.4f}', cost_cap)} · {state.calls} model calls")
    lines = [title, progress, best, picks_line, usage]
    for note, style in ((state.error, "red"), (state.notice, "yellow")):
        if note:
            lines.append(Text(note, style=style, no_wrap=True, overflow="ellipsis"))
    return lines


def render(state: WatchState, now: float, height: int, width: int) -> RenderableType:
    """The whole view for a `width` x `height` terminal: the header, the tree cut to the
    lines left, and the latest events."""
    header = header_lines(state, now)
    recent = [Text(line, style="dim", no_wrap=True, overflow="ellipsis")
              for line in state.recent]
    # One line is kept free: a frame as tall as the terminal scrolls it.
    rows = height - len(header) - len(recent) - 2
    return Group(*header, *tree_lines(state, rows, width), *recent)
