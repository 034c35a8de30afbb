"""Selectively scoped memory: what earlier attempts taught, captured, bounded, scoped, rendered.

Follows ML-Master's per-operator scoping (draft sees sibling drafts, improve sees the parent and
its other children) and AIRA's ancestral memory for debug. Entries hold plan/summary text and
outcomes, never code; the parent's code and output reach the coder separately. Pure: no I/O.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from mlmaster_daemon.llm.coder import MemoryItem
from mlmaster_daemon.models import Operator
from mlmaster_daemon.search.tokens import TiktokenCounter, TokenCounter
from mlmaster_daemon.search.tree import ROOT, Tree

DEFAULT_BUDGET = 4096
DEFAULT_HEADER = "## Memory: what earlier attempts taught"
# A truncated entry shorter than this says too little to be worth its tokens.
MIN_FRAGMENT_TOKENS = 12
ELLIPSIS = "…"

_PATH = re.compile(r"(?:[a-z]:)?[\w.~-]*(?:[/\\][\w.~<>-]+)+")
_HEX = re.compile(r"0x[0-9a-f]+")
_NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?(?:e[-+]?\d+)?")
_SPACE = re.compile(r"\s+")
_EXCEPTION = re.compile(r"\b\w+(?:error|exception|warning|interrupt)\b")


def normalise(text: str) -> str:
    """Text reduced for comparison: lower case, paths/hex/numbers replaced, spaces collapsed."""
    out = text.lower()
    out = _PATH.sub("<path>", out)
    out = _HEX.sub("<hex>", out)
    out = _NUMBER.sub("<n>", out)
    return _SPACE.sub(" ", out).strip(" .:;")


def one_line(text: str) -> str:
    return _SPACE.sub(" ", text).strip()


@dataclass(frozen=True)
class MemoryEntry:
    """One finished node's lesson: its plan/summary text and outcome (never its code).

    `metric` is None when the node is buggy; `error` is its failure cause when known;
    `parent_metric` is the first parent's metric when the node was captured (None if none).
    """

    node_id: int
    operator: Operator
    parent_ids: tuple[int, ...]
    summary: str
    metric: float | None
    buggy: bool
    error: str | None = None
    phase: int = 0
    created: int = 0
    parent_metric: float | None = None

    @property
    def worked(self) -> bool:
        return not self.buggy and self.metric is not None

    def as_item(self) -> MemoryItem:
        """The coder's view of this entry."""
        return MemoryItem(self.node_id, self.operator, self.summary, self.metric, self.buggy)

    def to_state(self) -> dict[str, Any]:
        return {"node_id": self.node_id, "operator": self.operator.value,
                "parent_ids": list(self.parent_ids), "summary": self.summary,
                "metric": self.metric, "buggy": self.buggy, "error": self.error,
                "phase": self.phase, "created": self.created,
                "parent_metric": self.parent_metric}

    @classmethod
    def from_state(cls, raw: Mapping[str, Any]) -> MemoryEntry:
        return cls(int(raw["node_id"]), Operator(raw["operator"]), tuple(raw["parent_ids"]),
                   str(raw["summary"]), raw["metric"], bool(raw["buggy"]), raw.get("error"),
                   int(raw.get("phase", 0)), int(raw.get("created", 0)),
                   raw.get("parent_metric"))


def improved(metric: float, reference: float, lower_is_better: bool) -> float:
    """How much better `metric` is than `reference` (negative when worse)."""
    return reference - metric if lower_is_better else metric - reference


def best_first(entry: MemoryEntry, lower_is_better: bool) -> float:
    """A sort key that puts the best metric first and entries without one last."""
    if entry.metric is None or entry.buggy:
        return math.inf
    return entry.metric if lower_is_better else -entry.metric


def entry_value(entry: MemoryEntry, lower_is_better: bool) -> float:
    """The eviction score in [0, 1]; higher is kept longer.

    A first working node (no parent metric) scores 1. Another working node scores its relative
    change vs its parent, |delta| / max(|parent|, |metric|), times 10, capped at 1 (a 10%
    change saturates), halved when it made things worse. A failure scores 0.4 when its cause
    names an exception type and 0.25 otherwise.
    """
    if entry.worked and entry.metric is not None:
        if entry.parent_metric is None:
            return 1.0
        delta = improved(entry.metric, entry.parent_metric, lower_is_better)
        scale = max(abs(entry.parent_metric), abs(entry.metric), 1e-12)
        value = min(1.0, 10.0 * abs(delta) / scale)
        return value if delta >= 0 else value / 2
    cause = normalise(entry.error or "")
    return 0.4 if _EXCEPTION.search(cause) else 0.25


