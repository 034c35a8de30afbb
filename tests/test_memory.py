"""Selectively scoped memory: the capture filter, the cap, per-operator scoping, rendering."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from mlmaster_daemon.models import Operator
from mlmaster_daemon.search.memory import (
    ELLIPSIS,
    MIN_FRAGMENT_TOKENS,
    Memory,
    MemoryEntry,
    normalise,
    render,
)
from mlmaster_daemon.search.tokens import TiktokenCounter
from mlmaster_daemon.search.tree import ROOT, Tree

COUNTER = TiktokenCounter()
DRAFT, IMPROVE, DEBUG, CROSS = Operator.DRAFT, Operator.IMPROVE, Operator.DEBUG, Operator.CROSSOVER


def entry(node_id: int, operator: Operator = DRAFT, metric: float | None = 0.5,
          summary: str | None = None, error: str | None = None,
          parents: tuple[int, ...] = (ROOT,)) -> MemoryEntry:
    text = summary or f"plan {chr(96 + node_id % 26)}"  # letters: digits normalise away
    return MemoryEntry(node_id, operator, parents, text, metric, metric is None, error, 0, node_id)


def sample() -> tuple[Tree, Memory]:
    """Drafts 1 (0.70), 2 (buggy), 3 (0.80); improves 4, 5 of 3; debugs 6 of 2 and 7 of 6;
    a crossover 8 of 3 and 1; node 9 improves 4. Every finished node is in memory."""
    tree, memory = Tree(), Memory()
    shape = [(1, DRAFT, (ROOT,), 0.70, None), (2, DRAFT, (ROOT,), None, "KeyError: 'a'"),
             (3, DRAFT, (ROOT,), 0.80, None), (4, IMPROVE, (3,), 0.85, None),
             (5, IMPROVE, (3,), 0.75, None), (6, DEBUG, (2,), None, "ValueError: shapes"),
             (7, DEBUG, (6,), None, "MemoryError"), (8, CROSS, (3, 1), 0.82, None),
             (9, IMPROVE, (4,), 0.90, None)]
    for node_id, op, parents, metric, error in shape:
        tree.add(node_id, op, parents)
        tree.finish(node_id, metric)
        parent = tree[parents[0]].metric if parents[0] != ROOT else None
        assert memory.capture(entry(node_id, op, metric, error=error, parents=parents),
                              parent, lower_is_better=False)
    return tree, memory


def ids(entries: list[MemoryEntry]) -> list[int]:
    return [e.node_id for e in entries]


def test_draft_sees_the_sibling_drafts_working_first_then_newest() -> None:
    tree, memory = sample()
    assert ids(memory.scoped(DRAFT, (ROOT,), tree)) == [3, 1, 2]


def test_improve_sees_the_parent_then_its_other_children() -> None:
    tree, memory = sample()
    assert ids(memory.scoped(IMPROVE, (3,), tree)) == [3, 8, 5, 4]


def test_debug_sees_the_debug_chain_back_to_the_node_that_started_it() -> None:
    tree, memory = sample()
    assert ids(memory.scoped(DEBUG, (7,), tree)) == [7, 6, 2]


def test_debug_of_a_non_debug_node_sees_only_that_node() -> None:
    tree, memory = sample()
    assert ids(memory.scoped(DEBUG, (2,), tree)) == [2]


def test_crossover_sees_both_parents() -> None:
    tree, memory = sample()
    assert ids(memory.scoped(CROSS, (9, 1), tree)) == [9, 1]


def test_scoping_skips_nodes_that_memory_does_not_hold() -> None:
    tree, _ = sample()
    fresh = Memory()
    fresh.capture(entry(4, IMPROVE, 0.85, parents=(3,)), 0.80, lower_is_better=False)
    assert ids(fresh.scoped(IMPROVE, (3,), tree)) == [4]


def test_a_first_working_draft_is_kept() -> None:
    assert Memory().capture(entry(1, metric=0.5), None, lower_is_better=False)


def test_a_change_of_at_least_min_delta_is_kept_either_way() -> None:
    memory = Memory(min_delta=0.01)
    assert memory.capture(entry(1, IMPROVE, 0.61), 0.60, lower_is_better=False)
    assert memory.capture(entry(2, IMPROVE, 0.59), 0.60, lower_is_better=False)


def test_a_change_smaller_than_min_delta_is_dropped() -> None:
    assert not Memory(min_delta=0.01).capture(entry(1, IMPROVE, 0.605), 0.60, False)


def test_a_working_node_repeating_a_kept_summary_is_dropped() -> None:
    memory = Memory()
    memory.capture(entry(1, summary="LightGBM on 5 folds"), None, False)
    assert not memory.capture(entry(2, summary="lightgbm on 10  folds."), None, False)


def test_a_failure_with_a_new_cause_is_kept() -> None:
    memory = Memory()
    assert memory.capture(entry(1, metric=None, error="KeyError: 'id'"), None, False)
    assert memory.capture(entry(2, metric=None, error="CUDA out of memory"), None, False)


def test_a_failure_repeating_a_cause_up_to_numbers_and_paths_is_dropped() -> None:
    memory = Memory()
    memory.capture(entry(1, metric=None, error="File /tmp/a/x.py, line 12: ValueError"), None,
                   False)
    assert not memory.capture(entry(2, metric=None, error="file /work/b.py, line 40: ValueError"),
                              None, False)


def test_a_failure_without_a_cause_is_dropped() -> None:
    assert not Memory().capture(entry(1, metric=None, error="  "), None, False)


def test_a_node_already_held_is_not_captured_twice() -> None:
    memory = Memory()
    memory.capture(entry(1), None, False)
    assert not memory.capture(entry(1, summary="other"), None, False)


def test_over_the_cap_the_lowest_value_entry_is_evicted() -> None:
    memory = Memory(cap=2)
    memory.capture(entry(1, metric=0.5), None, False)  # first working: value 1
    memory.capture(entry(2, metric=None, error="oops"), None, False)  # plain failure: 0.25
    assert memory.capture(entry(3, metric=None, error="KeyError: 'x'"), None, False)  # 0.4
    assert ids(memory.entries) == [1, 3]


def test_a_new_entry_worth_least_is_evicted_at_once_and_reported_as_dropped() -> None:
    memory = Memory(cap=1)
    memory.capture(entry(1, metric=0.5), None, False)
    assert not memory.capture(entry(2, metric=None, error="oops"), None, False)
    assert ids(memory.entries) == [1]


def test_equal_values_evict_the_oldest_first() -> None:
    memory = Memory(cap=2)
    for node_id, error in [(1, "a"), (2, "b"), (3, "c")]:
        memory.capture(entry(node_id, metric=None, error=error), None, False)
    assert ids(memory.entries) == [2, 3]


def test_a_gain_is_worth_more_than_an_equal_loss() -> None:
    memory = Memory()
    memory.capture(entry(1, IMPROVE, 0.51), 0.50, lower_is_better=True)  # worse when lower wins
    memory.capture(entry(2, IMPROVE, 0.49), 0.50, lower_is_better=True)
    assert memory.value(2) > memory.value(1)


def test_normalise_ignores_case_numbers_paths_and_spacing() -> None:
    assert normalise("Error at /a/b.py:12  took 3.5s") == normalise("error at /c.py:99 took 1s")


def test_memory_round_trips_through_json() -> None:
    _, memory = sample()
    again = Memory.from_state(json.loads(json.dumps(memory.to_state())))
    assert again.entries == memory.entries
    assert [again.value(e.node_id) for e in again.entries] == \
        [memory.value(e.node_id) for e in memory.entries]


def test_render_lists_entries_in_the_given_order_under_the_header() -> None:
    _, memory = sample()
    text = render([memory.get(3) or entry(3), memory.get(2) or entry(2)], 4096, COUNTER,
                  header="## Memory")
    assert text.startswith("## Memory\n\n- Node 3 (draft): metric 0.8.")
    assert text.index("Node 3") < text.index("Node 2")
    assert "buggy, cause: KeyError: 'a'" in text


def test_render_shows_the_parent_metric_of_a_change() -> None:
    _, memory = sample()
    assert "metric 0.85 (parent 0.8)" in render([memory.get(4) or entry(4)], 4096, COUNTER)


def test_render_gives_nothing_for_no_entries_or_no_room() -> None:
    assert render([], 4096, COUNTER) == ""
    assert render([entry(1)], 5, COUNTER) == ""


def test_render_cuts_the_last_entry_that_partly_fits() -> None:
    long = entry(1, summary="word " * 400)
    text = render([long, entry(2)], 60, COUNTER)
    assert text.endswith(ELLIPSIS)
    assert "Node 2" not in text
    assert COUNTER.count(text) <= 60


def test_render_cuts_an_entry_only_when_a_useful_fragment_fits() -> None:
    huge = [entry(1, summary="word " * 400)]
    least = COUNTER.count("## M\n\n" + ELLIPSIS) + MIN_FRAGMENT_TOKENS
    assert render(huge, least - 1, COUNTER, header="## M") == ""
    assert render(huge, least, COUNTER, header="## M").endswith(ELLIPSIS)


entries_strategy = st.lists(
    st.builds(entry, st.integers(1, 10_000), st.sampled_from(list(Operator)),
              st.one_of(st.none(), st.floats(-1e6, 1e6)),
              st.text(max_size=200), st.one_of(st.none(), st.text(max_size=80))),
    max_size=12)


@settings(max_examples=120, deadline=None)
@given(entries_strategy, st.integers(0, 500))
def test_render_never_exceeds_the_budget(entries: list[MemoryEntry], budget: int) -> None:
    assert COUNTER.count(render(entries, budget, COUNTER)) <= budget
