"""Hierarchical cognitive caching: stagnation, phase promotion, context hits, L3 lessons."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from mlmaster_daemon.models import Operator
from mlmaster_daemon.search.hcc import (
    DeterministicSummariser,
    HierarchicalCache,
    L2Summary,
    Lesson,
    StagnationDetector,
    TaskProfile,
    retrieve,
    similarity,
)
from mlmaster_daemon.search.memory import MemoryEntry
from mlmaster_daemon.search.tree import ROOT, Tree
from mlmaster_daemon.tokenizer import TiktokenCounter

COUNTER = TiktokenCounter()
TABULAR = TaskProfile.build("Tabular", "AUC", True, 10_000, 30)


def entry(node_id: int, metric: float | None, operator: Operator = Operator.DRAFT,
          parents: tuple[int, ...] = (ROOT,), error: str | None = None,
          summary: str = "") -> MemoryEntry:
    return MemoryEntry(node_id, operator, parents, summary or f"approach {node_id}", metric,
                       metric is None, error, 0, node_id)


def feed(detector: StagnationDetector, bests: list[float | None], lower: bool) -> list[bool]:
    return [detector.observe(step, best, lower) for step, best in enumerate(bests, 1)]


def test_detector_fires_after_a_window_without_gain_and_not_before() -> None:
    fired = feed(StagnationDetector(window=3, min_gain=0.01, relative=False),
                 [0.5, 0.5, 0.5, 0.5], lower=False)
    assert fired == [False, False, False, True]


def test_a_first_working_node_counts_as_progress() -> None:
    fired = feed(StagnationDetector(window=2, relative=False), [None, 0.5, 0.5, 0.5],
                 lower=False)
    assert fired == [False, False, False, True]


def test_a_window_with_no_working_node_is_stagnation() -> None:
    assert feed(StagnationDetector(window=2), [None, None], lower=False) == [False, True]


def test_a_gain_above_min_gain_keeps_the_phase_open_when_higher_is_better() -> None:
    fired = feed(StagnationDetector(window=2, min_gain=0.01, relative=False),
                 [0.50, 0.50, 0.52, 0.54], lower=False)
    assert not any(fired)


def test_a_gain_above_min_gain_keeps_the_phase_open_when_lower_is_better() -> None:
    fired = feed(StagnationDetector(window=2, min_gain=0.01, relative=False),
                 [0.50, 0.50, 0.48, 0.46], lower=True)
    assert not any(fired)


def test_a_gain_of_exactly_min_gain_is_stagnation() -> None:
    fired = feed(StagnationDetector(window=1, min_gain=0.25, relative=False),
                 [1.0, 1.25], lower=False)
    assert fired == [False, True]


def test_relative_gain_is_scaled_by_the_reference() -> None:
    bests: list[float | None] = [100.0, 100.05]
    assert feed(StagnationDetector(window=1, min_gain=1e-3, relative=True), bests, False) == \
        [False, True]
    assert feed(StagnationDetector(window=1, min_gain=1e-3, relative=False), bests, False) == \
        [False, False]


def test_after_firing_the_detector_waits_a_full_window_again() -> None:
    fired = feed(StagnationDetector(window=2), [0.5, 0.5, 0.5, 0.5, 0.5], lower=False)
    assert fired == [False, False, True, False, True]


def test_detector_state_round_trips() -> None:
    detector = StagnationDetector(window=3)
    feed(detector, [0.1, 0.2], lower=False)
    again = StagnationDetector.from_state(json.loads(json.dumps(detector.to_state())))
    assert feed(again, [0.2, 0.2, 0.2], False) == feed(detector, [0.2, 0.2, 0.2], False)
    assert again.last_improved_step == detector.last_improved_step == 2


def stalled_cache(window: int = 3) -> HierarchicalCache:
    return HierarchicalCache(detector=StagnationDetector(window=window, relative=False))


def test_stagnation_promotes_l1_into_an_l2_summary_and_starts_a_new_phase() -> None:
    cache = stalled_cache()
    assert cache.record(entry(1, 0.7), None, False) is None
    assert cache.record(entry(2, None, error="KeyError: 'x'"), None, False) is None
    assert cache.record(entry(3, 0.6), None, False) is None
    summary = cache.record(entry(4, 0.5), None, False)
    assert summary is not None
    assert (summary.phase, summary.best_metric, summary.best_node_id) == (0, 0.7, 1)
    assert (summary.n_nodes, summary.n_worked, summary.n_failed) == (4, 3, 1)
    assert cache.l1 == [] and cache.l2 == [summary] and cache.phase == 1


def test_recorded_entries_carry_the_phase_and_parent_metric() -> None:
    cache = stalled_cache(window=1)
    cache.record(entry(1, 0.5), None, False)
    cache.record(entry(2, 0.5), None, False)  # stalls: phase 0 closes
    cache.record(entry(3, 0.6, Operator.IMPROVE, (1,)), 0.5, False)
    assert (cache.l1[0].phase, cache.l1[0].parent_metric) == (1, 0.5)


def test_l1_keeps_only_the_most_recent_traces() -> None:
    cache = HierarchicalCache(l1_cap=2)
    for i in (1, 2, 3):
        cache.record(entry(i, 0.1 * i), None, False)
    assert [e.node_id for e in cache.l1] == [2, 3]


def test_deterministic_summary_names_what_worked_recurring_failures_and_no_gains() -> None:
    text = DeterministicSummariser().summarise_phase([
        entry(1, 0.80, summary="LightGBM baseline"),
        entry(2, 0.78, Operator.IMPROVE, summary="add target encoding"),
        entry(3, None, error="line 3: KeyError 'id'"),
        entry(4, None, error="line 9: KeyError 'id'"),
    ], lower_is_better=False)
    assert "best 0.8 (node 1)" in text
    assert "Worked: LightGBM baseline -> 0.8" in text
    assert "Recurring failure (x2): line 3: KeyError 'id'" in text
    assert text.splitlines()[-1].startswith("Next: build on node 1")


def test_deterministic_summary_lists_changes_that_did_not_beat_their_parent() -> None:
    worse = MemoryEntry(2, Operator.IMPROVE, (1,), "bigger model", 0.7, False, parent_metric=0.8)
    text = DeterministicSummariser().summarise_phase([worse], lower_is_better=False)
    assert "Did not help: bigger model -> 0.7 vs parent 0.8" in text


def sample_tree() -> Tree:
    tree = Tree()
    for node_id, op, parents in [(1, Operator.DRAFT, (ROOT,)), (2, Operator.IMPROVE, (1,)),
                                 (3, Operator.IMPROVE, (1,))]:
        tree.add(node_id, op, parents)
        tree.finish(node_id, 0.5)
    return tree


def test_context_prefers_l1_over_l2_when_room_is_short() -> None:
    cache = stalled_cache(window=1)
    cache.record(entry(1, 0.5, summary="old phase draft"), None, False)
    cache.record(entry(9, 0.5, summary="old phase other"), None, False)  # closes phase 0
    cache.record(entry(2, 0.6, Operator.IMPROVE, (1,), summary="added features"), 0.5, False)
    full = cache.context(Operator.IMPROVE, (1,), sample_tree(), 4096, COUNTER)
    assert full.index("Node 2") < full.index("## Earlier phases")
    short = cache.context(Operator.IMPROVE, (1,), sample_tree(), 40, COUNTER)
    assert "Node 2" in short and "Earlier phases" not in short


def test_context_falls_back_to_l2_when_scoped_l1_is_empty() -> None:
    cache = stalled_cache(window=1)
    cache.record(entry(1, 0.5, summary="gradient boosting"), None, False)
    cache.record(entry(2, 0.5, Operator.IMPROVE, (1,)), 0.5, False)  # closes phase 0
    text = cache.context(Operator.IMPROVE, (1,), sample_tree(), 4096, COUNTER)
    assert text.startswith("## Earlier phases\n\nPhase 0:")
    assert "gradient boosting" in text


def test_context_includes_prefetched_lessons() -> None:
    cache = HierarchicalCache()
    cache.prefetch([Lesson("Target-encode high-cardinality columns", TABULAR, 1.0)], TABULAR)
    text = cache.context(Operator.DRAFT, (ROOT,), Tree(), 4096, COUNTER)
    assert "## Lessons from similar tasks" in text and "Target-encode" in text


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.one_of(st.none(), st.floats(0, 1)), st.text(max_size=150)),
                max_size=10),
       st.integers(0, 500), st.sampled_from(list(Operator)))
def test_context_never_exceeds_the_budget(nodes: list[tuple[float | None, str]], budget: int,
                                          operator: Operator) -> None:
    tree, cache = Tree(), stalled_cache(window=2)
    cache.prefetch([Lesson("Use stratified folds " * 5, TABULAR, 0.5)])
    for node_id, (metric, summary) in enumerate(nodes, 1):
        tree.add(node_id, Operator.DRAFT, (ROOT,))
        tree.finish(node_id, metric)
        cache.record(entry(node_id, metric, summary=summary, error=summary or None), None, False)
    parents = (len(nodes),) if nodes and operator is not Operator.DRAFT else (ROOT,)
    text = cache.context(operator, parents, tree, budget, COUNTER)
    assert COUNTER.count(text) <= budget


def test_similarity_is_one_for_identical_profiles_and_lower_for_different_ones() -> None:
    images = TaskProfile.build("image", "accuracy", True, 50_000, 0)
    assert similarity(TABULAR, TABULAR) == 1.0
    assert 0.0 <= similarity(TABULAR, images) < similarity(
        TABULAR, TaskProfile.build("tabular", "auc", True, 20_000, 40))


def test_retrieval_ranks_similar_tasks_first_then_by_score() -> None:
    regression = TaskProfile.build("tabular", "rmse", False, 1_000_000, 300)
    lessons = [Lesson("far", regression, 1.0), Lesson("near low", TABULAR, 0.2),
               Lesson("near high", TABULAR, 0.9)]
    assert [le.text for le in retrieve(lessons, TABULAR, 2)] == ["near high", "near low"]


def test_retrieval_drops_repeated_lessons() -> None:
    lessons = [Lesson("Use 5 folds", TABULAR, 0.9), Lesson("use 10 folds", TABULAR, 0.5)]
    assert [le.text for le in retrieve(lessons, TABULAR, 5)] == ["Use 5 folds"]


def test_promote_task_distils_l2_into_ranked_lessons_for_the_profile() -> None:
    cache = stalled_cache(window=2)
    cache.record(entry(1, 0.7, summary="LightGBM baseline"), None, False)
    cache.record(entry(2, None, error="KeyError: 'id'"), None, False)
    cache.record(entry(3, None, error="KeyError: 'id'"), None, False)  # closes phase 0
    cache.record(entry(4, 0.8, summary="CatBoost with target encoding"), None, False)
    lessons = cache.promote_task(TABULAR)
    assert cache.l1 == [] and len(cache.l2) == 2
    texts = [le.text for le in lessons]
    assert texts[0] == "Worked on auc: CatBoost with target encoding -> 0.8"
    assert "Avoid: KeyError: 'id'" in texts
    assert all(le.profile == TABULAR for le in lessons)
    assert [le.score for le in lessons] == sorted((le.score for le in lessons), reverse=True)


def test_lessons_fall_back_to_summary_first_lines_for_free_text_summaries() -> None:
    summary = L2Summary(0, "Boosting beat linear models.\nMore text.", 0.8, 1, 3, 2, 1)
    assert DeterministicSummariser().distil_lessons([summary], TABULAR) == \
        ["Boosting beat linear models."]


def test_cache_state_round_trips_through_json() -> None:
    cache = stalled_cache(window=2)
    cache.prefetch([Lesson("Scale features", TABULAR, 0.7)])
    for i, metric in enumerate([0.5, 0.5, 0.5, 0.6], 1):
        cache.record(entry(i, metric), None, True)
    again = HierarchicalCache.from_state(json.loads(json.dumps(cache.to_state())))
    assert json.dumps(again.to_state()) == json.dumps(cache.to_state())
    assert (again.l1, again.l2, again.lessons, again.phase) == \
        (cache.l1, cache.l2, cache.lessons, cache.phase)
    assert again.record(entry(5, 0.6), None, True) == cache.record(entry(5, 0.6), None, True)
