"""The search tree's rules, checked directly on the pure code."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from mlmaster_daemon.models import Operator
from mlmaster_daemon.search.reward import reward
from mlmaster_daemon.search.tree import ROOT, Limits, Pick, SearchTree


def _tree(**limits: int) -> SearchTree:
    return SearchTree(Limits(**limits), lower_is_better=False)  # type: ignore[arg-type]


def _expand(tree: SearchTree, node_id: int, metric: float | None) -> Pick:
    pick = tree.select()
    assert pick is not None
    tree.add(node_id, pick)
    tree.complete(node_id, pick, metric)
    return pick


def test_the_root_takes_drafts_up_to_the_limit_then_improves_good_nodes() -> None:
    tree = _tree(num_drafts=3)
    picks = [_expand(tree, i, 0.5 + i / 10) for i in (1, 2, 3)]
    assert all(p.operator is Operator.DRAFT and p.parent_id == ROOT for p in picks)
    nxt = tree.select()
    assert nxt is not None
    assert nxt.operator is Operator.IMPROVE
    assert nxt.parent_id in (1, 2, 3)


def test_k_parallel_picks_reserve_their_slots() -> None:
    tree = _tree(num_drafts=2, num_improves=1)
    first, second = tree.select(), None
    assert first is not None
    tree.add(1, first)
    second = tree.select()
    assert second is not None
    tree.add(2, second)
    # Both drafts are in flight and both root slots are taken: nothing else is open.
    assert tree.select() is None
    assert tree.nodes[ROOT].virtual == 2


def test_parallel_picks_spread_over_different_subtrees() -> None:
    tree = _tree(num_drafts=3, num_improves=3)
    for i in (1, 2, 3):
        _expand(tree, i, 0.8)
    picks = []
    for node_id in (4, 5, 6):
        pick = tree.select()
        assert pick is not None
        tree.add(node_id, pick)
        picks.append(pick)
    assert sorted(p.parent_id for p in picks) == [1, 2, 3]


def test_buggy_nodes_get_one_debug_child_until_the_depth_limit() -> None:
    tree = _tree(num_drafts=1, max_debug_depth=2)
    _expand(tree, 1, None)
    debug = _expand(tree, 2, None)
    assert debug.operator is Operator.DEBUG and debug.parent_id == 1
    second = _expand(tree, 3, None)
    assert second.operator is Operator.DEBUG and second.parent_id == 2
    # Node 3 closes a chain of two consecutive debugs: it is terminal, and so is the whole tree.
    assert tree.nodes[3].debug_depth == 2
    assert tree.select() is None


def test_a_fixed_bug_is_improved_afterwards() -> None:
    tree = _tree(num_drafts=1)
    _expand(tree, 1, None)
    _expand(tree, 2, 0.7)
    pick = tree.select()
    assert pick is not None
    assert (pick.parent_id, pick.operator) == (2, Operator.IMPROVE)


def test_abort_releases_virtual_loss_and_reopens_the_slot() -> None:
    tree = _tree(num_drafts=1)
    pick = tree.select()
    assert pick is not None
    tree.add(1, pick)
    assert tree.select() is None
    tree.abort(1, pick)
    assert all(n.virtual == 0 for n in tree.nodes.values())
    again = tree.select()
    assert again is not None and again.operator is Operator.DRAFT


def test_reward_prefers_better_metrics_in_the_task_direction() -> None:
    assert reward(None, [0.5], lower_is_better=False) == 0.0
    assert reward(0.9, [0.5, 0.7], lower_is_better=False) == 1.0
    assert reward(0.5, [0.5, 0.9], lower_is_better=False) == 0.5
    assert reward(0.5, [0.5, 0.9], lower_is_better=True) == 1.0


@settings(max_examples=60, deadline=None)
@given(st.lists(st.one_of(st.none(), st.floats(0, 1)), min_size=1, max_size=40),
       st.integers(1, 4))
def test_invariants_hold_for_any_sequence_of_outcomes(
    outcomes: list[float | None], k: int
) -> None:
    tree = _tree(num_drafts=3, num_improves=2, max_debug_depth=2)
    node_id = 0
    remaining = list(outcomes)
    while remaining:
        batch: list[tuple[int, Pick]] = []
        for _ in range(k):
            pick = tree.select()
            if pick is None:
                break
            node_id += 1
            tree.add(node_id, pick)
            batch.append((node_id, pick))
        if not batch:
            break
        for nid, pick in batch:
            tree.complete(nid, pick, remaining.pop(0) if remaining else 0.5)
    root = tree.nodes[ROOT]
    assert len(root.children) <= 3
    for node in tree.nodes.values():
        assert node.virtual == 0
        if node.id == ROOT:
            continue
        limit = 2 if node.metric is not None else 1
        assert len(node.children) <= limit
        assert node.debug_depth <= 2
        # Every finished node's visits are its own plus its descendants'.
        subtree = [node.id]
        for nid in subtree:
            subtree.extend(tree.nodes[nid].children)
        assert node.visits == len(subtree)
    assert root.visits == len(tree)
