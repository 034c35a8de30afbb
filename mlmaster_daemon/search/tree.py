"""The search tree and its UCT selection with virtual loss. Pure: no I/O, no clock, no asyncio.

Rules (ML-Master's, in simple form):
- The virtual root takes up to `num_drafts` draft children.
- A working node takes up to `num_improves` improve children.
- A buggy node takes one debug child, unless its chain already holds `max_debug_depth`
  consecutive debugs, in which case it is terminal.
- Selection walks down from the root: it expands the first node that still has room, otherwise
  it descends to the child with the best UCT score among children whose subtree still has room.
- A pick reserves its slot at once (the pending child counts toward the limits) and adds one
  virtual visit with no reward along its path, so k picks in a row spread over the tree.
  `complete` or `abort` releases it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import StrEnum

from mlmaster_daemon.models import Operator
from mlmaster_daemon.search.reward import reward

ROOT = 0


class Outcome(StrEnum):
    PENDING = "pending"
    GOOD = "good"
    BUGGY = "buggy"


@dataclass(frozen=True)
class Limits:
    num_drafts: int = 5
    num_improves: int = 3
    max_debug_depth: int = 3
    exploration_constant: float = 1.414


@dataclass(frozen=True)
class Pick:
    """One expansion to make: apply `operator` to `parent_id` (ROOT for a draft)."""

    parent_id: int
    operator: Operator
    path: tuple[int, ...]


@dataclass
class TreeNode:
    id: int
    parent_id: int | None
    operator: Operator | None
    outcome: Outcome = Outcome.PENDING
    metric: float | None = None
    children: list[int] = field(default_factory=list)
    visits: int = 0
    value: float = 0.0
    virtual: int = 0
    debug_depth: int = 0


class SearchTree:
    def __init__(self, limits: Limits, lower_is_better: bool):
        self.limits = limits
        self.lower_is_better = lower_is_better
        self.nodes: dict[int, TreeNode] = {ROOT: TreeNode(ROOT, None, None, Outcome.GOOD)}
        self._good_metrics: list[float] = []

    def __len__(self) -> int:
        return len(self.nodes) - 1

    def add(self, node_id: int, pick: Pick) -> TreeNode:
        """Create the pending child a pick asked for."""
        parent = self.nodes[pick.parent_id]
        depth = parent.debug_depth + 1 if pick.operator is Operator.DEBUG else 0
        node = TreeNode(node_id, pick.parent_id, pick.operator, debug_depth=depth)
        self.nodes[node_id] = node
        parent.children.append(node_id)
        return node

    def restore(
        self, node_id: int, parent_id: int | None, operator: Operator, outcome: Outcome,
        metric: float | None, visits: int, value: float,
    ) -> None:
        """Rebuild a finished node from storage (parents before children)."""
        parent = self.nodes[ROOT if parent_id is None else parent_id]
        depth = parent.debug_depth + 1 if operator is Operator.DEBUG else 0
        node = TreeNode(node_id, parent.id, operator, outcome, metric, visits=visits, value=value,
                        debug_depth=depth)
        self.nodes[node_id] = node
        parent.children.append(node_id)
        if outcome is Outcome.GOOD and metric is not None:
            self._good_metrics.append(metric)

    def room(self, node: TreeNode) -> Operator | None:
        """The operator this node can still take, or None when it is full or terminal."""
        if node.id == ROOT:
            return Operator.DRAFT if len(node.children) < self.limits.num_drafts else None
        if node.outcome is Outcome.GOOD:
            return Operator.IMPROVE if len(node.children) < self.limits.num_improves else None
        if node.outcome is Outcome.BUGGY and not node.children:
            return Operator.DEBUG if node.debug_depth < self.limits.max_debug_depth else None
        return None

    def is_open(self, node: TreeNode) -> bool:
        """Whether a pick can still be made at this node or below it."""
        if self.room(node) is not None:
            return True
        return any(self.is_open(self.nodes[c]) for c in node.children)

    def uct(self, parent: TreeNode, child: TreeNode) -> float:
        n = child.visits + child.virtual
        if n == 0:
            return math.inf
        total = max(parent.visits + parent.virtual, 1)
        return child.value / n + self.limits.exploration_constant * math.sqrt(math.log(total) / n)

    def select(self) -> Pick | None:
        """The next expansion, with its virtual loss applied; None when nothing is open."""
        path = [ROOT]
        node = self.nodes[ROOT]
        while True:
            operator = self.room(node)
            if operator is not None:
                break
            candidates = [self.nodes[c] for c in node.children if self.is_open(self.nodes[c])]
            if not candidates:
                return None
            node = max(candidates, key=lambda c: (self.uct(node, c), -c.id))
            path.append(node.id)
        for node_id in path:
            self.nodes[node_id].virtual += 1
        return Pick(node.id, operator, tuple(path))

    def complete(self, node_id: int, pick: Pick, metric: float | None) -> list[TreeNode]:
        """Record a finished node (metric None = buggy), release the pick's virtual loss and
        backpropagate its reward; returns the nodes whose statistics changed."""
        node = self.nodes[node_id]
        node.outcome = Outcome.BUGGY if metric is None else Outcome.GOOD
        node.metric = metric
        r = reward(metric, self._good_metrics, self.lower_is_better)
        if metric is not None:
            self._good_metrics.append(metric)
        self._release(pick)
        changed = [node]
        node.visits += 1
        node.value += r
        for ancestor in reversed(pick.path):
            current = self.nodes[ancestor]
            current.visits += 1
            current.value += r
            changed.append(current)
        return [n for n in changed if n.id != ROOT]

    def abort(self, node_id: int | None, pick: Pick) -> None:
        """Undo a pick that could not finish: drop its pending child and release virtual loss."""
        self._release(pick)
        if node_id is not None and node_id in self.nodes:
            parent = self.nodes[pick.parent_id]
            parent.children.remove(node_id)
            del self.nodes[node_id]

    def _release(self, pick: Pick) -> None:
        for node_id in pick.path:
            self.nodes[node_id].virtual -= 1
