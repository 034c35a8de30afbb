"""Selectively scoped memory: what earlier attempts taught, as entries scoped per operator and
rendered within a token budget (the hierarchical cache in `hcc.py` holds them).

Follows ML-Master's per-operator scoping (draft sees sibling drafts, improve sees the parent and
its other children) and AIRA's ancestral memory for debug. Entries hold plan/summary text and
outcomes, never code; the parent's code and output reach the coder separately. Pure: no I/O.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from mlmaster_daemon.models import Operator
from mlmaster_daemon.search.tokens import TokenCounter
from mlmaster_daemon.search.tree import ROOT, Tree

# A truncated entry shorter than this says too little to be worth its tokens.
MIN_FRAGMENT_TOKENS = 12
ELLIPSIS = "…"

_PATH = re.compile(r"(?:[a-z]:)?[\w.~-]*(?:[/\\][\w.~<>-]+)+")
_HEX = re.compile(r"0x[0-9a-f]+")
_NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?(?:e[-+]?\d+)?")
_SPACE = re.compile(r"\s+")


@dataclass(frozen=True)
class MemoryItem:
    """What one earlier attempt taught, as a coder sees it: its plan summary and outcome, never
    its code."""

    node_id: int
    operator: Operator
    summary: str
    metric: float | None
    buggy: bool


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


# Tokens the sum of a text's parts' counts may be off from the whole's count (merges across a
# seam), within which `render_sections` counts the whole text.
SEAM_SLACK = 8


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

    Each item is counted once: the text's count is kept as the sum of its parts' counts,
    which a tokenizer's merges across a seam can only make larger than the whole's by a
    little, so only an item within `SEAM_SLACK` tokens of the budget is decided by counting
    the whole text. (Counting the whole text for every item made a prompt's memory section
    cost quadratic time: 0.1 s of the event loop per prompt on a long task.) Should the
    sum ever undercount the final text, the exact way decides instead.
    """
    blocks: list[tuple[str, list[str]]] = []
    used = 0
    for header, items in sections:
        opened = False
        # Once a section has too little room left for a fragment it never has again: the
        # text only grows.
        fragments = True
        for item in (i for i in items if i.strip()):
            cost = counter.count(item) + 1 + (0 if opened else counter.count(header) + 2)
            trial = _with(blocks, header, opened, item)
            if used + cost <= budget_tokens - SEAM_SLACK:
                blocks, opened, used = trial, True, used + cost
                continue
            if used + cost <= budget_tokens + SEAM_SLACK:
                exact = counter.count(_join(trial))
                if exact <= budget_tokens:
                    blocks, opened, used = trial, True, exact
                    continue
            if not fragments or budget_tokens - used < MIN_FRAGMENT_TOKENS - SEAM_SLACK:
                continue  # no fragment fits: later, smaller items still may
            cut = _cut_to_fit(blocks, header, opened, item, budget_tokens, counter)
            if cut is not None:
                return cut if counter.count(cut) <= budget_tokens else _render_exact(
                    sections, budget_tokens, counter)
            fragments = False
    text = _join(blocks)
    if counter.count(text) > budget_tokens:
        return _render_exact(sections, budget_tokens, counter)
    return text


def _render_exact(sections: Sequence[tuple[str, Sequence[str]]], budget_tokens: int,
                  counter: TokenCounter) -> str:
    """`render_sections`, counting the whole text at each item."""
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

