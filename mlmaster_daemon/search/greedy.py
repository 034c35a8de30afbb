"""AIDE's greedy search policy, with its debug-depth off-by-one fixed.

Each `select` applies the first rule that yields a pick:
1. While the root has fewer than `num_drafts` drafts (pending and selected ones count),
   draft.
2. With probability `debug_prob` (one draw from the policy's rng per select that gets this
   far), debug a random *buggy leaf*: a buggy node with no children (a pending debug child
   counts as a child, so two parallel picks never debug the same leaf) whose `debug_depth` is
   below `max_debug_depth`. When no leaf qualifies the rule falls through.
3. When no node works yet, draft (beyond `num_drafts` if need be).
4. Otherwise improve the best working node by metric, in the task's direction (ties: lowest
   id). Parallel picks may improve the same node; they are independent attempts.

Off-by-one fix: AIDE debugs a leaf when `debug_depth <= max_debug_depth`, which allows
`max_debug_depth + 1` consecutive debugs. Here the test is `<`, so a chain holds exactly
`max_debug_depth` consecutive debugs; its last buggy node is marked terminal.

The policy never returns None (a draft is always possible) and never loops. Every finished
node backpropagates its own reward (`reward.py`) to its ancestors, so visits and value stay
meaningful in the API even though the policy itself ignores them. The metric direction is the
`lower_is_better` given to the constructor, never anything else.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Self

from mlmaster_daemon.models import Operator
from mlmaster_daemon.search.policy import Pick, PickReason, TreePolicy
from mlmaster_daemon.search.reward import reward
from mlmaster_daemon.search.tree import ROOT, Outcome, TreeNode


@dataclass(frozen=True)
class GreedyParams:
    num_drafts: int = 5
    debug_prob: float = 0.5
    max_debug_depth: int = 3


class GreedyPolicy(TreePolicy[GreedyParams]):
    """AIDE's greedy rule over a shared `Tree`; see the module docstring for the rules.

    A pick returned by `select` is a reservation until `add` (or `abort`) consumes it, so
    selecting several picks before adding any still respects the draft count and never
    debugs one leaf twice.
    """

    name = "greedy"

    def __init__(self, params: GreedyParams, lower_is_better: bool, steps: int,
                 rng: random.Random | None = None):
        super().__init__(params, lower_is_better, steps, rng)
        self.reserved: list[Pick] = []

    def select(self) -> Pick | None:
        """The next pick by the module's rules; never None for this policy."""
        p = self.params
        drafts = len(self.tree[ROOT].children)
        drafts += sum(1 for pick in self.reserved if pick.operator is Operator.DRAFT)
        if drafts < p.num_drafts:
            return self._reserve(Pick(Operator.DRAFT, reason=PickReason.DRAFT))
        if self.rng.random() < p.debug_prob:
            leaves = self.debuggable()
            if leaves:
                return self._reserve(Pick(Operator.DEBUG, (self.rng.choice(leaves).id,),
                                          reason=PickReason.DEBUG))
        best = self.best()
        if best is None:
            return self._reserve(Pick(Operator.DRAFT, reason=PickReason.DRAFT))
        return self._reserve(Pick(Operator.IMPROVE, (best.id,), reason=PickReason.BEST))

    def debuggable(self) -> list[TreeNode]:
        """Buggy leaves that may take one more debug, by id."""
        taken = {pick.parent_id for pick in self.reserved if pick.operator is Operator.DEBUG}
        return [
            node for node in self.tree.nodes.values()
            if node.outcome is Outcome.BUGGY and not node.children and not node.terminal
            and node.debug_depth < self.params.max_debug_depth and node.id not in taken
        ]

    def best(self) -> TreeNode | None:
        """The best working node in the task's direction (ties: lowest id), if any."""
        sign = 1.0 if self.lower_is_better else -1.0
        ranked = [(sign * n.metric, n.id, n) for n in self.tree.good() if n.metric is not None]
        return min(ranked, key=lambda t: (t[0], t[1]))[2] if ranked else None

    def add(self, node_id: int, pick: Pick) -> TreeNode:
        """Create the pending node for `pick`, consuming its reservation."""
        self._release(pick)
        return self.tree.add(node_id, pick.operator, pick.parent_ids, pick.reason)

    def complete(self, node_id: int, pick: Pick, metric: float | None,
                 folds: tuple[float, ...] = ()) -> list[TreeNode]:
        """Record the outcome and backpropagate its reward; returns the non-root nodes touched."""
        node = self.tree.finish(node_id, metric, folds)
        if metric is None and node.debug_depth >= self.params.max_debug_depth:
            node.terminal = True
        r = reward(metric, self.tree.metric_lo, self.tree.metric_hi, self.lower_is_better)
        return [n for n in self.tree.backpropagate(node_id, r) if n.id != ROOT]

    def abort(self, node_id: int | None, pick: Pick) -> None:
        """Drop the pick's pending node, or its reservation when it was never added."""
        node = self.tree.nodes.get(node_id) if node_id is not None else None
        if node is None:
            self._release(pick)
        elif node.outcome is Outcome.PENDING and not node.children:
            self.tree.remove(node.id)

    def _reserve(self, pick: Pick) -> Pick:
        self.reserved.append(pick)
        return pick

    def _release(self, pick: Pick) -> None:
        if pick in self.reserved:
            self.reserved.remove(pick)

    def to_state(self, nodes: bool = True) -> dict[str, Any]:
        """JSON-serialisable state; `from_state` restores a policy that decides identically."""
        return self._state({"reserved": [pick.to_state() for pick in self.reserved]}, nodes)

    @classmethod
    def from_state(cls, params: GreedyParams, raw: dict[str, Any]) -> Self:
        """The policy saved by `to_state`; raises ValueError for another policy's state."""
        policy = cls._restored(params, raw)
        policy.reserved = [Pick.from_state(p) for p in raw["reserved"]]
        return policy
