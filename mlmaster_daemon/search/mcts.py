"""ML-Master's MCTS with greedy worker chains and virtual loss, with v1's bugs fixed.

Selection walks from the virtual root and expands the first node that still has room:
the root takes `num_drafts` drafts, a working node `num_improves` improves, a buggy node one
debug (until its chain of consecutive debugs reaches `max_debug_depth`, when it is terminal).
Otherwise it descends to the open child with the best UCT score; unvisited children first.
Every child compared on the way keeps its score (`TreeNode.uct`), and every node keeps why the
pick that made it was chosen (`TreeNode.reason`), so a user can read the search.

A pick starts a *chain*: the worker may keep expanding the node it just made, as in v1.
Two rules decide when a chain goes on and when it backpropagates (`backprop`):

- `node` (the default): every finished node (working, buggy or invalid) backpropagates its
  own reward at once, so visits and value along its path are right at every moment. Greedy
  continuation is a preference, not a way around selection: a chain goes on only from a node
  that improved meaningfully on the chain's best (or, for a buggy node, with a debug until
  `back_debug_depth` consecutive debugs), and never beyond `max_chain_length` nodes; a miss, a
  successful debug or the length bound hand the worker back to UCT selection.
- `chain` (ML-Master v1's exact rule, for faithful comparison): a working node that beats the
  chain's local best becomes the new local best and is improved next; one that does not
  counts a failure, and after `max_improve_failure` failures the node is terminal and the chain
  backpropagates once, credited with the reward of the best node it produced (or of its last
  node when none worked). A successful debug backpropagates at once; a buggy node is debugged
  until `back_debug_depth` consecutive debugs, and at `max_debug_depth` it is terminal.

"Improves" means a gain above a threshold (`threshold_mode`):
- `range` (default): `improve_threshold` times the task's score range so far (best minus worst
  working metric); with a single working metric, times its magnitude;
- `relative`: `improve_threshold` times the chain's best metric's magnitude;
- `absolute`: `improve_threshold` itself (v1: 1e-4).
With `noise_aware`, when both nodes reported their per-fold metrics on the task's shared folds,
the gain must also exceed its own noise: the standard error of the paired per-fold
differences (their spread over the folds, divided by sqrt(folds)). A gain smaller than that
is noise, not progress.

Blending: once every draft slot is used, every `blend_every`-th fresh selection (not a chain's
continuation) is a crossover of the best working node and the best working node of another
draft's subtree, each pair once. The blend hangs under the better parent; its chain goes on
only if it beats that parent. A blend is a node like any other: when it scores best on the
task's shared folds it becomes the final answer.

Parallel expansion: a chain holds one virtual visit (no reward) on every node of the path it
was selected through, so the next selections see those subtrees as more visited and spread
out. The chain's end or an abort releases it. Nothing spins: when no node is open, `select`
returns None.

Fixes over v1: no boolean locks (virtual loss instead), a terminal node is never selected, an
aborted pick releases everything it held, the reward uses the metric, the improvement
threshold may be relative, every decay schedule works, and the whole state saves and loads.
"""

from __future__ import annotations

import math
import random
import statistics
from collections import deque
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal, Self

from mlmaster_daemon.models import Operator
from mlmaster_daemon.search.policy import Pick, PickReason, TreePolicy
from mlmaster_daemon.search.reward import DEFAULT_BUGGY_PENALTY, reward
from mlmaster_daemon.search.tree import ROOT, Outcome, TreeNode
from mlmaster_daemon.search.uct import Decay, uct

Backprop = Literal["node", "chain"]
ThresholdMode = Literal["range", "relative", "absolute"]


@dataclass(frozen=True)
class MctsParams:
    num_drafts: int = 5
    num_improves: int = 3
    back_debug_depth: int = 3
    max_debug_depth: int = 20
    max_improve_failure: int = 3
    improve_threshold: float = 0.01
    threshold_mode: ThresholdMode = "range"
    backprop: Backprop = "node"
    # Nodes one chain may make before its worker goes back to selection; 0: no bound.
    max_chain_length: int = 4
    # Every this many fresh selections, a blend of two subtrees' best nodes; 0: never.
    blend_every: int = 5
    noise_aware: bool = True
    buggy_penalty: float = DEFAULT_BUGGY_PENALTY
    decay: Decay = field(default_factory=Decay)


def ml_master_v1(params: MctsParams) -> MctsParams:
    """`params` with ML-Master v1's exact rule: backpropagation only at a chain's end, an
    absolute 1e-4 improvement threshold, unbounded chains and no noise test."""
    return replace(params, backprop="chain", threshold_mode="absolute", improve_threshold=1e-4,
                   max_chain_length=0, noise_aware=False, blend_every=0)


