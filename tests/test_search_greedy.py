"""AIDE's greedy policy, specified on the pure policy object (no scheduler, no I/O)."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlmaster_daemon.models import Operator
from mlmaster_daemon.search.greedy import GreedyParams, GreedyPolicy
from mlmaster_daemon.search.policy import Pick
from mlmaster_daemon.search.tree import ROOT, Outcome


def _policy(lower_is_better: bool = False, seed: int = 0, **params: Any) -> GreedyPolicy:
    return GreedyPolicy(GreedyParams(**params), lower_is_better, 100, random.Random(seed))


def _expand(policy: GreedyPolicy, node_id: int, metric: float | None) -> Pick:
    pick = policy.select()
    assert pick is not None
    policy.add(node_id, pick)
    policy.complete(node_id, pick, metric)
    return pick


@dataclass
class Sim:
    """Drives a policy like the scheduler: up to k picks in flight, one completion at a time,
    outcomes drawn from its own seeded rng (None = buggy)."""

    policy: GreedyPolicy
    k: int
    rng: random.Random
    buggy_prob: float = 0.4
    next_id: int = 1
    inflight: list[tuple[int, Pick]] = field(default_factory=list)
    log: list[tuple[int, str, tuple[int, ...]]] = field(default_factory=list)

    def step(self) -> None:
        while len(self.inflight) < self.k:
            pick = self.policy.select()
            assert pick is not None, "greedy can always draft"
            check_pick(self.policy, pick)
            self.policy.add(self.next_id, pick)
            self.inflight.append((self.next_id, pick))
            self.log.append((self.next_id, pick.operator.value, pick.parent_ids))
            self.next_id += 1
        node_id, pick = self.inflight.pop(self.rng.randrange(len(self.inflight)))
        metric = None if self.rng.random() < self.buggy_prob else round(self.rng.random(), 3)
        self.policy.complete(node_id, pick, metric)

    def clone(self, policy: GreedyPolicy) -> Sim:
        rng = random.Random()
        rng.setstate(self.rng.getstate())
        return Sim(policy, self.k, rng, self.buggy_prob, self.next_id, list(self.inflight), [])


def check_pick(policy: GreedyPolicy, pick: Pick) -> None:
    """Every rule a freshly selected pick must satisfy, given the pending nodes."""
    tree, p = policy.tree, policy.params
    if pick.operator is Operator.DRAFT:
        assert pick.parent_ids == ()
        assert len(tree[ROOT].children) < p.num_drafts or not tree.good()
        return
    (parent_id,) = pick.parent_ids
    parent = tree[parent_id]
    assert not parent.terminal
    if pick.operator is Operator.DEBUG:
        assert parent.outcome is Outcome.BUGGY
        assert not parent.children
        assert parent.debug_depth < p.max_debug_depth
    else:
        assert pick.operator is Operator.IMPROVE
        assert parent is policy.best()


def test_drafts_until_num_drafts_counting_pending_ones() -> None:
    policy = _policy(num_drafts=3)
    picks = []
    for node_id in (1, 2, 3):
        pick = policy.select()
        assert pick is not None
        policy.add(node_id, pick)
        picks.append(pick)
    assert all(p.operator is Operator.DRAFT for p in picks)
    for node_id, pick in zip((1, 2, 3), picks, strict=True):
        policy.complete(node_id, pick, 0.5)
    nxt = policy.select()
    assert nxt is not None and nxt.operator is Operator.IMPROVE


def test_selected_but_not_added_drafts_count_too() -> None:
    policy = _policy(num_drafts=3, debug_prob=0.0)
    _expand(policy, 1, 0.5)
    first, second, third = policy.select(), policy.select(), policy.select()
    assert first is not None and second is not None and third is not None
    assert (first.operator, second.operator) == (Operator.DRAFT, Operator.DRAFT)
    assert (third.operator, third.parent_ids) == (Operator.IMPROVE, (1,))


@pytest.mark.parametrize("depth", [1, 2, 3, 5])
def test_a_debug_chain_holds_exactly_max_debug_depth_debugs(depth: int) -> None:
    policy = _policy(num_drafts=1, debug_prob=1.0, max_debug_depth=depth)
    assert _expand(policy, 1, None).operator is Operator.DRAFT
    for node_id in range(2, depth + 2):
        pick = _expand(policy, node_id, None)
        assert (pick.operator, pick.parent_ids) == (Operator.DEBUG, (node_id - 1,))
    tail = policy.tree[depth + 1]
    assert tail.debug_depth == depth and tail.terminal
    # AIDE's `<=` would debug once more here; the chain is over, and nothing works: draft.
    nxt = policy.select()
    assert nxt is not None and nxt.operator is Operator.DRAFT


@pytest.mark.parametrize("lower_is_better", [False, True])
def test_improves_the_best_working_node_in_the_task_direction(lower_is_better: bool) -> None:
    policy = _policy(lower_is_better, num_drafts=5, debug_prob=0.0)
    for node_id, metric in enumerate([0.3, 0.9, None, 0.1, 0.9], start=1):
        _expand(policy, node_id, metric)
    pick = policy.select()
    assert pick is not None and pick.operator is Operator.IMPROVE
    # Ties (nodes 2 and 5 at 0.9) go to the lowest id.
    assert pick.parent_ids == ((4,) if lower_is_better else (2,))


def test_parallel_picks_never_debug_the_same_leaf_twice() -> None:
    policy = _policy(num_drafts=3, debug_prob=1.0)
    for node_id in (1, 2, 3):
        _expand(policy, node_id, None)
    picks = []
    for node_id in range(4, 10):
        pick = policy.select()
        assert pick is not None
        policy.add(node_id, pick)
        picks.append(pick)
    debugged = [p.parent_id for p in picks if p.operator is Operator.DEBUG]
    assert sorted(debugged) == [1, 2, 3]
    # Once every leaf has a debug in flight and nothing works, the rest are drafts.
    assert all(p.operator is Operator.DRAFT for p in picks[3:])


def test_reservations_alone_keep_parallel_debugs_apart() -> None:
    policy = _policy(num_drafts=2, debug_prob=1.0)
    _expand(policy, 1, None)
    _expand(policy, 2, None)
    first, second, third = policy.select(), policy.select(), policy.select()
    assert first is not None and second is not None and third is not None
    assert {first.parent_id, second.parent_id} == {1, 2}
    assert third.operator is Operator.DRAFT


def test_abort_removes_the_pending_node_and_releases_the_reservation() -> None:
    policy = _policy(num_drafts=1)
    pick = policy.select()
    assert pick is not None
    policy.add(1, pick)
    policy.abort(1, pick)
    assert 1 not in policy.tree and policy.tree[ROOT].children == []
    again = policy.select()
    assert again is not None and again.operator is Operator.DRAFT
    policy.abort(None, again)
    assert policy.reserved == []
    assert len(policy.tree) == 0


def test_abort_of_a_finished_node_leaves_it_alone() -> None:
    policy = _policy(num_drafts=1)
    pick = _expand(policy, 1, 0.4)
    policy.abort(1, pick)
    assert policy.tree[1].metric == 0.4


def test_complete_backpropagates_and_returns_the_touched_nodes() -> None:
    policy = _policy(num_drafts=1, debug_prob=0.0)
    _expand(policy, 1, 0.5)
    pick = policy.select()
    assert pick is not None
    policy.add(2, pick)
    touched = policy.complete(2, pick, 0.7)
    assert [n.id for n in touched] == [2, 1]
    assert policy.tree[1].visits == 2 and policy.tree[ROOT].visits == 2


def test_a_reservation_survives_save_and_load() -> None:
    params = GreedyParams(num_drafts=2, debug_prob=0.0)
    policy = GreedyPolicy(params, False, 10, random.Random(3))
    _expand(policy, 1, 0.5)
    held = policy.select()
    assert held is not None and held.operator is Operator.DRAFT
    restored = GreedyPolicy.from_state(params, json.loads(json.dumps(policy.to_state())))
    assert restored.select() == policy.select() == Pick(Operator.IMPROVE, (1,))


def test_from_state_rejects_another_policys_state() -> None:
    with pytest.raises(ValueError, match="mcts"):
        GreedyPolicy.from_state(GreedyParams(), {"policy": "mcts"})


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 4), st.integers(0, 30),
       st.sampled_from([False, True]))
def test_save_and_load_is_an_identity_and_decides_the_same(
    seed: int, k: int, before: int, lower_is_better: bool
) -> None:
    params = GreedyParams(num_drafts=3, debug_prob=0.5, max_debug_depth=2)
    sim = Sim(GreedyPolicy(params, lower_is_better, 100, random.Random(seed)), k,
              random.Random(seed + 1))
    for _ in range(before):
        sim.step()
    state = sim.policy.to_state()
    raw = json.loads(json.dumps(state))
    restored = GreedyPolicy.from_state(params, raw)
    assert restored.to_state() == state
    twin = sim.clone(restored)
    sim.log.clear()
    for _ in range(25):
        sim.step()
        twin.step()
    assert twin.log == sim.log
    assert twin.policy.to_state() == sim.policy.to_state()


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 5), st.floats(0.0, 1.0),
       st.integers(1, 4), st.integers(1, 5), st.sampled_from([False, True]))
def test_invariants_hold_under_random_outcomes(
    seed: int, k: int, debug_prob: float, depth: int, drafts: int, lower_is_better: bool
) -> None:
    params = GreedyParams(num_drafts=drafts, debug_prob=debug_prob, max_debug_depth=depth)
    sim = Sim(GreedyPolicy(params, lower_is_better, 100, random.Random(seed)), k,
              random.Random(seed), buggy_prob=0.6)
    for _ in range(40):
        sim.step()
    tree = sim.policy.tree
    for node in tree.nodes.values():
        assert node.debug_depth <= depth
        if node.operator is Operator.DEBUG:
            assert len(tree[node.parent_ids[0]].children) == 1
        if node.terminal:
            assert node.outcome is Outcome.BUGGY and node.debug_depth == depth
    assert all(op == Operator.DRAFT.value for _, op, _ in sim.log[:drafts])