class Memory:
    """One task's captured insights, at most `cap` of them.

    `min_delta` is the smallest absolute metric change vs the parent that counts as an insight.
    """

    def __init__(self, cap: int = 50, min_delta: float = 1e-4) -> None:
        if cap < 1:
            raise ValueError("cap must be at least 1")
        self.cap = cap
        self.min_delta = min_delta
        self._entries: dict[int, MemoryEntry] = {}
        self._values: dict[int, float] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, node_id: object) -> bool:
        return node_id in self._entries

    @property
    def entries(self) -> list[MemoryEntry]:
        """Kept entries, oldest first."""
        return sorted(self._entries.values(), key=lambda e: (e.created, e.node_id))

    def get(self, node_id: int) -> MemoryEntry | None:
        return self._entries.get(node_id)

    def value(self, node_id: int) -> float:
        return self._values[node_id]

    def capture(self, entry: MemoryEntry, parent_metric: float | None,
                lower_is_better: bool) -> bool:
        """Keep `entry` if it is an insight; returns whether it is kept.

        Kept: a working node whose metric moved by at least `min_delta` from `parent_metric`
        (either way), or a working node with no parent metric (a first working draft, a fix);
        a buggy node whose non-empty failure cause is new (by normalised text).
        Dropped: anything else, a node already held, and a working node whose non-empty
        normalised summary matches a kept working entry. Above `cap`, the lowest `entry_value`
        is evicted (oldest first on ties), which may be the new entry itself.
        """
        if entry.node_id in self._entries:
            return False
        entry = replace(entry, parent_metric=parent_metric)
        kept = self._entries.values()
        if entry.worked and entry.metric is not None:
            if parent_metric is not None and abs(entry.metric - parent_metric) < self.min_delta:
                return False
            summary = normalise(entry.summary)
            if summary and any(e.worked and normalise(e.summary) == summary for e in kept):
                return False
        else:
            cause = normalise(entry.error or "")
            if not cause or any(not e.worked and normalise(e.error or "") == cause for e in kept):
                return False
        self._entries[entry.node_id] = entry
        self._values[entry.node_id] = entry_value(entry, lower_is_better)
        while len(self._entries) > self.cap:
            victim = min(self._entries.values(),
                         key=lambda e: (self._values[e.node_id], e.created, e.node_id))
            del self._entries[victim.node_id], self._values[victim.node_id]
        return entry.node_id in self._entries

    def scoped(self, operator: Operator, parent_ids: Sequence[int],
               tree: Tree) -> list[MemoryEntry]:
        """This operator's view of memory, most relevant first (see `scope`)."""
        return scope(self._entries, operator, parent_ids, tree)

    def to_state(self) -> dict[str, Any]:
        return {"cap": self.cap, "min_delta": self.min_delta,
                "entries": [e.to_state() for e in self.entries],
                "values": [self._values[e.node_id] for e in self.entries]}

    @classmethod
    def from_state(cls, raw: Mapping[str, Any]) -> Memory:
        memory = cls(int(raw["cap"]), float(raw["min_delta"]))
        for state, value in zip(raw["entries"], raw["values"], strict=True):
            entry = MemoryEntry.from_state(state)
            memory._entries[entry.node_id] = entry
            memory._values[entry.node_id] = float(value)
        return memory


def _working_then_newest(entries: Iterable[MemoryEntry]) -> list[MemoryEntry]:
    return sorted(entries, key=lambda e: (not e.worked, -e.created, -e.node_id))