@dataclass
class Chain:
    """One worker's run of consecutive expansions."""

    id: int
    path: tuple[int, ...]
    best_id: int | None = None
    best_metric: float | None = None
    failures: int = 0
    debugs: int = 0
    nodes: list[int] = field(default_factory=list)


class MctsPolicy(TreePolicy[MctsParams]):
    name = "mcts"

    def __init__(self, params: MctsParams, lower_is_better: bool, steps: int,
                 rng: random.Random | None = None):
        super().__init__(params, lower_is_better, steps, rng)
        self.chains: dict[int, Chain] = {}
        self.next_chain = 1
        # Picks that continue a chain: served before any new selection, as v1's worker does.
        self.continuations: deque[Pick] = deque()
        # Nodes in each subtree (itself included) that still have room: kept incrementally so
        # selection never scans the tree.
        self.open_count: dict[int, int] = {ROOT: 1}
        self.has_room: dict[int, bool] = {ROOT: True}
        # Nodes whose visits, value or UCT score changed since `complete` last reported them.
        self.changed: set[int] = set()
        # Fresh selections since the last blend, and the parent pairs blended so far.
        self.since_blend = 0
        self.blended: set[tuple[int, int]] = set()
        # The best working node of each draft's subtree, by draft id.
        self.draft_best: dict[int, int] = {}

    # -- structure -------------------------------------------------------------------------

    def room(self, node: TreeNode) -> Operator | None:
        """The operator this node can still take, or None when it is full or terminal."""
        p = self.params
        if node.terminal:
            return None
        if node.id == ROOT:
            return Operator.DRAFT if len(node.children) < p.num_drafts else None
        if node.outcome is Outcome.GOOD:
            return Operator.IMPROVE if len(node.children) < p.num_improves else None
        if node.outcome is Outcome.BUGGY and not node.children:
            return Operator.DEBUG if node.debug_depth < p.max_debug_depth else None
        return None

    def _refresh(self, node: TreeNode) -> None:
        """Recompute whether `node` has room and carry the change up to the root."""
        now = self.room(node) is not None
        if now == self.has_room.get(node.id, False):
            return
        self.has_room[node.id] = now
        delta = 1 if now else -1
        for ancestor in self.tree.ancestors(node.id):
            self.open_count[ancestor.id] = self.open_count.get(ancestor.id, 0) + delta

    def is_open(self, node_id: int) -> bool:
        return self.open_count.get(node_id, 0) > 0

    def exploration(self) -> float:
        return self.params.decay.constant(len(self.tree), self.steps)

    # -- the policy interface --------------------------------------------------------------

    def select(self) -> Pick | None:
        while self.continuations:
            pick = self.continuations.popleft()
            node = self.tree.nodes.get(pick.parent_id)
            if node is not None and self.room(node) is pick.operator:
                return pick
            # Someone else filled the node meanwhile: the chain ends here.
            self._end_chain(pick.chain, None)
        if not self.is_open(ROOT):
            return None
        self.since_blend += 1
        blend = self._blend()
        if blend is not None:
            return blend
        c = self.exploration()
        node = self.tree[ROOT]
        path = [ROOT]
        while (operator := self.room(node)) is None:
            node = self._descend(node, c)
            path.append(node.id)
        chain = Chain(self.next_chain, tuple(path))
        self.next_chain += 1
        if node.outcome is Outcome.GOOD and node.id != ROOT:
            chain.best_id, chain.best_metric = node.id, node.metric
        self.chains[chain.id] = chain
        for node_id in path:
            self.tree[node_id].virtual += 1
        reason = (PickReason.DRAFT if node.id == ROOT
                  else PickReason.DEBUG if operator is Operator.DEBUG else PickReason.UCT)
        return Pick(operator, () if node.id == ROOT else (node.id,), chain.path, chain.id,
                    reason)

    def _blend(self) -> Pick | None:
        """A blend when one is due (see the module docstring), else None."""
        p = self.params
        root = self.tree[ROOT]
        if p.blend_every <= 0 or self.since_blend < p.blend_every:
            return None
        if len(root.children) < p.num_drafts:
            return None
        sign = 1.0 if self.lower_is_better else -1.0
        ranked = sorted((self.tree[n] for n in self.draft_best.values()),
                        key=lambda n: (sign * (n.metric or 0.0), n.id))
        if len(ranked) < 2:
            return None
        a = ranked[0]
        b = next((n for n in ranked[1:] if (a.id, n.id) not in self.blended), None)
        if b is None:
            return None
        self.blended.add((a.id, b.id))
        self.since_blend = 0
        path = tuple(reversed([n.id for n in self.tree.ancestors(a.id)]))
        chain = Chain(self.next_chain, path, a.id, a.metric)
        self.next_chain += 1
        self.chains[chain.id] = chain
        for node_id in path:
            self.tree[node_id].virtual += 1
        return Pick(Operator.CROSSOVER, (a.id, b.id), path, chain.id, PickReason.BLEND)

    def _note_best(self, node: TreeNode) -> None:
        """Keep the best working node of `node`'s draft subtree."""
        if node.metric is None or node.outcome is not Outcome.GOOD:
            return
        draft = [n.id for n in self.tree.ancestors(node.id)][-2]
        held = self.draft_best.get(draft)
        metric = self.tree[held].metric if held is not None else None
        sign = 1.0 if self.lower_is_better else -1.0
        if metric is None or sign * node.metric < sign * metric:
            self.draft_best[draft] = node.id

    def _descend(self, node: TreeNode, c: float) -> TreeNode:
        """The open child of `node` with the best UCT score; every child compared keeps its
        score."""
        parent_visits = node.visits + node.virtual
        best: TreeNode | None = None
        best_score = -math.inf
        for child_id in node.children:
            if not self.is_open(child_id):
                continue
            child = self.tree[child_id]
            score = uct(child.value, child.visits + child.virtual, parent_visits, c)
            kept = score if math.isfinite(score) else None
            if child.uct != kept:
                child.uct = kept
                self.changed.add(child_id)
            if score > best_score:
                best, best_score = child, score
        if best is None:
            raise AssertionError(f"open_count says node {node.id} is open but no child is")
        return best

    def add(self, node_id: int, pick: Pick) -> TreeNode:
        node = self.tree.add(node_id, pick.operator, pick.parent_ids,
                             None if pick.reason is None else pick.reason.value)
        self.open_count[node_id] = 0
        self.has_room[node_id] = False
        self._refresh(self.tree[pick.parent_id])
        if pick.chain is not None:
            self.chains[pick.chain].nodes.append(node_id)
        return node

    def complete(self, node_id: int, pick: Pick, metric: float | None,
                 folds: tuple[float, ...] = ()) -> list[TreeNode]:
        node = self.tree.finish(node_id, metric, folds)
        self._note_best(node)
        chain = self.chains[pick.chain] if pick.chain is not None else None
        if self.params.backprop == "node":
            self._backpropagate(node_id, node.metric)
        next_op = self._next_step(node, pick, chain)
        self._refresh(node)
        if chain is not None and next_op is not None:
            # The chain's new node carries its virtual loss too, so other workers leave it be.
            chain.path = (*chain.path, node_id)
            node.virtual += 1
            reason = PickReason.DEBUG if next_op is Operator.DEBUG else PickReason.CONTINUATION
            self.continuations.append(Pick(next_op, (node_id,), chain.path, chain.id, reason))
        else:
            self._end_chain(pick.chain, node_id)
        return self._take_changed()

    def _take_changed(self) -> list[TreeNode]:
        changed = [self.tree[i] for i in sorted(self.changed) if i in self.tree and i != ROOT]
        self.changed.clear()
        return changed

    def abort(self, node_id: int | None, pick: Pick) -> None:
        if node_id is not None and node_id in self.tree:
            parent = self.tree[pick.parent_id]
            self._refresh_removed(node_id)
            self.tree.remove(node_id)
            chain = self.chains.get(pick.chain) if pick.chain is not None else None
            if chain is not None and node_id in chain.nodes:
                chain.nodes.remove(node_id)
            self._refresh(parent)
        self._end_chain(pick.chain, None)

    # -- chains ----------------------------------------------------------------------------

    def _improves(self, node: TreeNode, chain: Chain) -> bool:
        """Whether `node` beats the chain's best by more than the threshold (and, with
        `noise_aware`, by more than the gain's own noise over the shared folds)."""
        metric, best = node.metric, chain.best_metric
        if metric is None:
            return False
        if best is None:
            return True
        sign = -1.0 if self.lower_is_better else 1.0
        gain = sign * (metric - best)
        return gain > self._threshold(best) and gain > self._noise(node, chain.best_id, sign)

    def _threshold(self, best: float) -> float:
        p = self.params
        if p.threshold_mode == "absolute":
            return p.improve_threshold
        lo, hi = self.tree.metric_lo, self.tree.metric_hi
        if p.threshold_mode == "range" and lo is not None and hi is not None and hi > lo:
            return p.improve_threshold * (hi - lo)
        return p.improve_threshold * max(abs(best), 1e-12)

    def _noise(self, node: TreeNode, best_id: int | None, sign: float) -> float:
        """The standard error of the gain over the folds both nodes were scored on; 0 when
        that is unknown."""
        best = self.tree.nodes.get(best_id) if best_id is not None else None
        if not self.params.noise_aware or best is None:
            return 0.0
        if len(node.folds) < 2 or len(node.folds) != len(best.folds):
            return 0.0
        diffs = [sign * (a - b) for a, b in zip(node.folds, best.folds, strict=True)]
        return statistics.stdev(diffs) / math.sqrt(len(diffs))

    def _next_step(self, node: TreeNode, pick: Pick, chain: Chain | None) -> Operator | None:
        """Whether the chain goes on from `node`, and with which operator."""
        p = self.params
        if node.outcome is Outcome.BUGGY:
            if node.debug_depth >= p.max_debug_depth:
                node.terminal = True
                return None
            if chain is None:
                return None
            chain.debugs += 1 if pick.operator is Operator.DEBUG else 0
            if chain.debugs >= p.back_debug_depth or self._too_long(chain):
                return None
            return Operator.DEBUG
        if chain is None:
            return None
        if pick.operator is Operator.DEBUG:
            chain.best_id, chain.best_metric = node.id, node.metric
            return None  # a successful debug always hands back to selection
        if self._improves(node, chain):
            chain.best_id, chain.best_metric = node.id, node.metric
            chain.failures = 0
            return None if self._too_long(chain) else Operator.IMPROVE
        if p.backprop == "node":
            return None  # a miss: selection, with the statistics just updated, decides
        chain.failures += 1
        if chain.failures >= p.max_improve_failure:
            node.terminal = True
            return None
        return None if self._too_long(chain) else Operator.IMPROVE

    def _too_long(self, chain: Chain) -> bool:
        bound = self.params.max_chain_length
        return bound > 0 and len(chain.nodes) >= bound

    def _end_chain(self, chain_id: int | None, last_id: int | None) -> None:
        """Release the chain's virtual loss; under the `chain` rule, backpropagate from its
        last node if it has one."""
        chain = self.chains.pop(chain_id, None) if chain_id is not None else None
        if chain is not None:
            for node_id in chain.path:
                if node_id in self.tree:
                    self.tree[node_id].virtual -= 1
        if last_id is None or self.params.backprop == "node":
            return
        credited = self.tree[last_id].metric
        if chain is not None and chain.best_id is not None and chain.best_id in chain.nodes:
            credited = chain.best_metric
        self._backpropagate(last_id, credited)

    def _backpropagate(self, node_id: int, metric: float | None) -> None:
        r = reward(metric, self.tree.metric_lo, self.tree.metric_hi, self.lower_is_better,
                   self.params.buggy_penalty)
        self.changed.update(n.id for n in self.tree.backpropagate(node_id, r))

    def _refresh_removed(self, node_id: int) -> None:
        if self.has_room.get(node_id):
            for ancestor in self.tree.ancestors(node_id):
                self.open_count[ancestor.id] -= 1
        self.has_room.pop(node_id, None)
        self.open_count.pop(node_id, None)

    # -- persistence -----------------------------------------------------------------------

    def to_state(self, nodes: bool = True) -> dict[str, Any]:
        return self._state({
            "chains": [asdict(c) for c in self.chains.values()],
            "next_chain": self.next_chain,
            "continuations": [p.to_state() for p in self.continuations],
            "since_blend": self.since_blend,
            "blended": sorted([a, b] for a, b in self.blended),
        }, nodes)

    @classmethod
    def from_state(cls, params: MctsParams, raw: dict[str, Any]) -> Self:
        """The policy saved by `to_state`; raises ValueError for another policy's state."""
        policy = cls._restored(params, raw)
        policy.chains = {
            c["id"]: Chain(c["id"], tuple(c["path"]), c["best_id"], c["best_metric"],
                           c["failures"], c["debugs"], list(c["nodes"]))
            for c in raw["chains"]
        }
        policy.next_chain = raw["next_chain"]
        policy.continuations = deque(Pick.from_state(p) for p in raw["continuations"])
        # States saved before blends existed have neither key.
        policy.since_blend = raw.get("since_blend", 0)
        policy.blended = {(a, b) for a, b in raw.get("blended", [])}
        policy.open_count, policy.has_room = {}, {}
        # Derived bookkeeping is rebuilt, children before parents, rather than stored.
        for node in sorted(policy.tree.nodes.values(), key=lambda n: -n.id):
            policy.open_count.setdefault(node.id, 0)
            policy._refresh(node)
            if node.id != ROOT:
                policy._note_best(node)
        return policy

