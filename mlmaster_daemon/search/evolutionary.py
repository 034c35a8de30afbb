"""AIRA-dojo's evolutionary (island model) search policy, made parallel and resumable.

Population: `num_islands` islands, each a list of member node ids. Members are always working
(finished, with a metric) nodes; a node may sit on several islands after a migration.

Fitness of a node is its metric min-max normalised over every working node of the tree so
far (`tree.metric_lo/hi`), inverted when lower is better, so it lies in [0, 1] with 1 the best;
a buggy or unfinished node has fitness 0. The direction is the constructor's `lower_is_better`.

Each `select` applies the first rule that yields a pick:
1. Debug first: when a buggy chain tail is waiting (a buggy node with no child, pending ones
   included, whose `debug_depth` is below `max_debug_depth`), debug the oldest such tail. The
   debug child belongs to the tail's island. A buggy node at `max_debug_depth` is terminal, so
   a chain holds at most `max_debug_depth` consecutive debugs.
2. Generation 0: while some island has fewer than `initial_drafts` drafts (pending and
   selected ones count), draft for the island with the fewest (ties: lowest index), which
   assigns drafts round-robin.
3. An island with no members and nothing in flight for it gets a new draft.
4. Otherwise choose an island among those with members by a softmax of their members' mean
   fitness at the current temperature, and parents from its members by a softmax of member
   fitness, without replacement. With probability `crossover_prob`, when the island has at
   least two members, the pick is a CROSSOVER of parents (a, b), a being the tree parent;
   otherwise an IMPROVE of one parent.
5. When no island has members and every island has work in flight, return None: the next
   completion decides.

Generations are counted globally: the generation is the number of completed IMPROVE and
CROSSOVER children (working or buggy; drafts and debugs do not count) divided by
`individuals_per_generation`. The temperature falls linearly from `initial_temp` at
generation 0 to `final_temp` at `num_generations` and stays there. Global counting is used
because the island choice needs one temperature shared by all islands.

Admission, when a node finishes working: a draft, or the working tail of a debug chain that
started at a draft, always joins its island (drafts seed the population). Any other working
node (an improve or crossover child, or the working tail of its debug chain) joins its island
when its fitness is at least the island's mean member fitness at that moment (an empty island
admits it). When an island then holds more than `max_island_size` members it drops its worst
member (lowest fitness; ties: the oldest, lowest id). Nodes stay in the tree either way.

Migration: each time a generation completes, with probability `migration_prob` (and at least
two islands), the best member of a random non-empty island is copied into a random other
island (unless already there), which is then capped as above.

Every pick remembers its island: a selected pick holds a reservation (pick, island) until
`add` turns it into the node's island, and both are part of the saved state. Each finished
node backpropagates its own reward (`reward.py`) so the API's visits/value stay meaningful.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Self

from mlmaster_daemon.models import Operator
from mlmaster_daemon.search.policy import Pick, PickReason, TreePolicy
from mlmaster_daemon.search.reward import normalised, reward
from mlmaster_daemon.search.tree import ROOT, Outcome, TreeNode

_OFFSPRING = (Operator.IMPROVE, Operator.CROSSOVER)
# Softmax temperatures below this are treated as this, so weights stay finite.
_MIN_TEMP = 1e-6


@dataclass(frozen=True)
class EvoParams:
    num_islands: int = 2
    individuals_per_generation: int = 4
    initial_drafts: int = 4
    max_island_size: int = 50
    crossover_prob: float = 0.5
    initial_temp: float = 1.0
    final_temp: float = 0.3
    num_generations: int = 20
    max_debug_depth: int = 5
    migration_prob: float = 0.0


class EvolutionaryPolicy(TreePolicy[EvoParams]):
    """The island-model evolutionary policy; see the module docstring for every rule."""

    name = "evolutionary"

    def __init__(self, params: EvoParams, lower_is_better: bool, steps: int,
                 rng: random.Random | None = None):
        if params.num_islands < 1:
            raise ValueError("num_islands must be at least 1")
        super().__init__(params, lower_is_better, steps, rng)
        self.islands: list[list[int]] = [[] for _ in range(params.num_islands)]
        # The island of every node this policy added (pending and finished).
        self.island_of: dict[int, int] = {}
        # Picks returned by select and not yet added or aborted, with their island.
        self.reserved: list[tuple[Pick, int]] = []
        self.offspring_done = 0

    # -- fitness and schedule ---------------------------------------------------------------

    def fitness(self, node_id: int) -> float:
        """The node's normalised metric in [0, 1] (1 best); 0 when buggy or unfinished."""
        metric = self.tree[node_id].metric
        if metric is None:
            return 0.0
        return normalised(metric, self.tree.metric_lo, self.tree.metric_hi, self.lower_is_better)

    def island_mean(self, island: int) -> float | None:
        """Mean member fitness of `island`, None when it has no members."""
        members = self.islands[island]
        return sum(self.fitness(m) for m in members) / len(members) if members else None

    @property
    def generation(self) -> int:
        """Completed offspring generations (global count; see the module docstring)."""
        return self.offspring_done // max(1, self.params.individuals_per_generation)

    def temperature(self) -> float:
        """The softmax temperature for the current generation."""
        p = self.params
        frac = min(1.0, self.generation / max(1, p.num_generations))
        return p.initial_temp + (p.final_temp - p.initial_temp) * frac

    # -- the policy interface ---------------------------------------------------------------

    def select(self) -> Pick | None:
        """The next pick by the module's rules, reserved; None while nothing can be picked."""
        tail = self._waiting_tail()
        if tail is not None:
            debug = Pick(Operator.DEBUG, (tail.id,), reason=PickReason.DEBUG)
            return self._reserve(debug, self.island_of.get(tail.id, 0))
        island = self._draft_island()
        if island is not None:
            return self._reserve(Pick(Operator.DRAFT, reason=PickReason.DRAFT), island)
        candidates = [i for i, members in enumerate(self.islands) if members]
        if not candidates:
            return None
        temp = self.temperature()
        means = [self.island_mean(i) or 0.0 for i in candidates]
        island = candidates[self._softmax_index(means, temp)]
        members = list(self.islands[island])
        crossover = len(members) >= 2 and self.rng.random() < self.params.crossover_prob
        scores = [self.fitness(m) for m in members]
        first = self._softmax_index(scores, temp)
        a = members.pop(first)
        scores.pop(first)
        if crossover:
            b = members[self._softmax_index(scores, temp)]
            pick = Pick(Operator.CROSSOVER, (a, b), reason=PickReason.TOURNAMENT)
            return self._reserve(pick, island)
        return self._reserve(Pick(Operator.IMPROVE, (a,), reason=PickReason.TOURNAMENT), island)

    def add(self, node_id: int, pick: Pick) -> TreeNode:
        """Create the pending node for `pick`; it inherits the pick's reserved island."""
        island = self._release(pick)
        if island is None:
            island = self.island_of.get(pick.parent_id, 0)
        node = self.tree.add(node_id, pick.operator, pick.parent_ids, pick.reason)
        self.island_of[node_id] = island
        return node

    def complete(self, node_id: int, pick: Pick, metric: float | None,
                 folds: tuple[float, ...] = ()) -> list[TreeNode]:
        """Record the outcome, admit a working node to its island, count the generation and
        backpropagate the node's reward; returns the non-root nodes touched."""
        node = self.tree.finish(node_id, metric, folds)
        if metric is None:
            if node.debug_depth >= self.params.max_debug_depth:
                node.terminal = True
        else:
            self._admit(node)
        if node.operator in _OFFSPRING:
            self.offspring_done += 1
            if self.offspring_done % max(1, self.params.individuals_per_generation) == 0:
                self._maybe_migrate()
        r = reward(metric, self.tree.metric_lo, self.tree.metric_hi, self.lower_is_better)
        return [n for n in self.tree.backpropagate(node_id, r) if n.id != ROOT]

    def abort(self, node_id: int | None, pick: Pick) -> None:
        """Drop the pick's pending node and its island record, or its reservation when it was
        never added."""
        node = self.tree.nodes.get(node_id) if node_id is not None else None
        if node is None:
            self._release(pick)
        elif node.outcome is Outcome.PENDING and not node.children:
            self.tree.remove(node.id)
            self.island_of.pop(node.id, None)

    # -- rules ------------------------------------------------------------------------------

    def _waiting_tail(self) -> TreeNode | None:
        """The oldest buggy chain tail that may take a debug and has none in flight."""
        taken = {pick.parent_id for pick, _ in self.reserved if pick.operator is Operator.DEBUG}
        for node in self.tree.nodes.values():
            if (node.outcome is Outcome.BUGGY and not node.children and not node.terminal
                    and node.debug_depth < self.params.max_debug_depth
                    and node.id not in taken):
                return node
        return None

    def _draft_island(self) -> int | None:
        """The island that needs a draft now (rules 2 and 3), if any."""
        n = len(self.islands)
        drafts = [0] * n
        busy = [False] * n
        for node_id, island in self.island_of.items():
            node = self.tree[node_id]
            drafts[island] += node.operator is Operator.DRAFT
            busy[island] |= node.outcome is Outcome.PENDING
        for pick, island in self.reserved:
            drafts[island] += pick.operator is Operator.DRAFT
            busy[island] = True
        fewest = min(range(n), key=lambda i: (drafts[i], i))
        if drafts[fewest] < self.params.initial_drafts:
            return fewest
        return next((i for i in range(n) if not self.islands[i] and not busy[i]), None)

    def _chain_origin(self, node: TreeNode) -> Operator | None:
        """The operator of the first non-debug node on `node`'s debug chain."""
        current = node
        while current.operator is Operator.DEBUG and current.parent_id is not None:
            current = self.tree[current.parent_id]
        return current.operator

    def _admit(self, node: TreeNode) -> None:
        island = self.island_of.get(node.id, 0)
        members = self.islands[island]
        if node.id in members:
            return
        mean = self.island_mean(island)
        seed = self._chain_origin(node) is Operator.DRAFT
        if seed or mean is None or self.fitness(node.id) >= mean:
            members.append(node.id)
            self._cap(island)

    def _cap(self, island: int) -> None:
        members = self.islands[island]
        while len(members) > self.params.max_island_size:
            worst = min(members, key=lambda m: (self.fitness(m), m))
            members.remove(worst)

    def _maybe_migrate(self) -> None:
        p = self.params
        count = len(self.islands)
        if p.migration_prob <= 0 or count < 2:
            return
        if self.rng.random() >= p.migration_prob:
            return
        sources = [i for i, members in enumerate(self.islands) if members]
        if not sources:
            return
        source = self.rng.choice(sources)
        target = self.rng.choice([i for i in range(count) if i != source])
        best = max(self.islands[source], key=lambda m: (self.fitness(m), -m))
        if best not in self.islands[target]:
            self.islands[target].append(best)
            self._cap(target)

    def _softmax_index(self, scores: Sequence[float], temp: float) -> int:
        """An index drawn with probability proportional to exp(score / temp)."""
        t = max(temp, _MIN_TEMP)
        top = max(scores)
        weights = [math.exp((s - top) / t) for s in scores]
        draw = self.rng.random() * sum(weights)
        for index, weight in enumerate(weights):
            draw -= weight
            if draw < 0:
                return index
        return len(weights) - 1

    def _reserve(self, pick: Pick, island: int) -> Pick:
        self.reserved.append((pick, island))
        return pick

    def _release(self, pick: Pick) -> int | None:
        for index, (held, island) in enumerate(self.reserved):
            if held == pick:
                del self.reserved[index]
                return island
        return None

    # -- persistence ------------------------------------------------------------------------

    def to_state(self, nodes: bool = True) -> dict[str, Any]:
        """JSON-serialisable state; `from_state` restores a policy that decides identically."""
        return self._state({
            "islands": [list(members) for members in self.islands],
            "island_of": [[node_id, island] for node_id, island in self.island_of.items()],
            "reserved": [[pick.to_state(), island] for pick, island in self.reserved],
            "offspring_done": self.offspring_done,
        }, nodes)

    @classmethod
    def from_state(cls, params: EvoParams, raw: dict[str, Any]) -> Self:
        """The policy saved by `to_state`; raises ValueError for another policy's state.

        The saved islands win over `params.num_islands`, so a changed config cannot orphan
        the population of a task already under way.
        """
        policy = cls._restored(params, raw)
        policy.islands = [[int(m) for m in members] for members in raw["islands"]]
        policy.island_of = {int(n): int(i) for n, i in raw["island_of"]}
        policy.reserved = [(Pick.from_state(p), int(i)) for p, i in raw["reserved"]]
        policy.offspring_done = raw["offspring_done"]
        return policy