def scope(by_id: Mapping[int, MemoryEntry], operator: Operator, parent_ids: Sequence[int],
          tree: Tree) -> list[MemoryEntry]:
    """The entries an operator may see for a node made from `parent_ids`, most relevant first.

    - draft: entries of ROOT's children (the sibling drafts): working ones first, newest first.
    - improve: the parent's entry, then its other children (working first, newest first).
    - debug: the parent, then each first parent back along consecutive debug steps, ending
      with the non-debug node whose bug started the chain (nearest first).
    - crossover: the first parent's entry, then the second's.
    Nodes with no entry (not captured, evicted, or pending) are skipped.
    """
    parents = [p for p in parent_ids if p in tree and p != ROOT]
    if operator is Operator.DRAFT:
        return _working_then_newest(by_id[c] for c in tree[ROOT].children if c in by_id)
    if not parents:
        return []
    first = parents[0]
    found: list[MemoryEntry] = []
    if operator is Operator.IMPROVE:
        found = [by_id[first]] if first in by_id else []
        found += _working_then_newest(by_id[c] for c in tree[first].children if c in by_id)
    elif operator is Operator.DEBUG:
        for node in tree.ancestors(first):
            if node.id == ROOT:
                break
            if node.id in by_id:
                found.append(by_id[node.id])
            if node.operator is not Operator.DEBUG:
                break
    else:
        found = [by_id[p] for p in parents[:2] if p in by_id]
    return list({e.node_id: e for e in found}.values())


def format_entry(entry: MemoryEntry) -> str:
    """One markdown bullet: node, operator, outcome, then the summary."""
    head = f"- Node {entry.node_id} ({entry.operator.value})"
    if entry.worked and entry.metric is not None:
        outcome = f"metric {entry.metric:.6g}"
        if entry.parent_metric is not None:
            outcome += f" (parent {entry.parent_metric:.6g})"
    else:
        outcome = "buggy" + (f", cause: {one_line(entry.error)}" if entry.error else "")
    summary = one_line(entry.summary)
    return f"{head}: {outcome}." + (f" {summary}" if summary else "")


def _join(blocks: Sequence[tuple[str, Sequence[str]]]) -> str:
    return "\n\n".join(header + "\n\n" + "\n".join(items) for header, items in blocks)


def _with(blocks: list[tuple[str, list[str]]], header: str, opened: bool,
          item: str) -> list[tuple[str, list[str]]]:
    """`blocks` plus `item`, under the open last section or under a new `header`."""
    if opened:
        return [*blocks[:-1], (header, [*blocks[-1][1], item])]
    return [*blocks, (header, [item])]


def render_sections(sections: Sequence[tuple[str, Sequence[str]]], budget_tokens: int,
                    counter: TokenCounter) -> str:
    """Headed markdown sections whose final text never counts over `budget_tokens`.

    Items are taken in the given order (sections first to last). An item that does not fit
    whole is skipped and later ones are still tried, unless at least MIN_FRAGMENT_TOKENS of it
    fit: then it is cut, marked with an ellipsis, and rendering stops there. A header appears
    only with at least one of its items. Returns "" when nothing fits.
    """
    blocks: list[tuple[str, list[str]]] = []
    for header, items in sections:
        opened = False
        for item in (i for i in items if i.strip()):
            trial = _with(blocks, header, opened, item)
            if counter.count(_join(trial)) <= budget_tokens:
                blocks, opened = trial, True
                continue
            cut = _cut_to_fit(blocks, header, opened, item, budget_tokens, counter)
            if cut is not None:
                return cut
    return _join(blocks)


def _cut_to_fit(blocks: list[tuple[str, list[str]]], header: str, opened: bool, item: str,
                budget_tokens: int, counter: TokenCounter) -> str | None:
    """The text with `item` cut to fill the budget, or None when too little of it would fit."""
    room = budget_tokens - counter.count(_join(_with(blocks, header, opened, ELLIPSIS)))
    while room >= MIN_FRAGMENT_TOKENS:
        fragment = counter.truncate(item, room).rstrip() + ELLIPSIS
        text = _join(_with(blocks, header, opened, fragment))
        over = counter.count(text) - budget_tokens
        if over <= 0:
            return text
        room -= over
    return None


def render(entries: Sequence[MemoryEntry], budget_tokens: int = DEFAULT_BUDGET,
           counter: TokenCounter | None = None, header: str = DEFAULT_HEADER) -> str:
    """A markdown memory section in the given order (pass `scoped` output: most relevant first).

    Its token count by `counter` (cl100k offline by default) never exceeds `budget_tokens`;
    whole entries that do not fit are dropped and the last may be cut; "" when none fits.
    """
    if not entries or budget_tokens <= 0:
        return ""
    return render_sections([(header, [format_entry(e) for e in entries])], budget_tokens,
                           counter or TiktokenCounter())
