"""AIRA-dojo's evolutionary policy, specified on the pure policy object (no scheduler, no I/O)."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlmaster_daemon.models import Operator
from mlmaster_daemon.search.evolutionary import EvolutionaryPolicy, EvoParams
from mlmaster_daemon.search.policy import Pick
from mlmaster_daemon.search.tree import Outcome


def _policy(lower_is_better: bool = False, seed: int = 0, **params: Any) -> EvolutionaryPolicy:
    return EvolutionaryPolicy(EvoParams(**params), lower_is_better, 100, random.Random(seed))


def _expand(policy: EvolutionaryPolicy, node_id: int, metric: float | None) -> Pick:
    pick = policy.select()
    assert pick is not None
    policy.add(node_id, pick)
    policy.complete(node_id, pick, metric)
    return pick


@dataclass
class Sim:
    """Drives a policy like the scheduler: up to k picks in flight, one completion at a time,
    outcomes drawn from its own seeded rng (None = buggy)."""

    policy: EvolutionaryPolicy
    k: int
    rng: random.Random
    buggy_prob: float = 0.4
    next_id: int = 1
    inflight: list[tuple[int, Pick]] = field(default_factory=list)
    log: list[tuple[int, str, tuple[int, ...]]] = field(default_factory=list)

    def step(self) -> None:
        while len(self.inflight) < self.k:
            pick = self.policy.select()
            if pick is None:
                assert self.inflight, "None with nothing in flight would stall the task"
                break
            check_pick(self.policy, pick)
            self.policy.add(self.next_id, pick)
            self.inflight.append((self.next_id, pick))
            self.log.append((self.next_id, pick.operator.value, pick.parent_ids))
            self.next_id += 1
        node_id, pick = self.inflight.pop(self.rng.randrange(len(self.inflight)))
        metric = None if self.rng.random() < self.buggy_prob else round(self.rng.random(), 3)
        self.policy.complete(node_id, pick, metric)
        check_population(self.policy)

    def clone(self, policy: EvolutionaryPolicy) -> Sim:
        rng = random.Random()
        rng.setstate(self.rng.getstate())
        return Sim(policy, self.k, rng, self.buggy_prob, self.next_id, list(self.inflight), [])


def check_pick(policy: EvolutionaryPolicy, pick: Pick) -> None:
    """Every rule a freshly selected (still reserved) pick must satisfy."""
    tree, p = policy.tree, policy.params
    held, island = policy.reserved[-1]
    assert held == pick
    if pick.operator is Operator.DRAFT:
        assert pick.parent_ids == ()
        return
    parents = [tree[i] for i in pick.parent_ids]
    if pick.operator is Operator.DEBUG:
        (parent,) = parents
        assert parent.outcome is Outcome.BUGGY and not parent.children and not parent.terminal
        assert parent.debug_depth < p.max_debug_depth
        assert policy.island_of[parent.id] == island
        return
    expected = 2 if pick.operator is Operator.CROSSOVER else 1
    assert len(pick.parent_ids) == len(set(pick.parent_ids)) == expected
    for parent in parents:
        assert parent.outcome is Outcome.GOOD and parent.metric is not None
        assert parent.id in policy.islands[island]


def check_population(policy: EvolutionaryPolicy) -> None:
    tree, p = policy.tree, policy.params
    for members in policy.islands:
        assert len(members) == len(set(members)) <= p.max_island_size
        assert all(tree[m].outcome is Outcome.GOOD for m in members)
    for node in tree.nodes.values():
        assert node.debug_depth <= p.max_debug_depth
    for fitness in map(policy.fitness, policy.island_of):
        assert 0.0 <= fitness <= 1.0


def test_generation_zero_drafts_round_robin_over_islands() -> None:
    policy = _policy(num_islands=3, initial_drafts=2)
    picks = []
    for node_id in range(1, 7):
        pick = policy.select()
        assert pick is not None
        policy.add(node_id, pick)
        picks.append(pick)
    assert all(p.operator is Operator.DRAFT for p in picks)
    assert [policy.island_of[i] for i in range(1, 7)] == [0, 1, 2, 0, 1, 2]
    # Every island has work in flight and none has members: wait for a completion.
    assert policy.select() is None
    policy.complete(1, picks[0], 0.5)
    nxt = policy.select()
    assert nxt is not None and nxt.operator is Operator.IMPROVE and nxt.parent_ids == (1,)


def test_an_island_left_without_members_or_work_gets_a_new_draft() -> None:
    policy = _policy(num_islands=2, initial_drafts=1, max_debug_depth=1)
    _expand(policy, 1, 0.5)
    _expand(policy, 2, None)
    debug = _expand(policy, 3, None)
    assert (debug.operator, debug.parent_ids) == (Operator.DEBUG, (2,))
    redraft = policy.select()
    assert redraft is not None and redraft.operator is Operator.DRAFT
    assert policy.reserved[-1][1] == 1


@pytest.mark.parametrize("lower_is_better", [False, True])
def test_admission_is_at_or_above_the_island_mean(lower_is_better: bool) -> None:
    policy = _policy(lower_is_better, num_islands=1, initial_drafts=2, crossover_prob=0.0)
    _expand(policy, 1, 1.0)
    _expand(policy, 2, 3.0)
    # Drafts seed the island whatever their fitness; the mean fitness is now 0.5.
    assert policy.islands[0] == [1, 2]
    _expand(policy, 3, 2.0)
    assert 3 in policy.islands[0], "a child exactly at the mean joins"
    worse, better = (2.5, 1.5) if lower_is_better else (1.5, 2.5)
    _expand(policy, 4, worse)
    assert 4 not in policy.islands[0]
    _expand(policy, 5, better)
    assert 5 in policy.islands[0]
    assert 4 in policy.tree and policy.tree[4].outcome is Outcome.GOOD


def test_a_fixed_offspring_faces_admission_but_a_fixed_draft_does_not() -> None:
    policy = _policy(num_islands=1, initial_drafts=2, crossover_prob=0.0)
    _expand(policy, 1, 1.0)
    _expand(policy, 2, 3.0)
    _expand(policy, 3, None)
    fix = _expand(policy, 4, 1.2)
    assert (fix.operator, fix.parent_ids) == (Operator.DEBUG, (3,))
    assert 4 not in policy.islands[0]
    policy = _policy(num_islands=1, initial_drafts=3, crossover_prob=0.0)
    _expand(policy, 1, 1.0)
    _expand(policy, 2, 3.0)
    _expand(policy, 3, None)
    _expand(policy, 4, 1.2)
    assert 4 in policy.islands[0]


def test_an_island_over_its_size_drops_its_worst_member() -> None:
    policy = _policy(num_islands=1, initial_drafts=1, max_island_size=3, crossover_prob=0.0)
    for node_id in range(1, 8):
        _expand(policy, node_id, float(node_id))
        assert len(policy.islands[0]) == min(node_id, 3)
    assert sorted(policy.islands[0]) == [5, 6, 7]


@pytest.mark.parametrize("depth", [1, 3])
def test_debug_chains_stop_at_max_debug_depth(depth: int) -> None:
    policy = _policy(num_islands=1, initial_drafts=1, max_debug_depth=depth)
    _expand(policy, 1, None)
    for node_id in range(2, depth + 2):
        pick = _expand(policy, node_id, None)
        assert (pick.operator, pick.parent_ids) == (Operator.DEBUG, (node_id - 1,))
    assert policy.tree[depth + 1].terminal
    nxt = policy.select()
    assert nxt is not None and nxt.operator is Operator.DRAFT


def test_debug_picks_come_before_everything_else() -> None:
    policy = _policy(num_islands=2, initial_drafts=2)
    _expand(policy, 1, None)
    pick = policy.select()
    assert pick is not None and (pick.operator, pick.parent_ids) == (Operator.DEBUG, (1,))
    policy.add(2, pick)
    assert policy.island_of[2] == policy.island_of[1] == 0
    # A chain tail already being debugged is not waiting: the drafts go on.
    nxt = policy.select()
    assert nxt is not None and nxt.operator is Operator.DRAFT


def test_a_reserved_debug_is_not_picked_again_before_it_is_added() -> None:
    policy = _policy(num_islands=1, initial_drafts=1)
    _expand(policy, 1, None)
    first, second = policy.select(), policy.select()
    assert first is not None and first.operator is Operator.DEBUG
    assert second is None, "the only island has work reserved and no members"
    restored = EvolutionaryPolicy.from_state(policy.params, policy.to_state())
    assert restored.select() is None
    restored.add(2, first)
    assert restored.island_of[2] == 0 and restored.reserved == []


def test_crossover_needs_two_members_and_takes_them_from_one_island() -> None:
    policy = _policy(num_islands=1, initial_drafts=1, crossover_prob=1.0)
    _expand(policy, 1, 0.2)
    first = _expand(policy, 2, 0.9)
    assert first.operator is Operator.IMPROVE
    pick = policy.select()
    assert pick is not None and pick.operator is Operator.CROSSOVER
    assert sorted(pick.parent_ids) == [1, 2]
    node = policy.add(3, pick)
    assert node.parent_id == pick.parent_ids[0]


def test_temperature_falls_linearly_with_global_generations() -> None:
    policy = _policy(num_islands=1, initial_drafts=1, individuals_per_generation=2,
                     num_generations=4, initial_temp=1.0, final_temp=0.2)
    temps = []
    for node_id in range(1, 12):
        temps.append(policy.temperature())
        _expand(policy, node_id, 0.5)
    assert temps[:3] == [1.0, 1.0, 1.0]
    assert temps[3] == pytest.approx(0.8)
    assert temps[-1] == pytest.approx(0.2)
    assert policy.generation == 5


def test_migration_copies_the_best_member_to_another_island() -> None:
    policy = _policy(num_islands=2, initial_drafts=1, individuals_per_generation=1,
                     migration_prob=1.0, crossover_prob=0.0)
    _expand(policy, 1, 0.1)
    _expand(policy, 2, 0.9)
    assert policy.islands == [[1], [2]]
    _expand(policy, 3, 0.5)
    migrants = [m for target, members in enumerate(policy.islands)
                for m in members if policy.island_of[m] != target]
    assert len(migrants) == 1
    migrant = migrants[0]
    source = policy.island_of[migrant]
    assert migrant in policy.islands[source]
    assert migrant == max(policy.islands[source], key=policy.fitness)


def test_abort_releases_the_reservation_and_the_node() -> None:
    policy = _policy(num_islands=2, initial_drafts=1)
    pick = policy.select()
    assert pick is not None
    policy.abort(None, pick)
    assert policy.reserved == []
    again = policy.select()
    assert again is not None
    policy.add(1, again)
    policy.abort(1, again)
    assert 1 not in policy.tree and 1 not in policy.island_of
    assert policy.reserved == []
    replay = policy.select()
    assert replay is not None and policy.reserved[-1][1] == 0


def test_from_state_rejects_another_policys_state() -> None:
    with pytest.raises(ValueError, match="greedy"):
        EvolutionaryPolicy.from_state(EvoParams(), {"policy": "greedy"})


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 4), st.integers(0, 40),
       st.sampled_from([False, True]))
def test_save_and_load_is_an_identity_and_decides_the_same(
    seed: int, k: int, before: int, lower_is_better: bool
) -> None:
    params = EvoParams(num_islands=2, individuals_per_generation=2, initial_drafts=2,
                       max_island_size=4, max_debug_depth=2, migration_prob=0.5)
    sim = Sim(EvolutionaryPolicy(params, lower_is_better, 100, random.Random(seed)), k,
              random.Random(seed + 1))
    for _ in range(before):
        sim.step()
    state = sim.policy.to_state()
    restored = EvolutionaryPolicy.from_state(params, json.loads(json.dumps(state)))
    assert restored.to_state() == state
    twin = sim.clone(restored)
    sim.log.clear()
    for _ in range(30):
        sim.step()
        twin.step()
    assert twin.log == sim.log
    assert twin.policy.to_state() == sim.policy.to_state()


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 5), st.integers(1, 3), st.integers(1, 3),
       st.floats(0.0, 1.0), st.floats(0.0, 0.9), st.sampled_from([False, True]))
def test_invariants_hold_under_random_outcomes(
    seed: int, k: int, islands: int, depth: int, crossover: float, buggy: float,
    lower_is_better: bool,
) -> None:
    params = EvoParams(num_islands=islands, individuals_per_generation=3, initial_drafts=2,
                       max_island_size=3, crossover_prob=crossover, max_debug_depth=depth,
                       migration_prob=0.3)
    sim = Sim(EvolutionaryPolicy(params, lower_is_better, 100, random.Random(seed)), k,
              random.Random(seed), buggy_prob=buggy)
    for _ in range(50):
        sim.step()
    tree = sim.policy.tree
    for node in tree.nodes.values():
        if node.operator is Operator.DEBUG:
            # A chain of consecutive debugs never exceeds the limit.
            assert 1 <= node.debug_depth <= depth
            assert tree[node.parent_ids[0]].children == [node.id]
