"""The search tree shared by every policy: nodes, outcomes and backpropagated statistics.

Pure data with no I/O. Node 0 is the virtual root; drafts are its children. A node's first
parent is its tree edge; a crossover node names its second parent in `parent_ids` too.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from mlmaster_daemon.models import Operator

ROOT = 0
# A saved tree head's mark that its nodes are stored apart, one row per node.
ROWS_APART = "apart"


class Outcome(StrEnum):
    PENDING = "pending"
    GOOD = "good"
    BUGGY = "buggy"


@dataclass
class TreeNode:
    id: int
    parent_ids: tuple[int, ...]
    operator: Operator | None
    outcome: Outcome = Outcome.PENDING
    metric: float | None = None
    children: list[int] = field(default_factory=list)
    visits: int = 0
    value: float = 0.0
    virtual: int = 0
    # Consecutive debug steps ending at this node (0 for a non-debug node).
    debug_depth: int = 0
    terminal: bool = False
    # The metric on each validation fold, when the script reported them.
    folds: tuple[float, ...] = ()
    # Its UCT score at the last selection that compared it with its siblings; None while it
    # is unvisited (UCT scores it +inf, so it is tried first) or was never compared.
    uct: float | None = None
    # Why the pick that made this node was chosen (`PickReason`); None for the root.
    reason: str | None = None
    # The ids of its tree's nodes changed since their last save (see `Tree.take_unsaved`):
    # any assignment to a field adds this node's id.
    unsaved: set[int] | None = field(default=None, repr=False, compare=False)

    def __setattr__(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)
        unsaved = self.__dict__.get("unsaved")
        if unsaved is not None:
            unsaved.add(self.id)

    @property
    def parent_id(self) -> int | None:
        return self.parent_ids[0] if self.parent_ids else None

    def to_state(self) -> list[Any]:
        return [self.id, list(self.parent_ids), self.operator.value if self.operator else None,
                self.outcome.value, self.metric, self.children, self.visits, self.value,
                self.virtual, self.debug_depth, self.terminal, list(self.folds), self.uct,
                self.reason]

    @classmethod
    def from_state(cls, raw: list[Any]) -> TreeNode:
        # States saved before folds, UCT scores and reasons were kept have 11 fields.
        extra = raw[11:14] if len(raw) >= 14 else [[], None, None]
        return cls(raw[0], tuple(raw[1]), Operator(raw[2]) if raw[2] else None, Outcome(raw[3]),
                   raw[4], list(raw[5]), raw[6], raw[7], raw[8], raw[9], raw[10],
                   tuple(extra[0]), extra[1], extra[2])


class Tree:
    """Nodes by id, plus the running range of good metrics (for normalised rewards).

    A checkpoint saves only what changed: the tree knows which nodes changed or left since
    `take_unsaved` last handed them out, so a save costs the same in a tree of any size.
    """

    def __init__(self) -> None:
        self.unsaved: set[int] = set()
        self.dropped: set[int] = set()
        self.nodes: dict[int, TreeNode] = {}
        self._adopt(TreeNode(ROOT, (), None, Outcome.GOOD))
        self.metric_lo: float | None = None
        self.metric_hi: float | None = None

    def _adopt(self, node: TreeNode) -> None:
        """Make `node` one of this tree's (from now on its changes are tracked)."""
        node.unsaved = self.unsaved
        self.nodes[node.id] = node
        self.unsaved.add(node.id)
        self.dropped.discard(node.id)

    def __len__(self) -> int:
        return len(self.nodes) - 1

    def __getitem__(self, node_id: int) -> TreeNode:
        return self.nodes[node_id]

    def __contains__(self, node_id: int) -> bool:
        return node_id in self.nodes

    def add(self, node_id: int, operator: Operator, parent_ids: tuple[int, ...],
            reason: str | None = None) -> TreeNode:
        """A pending node under `parent_ids[0]` (ROOT for a draft), made for `reason`."""
        if node_id in self.nodes:
            raise ValueError(f"node {node_id} already exists")
        parents = parent_ids or (ROOT,)
        parent = self.nodes[parents[0]]
        depth = parent.debug_depth + 1 if operator is Operator.DEBUG else 0
        node = TreeNode(node_id, parents, operator, debug_depth=depth, reason=reason)
        self._adopt(node)
        parent.children.append(node_id)
        self.unsaved.add(parent.id)
        return node

    def remove(self, node_id: int) -> None:
        """Drop a pending leaf (an expansion that never finished)."""
        node = self.nodes[node_id]
        if node.children:
            raise ValueError(f"node {node_id} has children and cannot be removed")
        self.nodes[node.parent_ids[0]].children.remove(node_id)
        self.unsaved.add(node.parent_ids[0])
        del self.nodes[node_id]
        node.unsaved = None
        self.unsaved.discard(node_id)
        self.dropped.add(node_id)

    def finish(self, node_id: int, metric: float | None,
               folds: tuple[float, ...] = ()) -> TreeNode:
        """Record an outcome: a metric means the node works, None means it is buggy."""
        node = self.nodes[node_id]
        node.outcome = Outcome.BUGGY if metric is None else Outcome.GOOD
        node.metric = metric
        node.folds = folds if metric is not None else ()
        if metric is not None:
            self.metric_lo = metric if self.metric_lo is None else min(self.metric_lo, metric)
            self.metric_hi = metric if self.metric_hi is None else max(self.metric_hi, metric)
        return node

    def ancestors(self, node_id: int) -> Iterator[TreeNode]:
        """The node itself, then each first parent up to and including the root."""
        current: int | None = node_id
        while current is not None:
            node = self.nodes[current]
            yield node
            current = node.parent_id

    def backpropagate(self, node_id: int, reward: float) -> list[TreeNode]:
        """Add one visit and `reward` to the node and every ancestor; returns them."""
        touched = []
        for node in self.ancestors(node_id):
            node.visits += 1
            node.value += reward
            touched.append(node)
        return touched

    def good(self) -> list[TreeNode]:
        return [n for n in self.nodes.values() if n.id != ROOT and n.outcome is Outcome.GOOD]

    def to_state(self, nodes: bool = True) -> dict[str, Any]:
        """The whole tree; with `nodes` False only its head, marked as having its nodes
        saved apart, one row each (`take_unsaved`)."""
        head: dict[str, Any] = {"metric_lo": self.metric_lo, "metric_hi": self.metric_hi}
        if not nodes:
            return {**head, "rows": ROWS_APART}
        return {"nodes": [n.to_state() for n in self.nodes.values()], **head}

    def take_unsaved(self) -> tuple[dict[int, list[Any]], list[int]]:
        """The saved form of every node changed since the last call, and the ids of nodes
        that left; from now on they count as saved (`keep_unsaved` undoes a save that
        failed)."""
        rows = {i: self.nodes[i].to_state() for i in sorted(self.unsaved) if i in self.nodes}
        dropped = sorted(self.dropped)
        self.unsaved.clear()
        self.dropped.clear()
        return rows, dropped

    def keep_unsaved(self, ids: Iterable[int], dropped: Iterable[int]) -> None:
        """Count these nodes as changed again: the save that held them did not happen."""
        self.unsaved.update(i for i in ids if i in self.nodes)
        self.dropped.update(i for i in dropped if i not in self.nodes)

    @classmethod
    def from_state(cls, raw: dict[str, Any]) -> Tree:
        """The tree `to_state` saved. Its `nodes` may also be TreeNodes already built (a
        restore that reads rows in slices). Nodes saved inline, not as rows, all count as
        unsaved, so the first checkpoint writes them as rows."""
        tree = cls()
        tree.nodes = {}
        tree.unsaved.clear()
        for item in raw["nodes"]:
            tree._adopt(item if isinstance(item, TreeNode) else TreeNode.from_state(item))
        if raw.get("rows") == ROWS_APART:
            tree.unsaved.clear()
        tree.metric_lo, tree.metric_hi = raw["metric_lo"], raw["metric_hi"]
        return tree
