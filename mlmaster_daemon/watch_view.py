"""The live view of a followed task drawn from a `WatchState` (see watch_state.py): `render`
is a pure function of the state and the time, so tests render it to a string; and the line per
event that the plain mode prints."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Any

from rich.console import Group, RenderableType
from rich.text import Text

from mlmaster_daemon.watch_state import (
    IN_FLIGHT,
    NodeRow,
    WatchState,
    clean,
    elapsed_s,
    estimate,
    number,
    worth_a_line,
)

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
    if not worth_a_line(event):
        return None
    if kind == "node.state":
        best_text = "none yet" if best is None else (
            f"{format_metric(number(best.get('metric')))} (node {best.get('node_id')})")
        outcome = str(event["state"])
        if outcome == "done":
            outcome = f"done    metric={format_metric(number(event.get('metric')))}"
            if number(event.get("holdout_metric")) is not None:
                outcome += f" holdout={format_metric(number(event.get('holdout_metric')))}"
        elif outcome in ("buggy", "failed") and event.get("error"):
            outcome = f"{outcome:<7} {str(event['error'])[:70]}"
        out_of = steps if steps is not None else event.get("nodes_total", 0)
        return (f"[{event.get('nodes_done', 0)!s:>3}/{out_of!s:<3} done] "
                f"node {event.get('node_id')!s:<3} {event.get('operator')!s:<7} {outcome}  "
                f"| best {best_text}")
    if kind == "task.best":
        metric = format_metric(number(event.get("metric")))
        return f"           new best: node {event.get('node_id')} metric={metric}"
    if kind == "task.state":
        suffix = f" ({event['error']})" if event.get("error") else ""
        return f"task {event.get('task_id')} is {event.get('state')}{suffix}"
    return None


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
    if row.holdout_metric is not None:
        label.append(f"| ho {format_metric(row.holdout_metric)} ", style="cyan")
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
    for label, said in (("holdout", state.holdout), ("final", state.selection)):
        if said:
            lines.append(Text(f"{label}: {said}", no_wrap=True, overflow="ellipsis"))
    for note, style in ((state.error, "red"), (state.notice, "yellow")):
        if note:
            lines.append(Text(note, style=style, no_wrap=True, overflow="ellipsis"))
    return lines


def render(state: WatchState, now: float, height: int, width: int) -> RenderableType:
    """The whole view for a `width` x `height` terminal: the header, the tree cut to the
    lines left, and the latest events."""
    header = header_lines(state, now)
    recent = [Text(clean(progress_line(p.event, p.best, p.steps), 200) or "", style="dim",
                   no_wrap=True, overflow="ellipsis") for p in state.recent]
    # One line is kept free: a frame as tall as the terminal scrolls it. On a short terminal
    # the tree goes before the latest events.
    rows = height - len(header) - len(recent) - 2
    if rows < 4:
        rows, recent = rows + len(recent), []
    return Group(*header, *tree_lines(state, rows, width), *recent)
