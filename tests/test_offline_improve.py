"""The offline coder's improve step reads its parent's run: facts, evidence-driven changes, the
round cap sized from the parent's best iteration, and each change's bounded edit (no scripts)."""

from __future__ import annotations

import random
from dataclasses import asdict, replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlmaster_daemon.coders.offline.changes import CHANGE_FIELDS, INVERSE, apply_change
from mlmaster_daemon.coders.offline.coder import OfflineCoder
from mlmaster_daemon.coders.offline.facts import RunFacts, read_facts
from mlmaster_daemon.coders.offline.improve import Evidence, applicable_changes, choose_change
from mlmaster_daemon.coders.offline.plan import script_plan
from mlmaster_daemon.coders.offline.recipe import (
    ALL_FAMILIES,
    default_recipe,
    families_for,
    parse_recipe,
    parse_summary,
)
from mlmaster_daemon.coders.offline.render import render
from mlmaster_daemon.coders.protocol import CodeRequest
from mlmaster_daemon.models import Operator
from mlmaster_daemon.tasks.spec import PROJECT_METRICS, Metric, TaskSpec

# What the scripts print for the next node, as the tail of a real run shows them.
RUN_TAIL = """\
columns: rows=640 numeric=2 categorical=1 date=1 text=1 missing=2
target: classes=2 imbalance=1.03
member=1 family=lightgbm oof=0.765789 folds=5/5 stopped=patience seconds=0.2 \
best_iteration=36 rounds_cap=3000
member=2 family=knn oof=0.7 folds=5/5 stopped=done seconds=0.1
validation_metric=0.765789
"""


def _task(metric: Metric = Metric.ROC_AUC) -> TaskSpec:
    root = Path("/nonexistent/task")
    return TaskSpec(name="unit", root=root, public_dir=root / "public", private_dir=None,
                    description="", metric=metric, lower_is_better=metric.lower_is_better,
                    target="label", id_column="row_id")


def _tail(**members: str) -> str:
    """RUN_TAIL with the member line's fields replaced."""
    line = next(ln for ln in RUN_TAIL.splitlines() if ln.startswith("member=1 "))
    fields = dict(part.split("=", 1) for part in line.split())
    fields.update(members)
    new = " ".join(f"{key}={value}" for key, value in fields.items())
    return RUN_TAIL.replace(line, new)


def test_facts_are_read_from_the_machine_readable_lines() -> None:
    facts = read_facts("noise\n" + RUN_TAIL)
    assert (facts.rows, facts.categorical, facts.dates, facts.texts, facts.missing) == (
        640, 1, 1, 1, 2)
    assert (facts.classes, facts.imbalance) == (2, 1.03)
    assert (facts.best_iteration, facts.rounds_cap, facts.stopped) == (36, 3000, "patience")
    assert facts.validation_metric == 0.765789
    assert not facts.time_bound and not facts.hit_rounds_cap


def test_output_of_other_scripts_gives_no_facts_and_rules_out_nothing() -> None:
    facts = read_facts("epoch 3 loss 0.2\nvalidation_metric=0.5\n")
    assert facts.dates is None and facts.best_iteration is None
    assert facts.has("dates") and facts.has("texts")


@pytest.mark.parametrize(("tail", "change"), [
    (RUN_TAIL, "parse_dates"),
    (RUN_TAIL.replace("date=1", "date=0"), "text_tfidf"),
    (RUN_TAIL.replace("date=1 text=1", "date=0 text=0").replace("stopped=patience",
                                                               "stopped=cap"),
     "more_estimators"),
    (RUN_TAIL.replace("date=1 text=1", "date=0 text=0") + "time budget: lightgbm stopped "
     "adding rounds in fold 1\n", "higher_learning_rate"),
])
def test_the_parent_run_calls_for_its_change_first(tail: str, change: str) -> None:
    parent = default_recipe("lightgbm", 1)
    evidence = Evidence(Metric.ROC_AUC, read_facts(tail))
    for seed in range(5):
        assert choose_change(parent, (), random.Random(seed), evidence) == change


def test_a_change_already_tried_by_a_sibling_is_not_urgent_again() -> None:
    evidence = Evidence(Metric.ROC_AUC, read_facts(RUN_TAIL))
    picked = choose_change(default_recipe("lightgbm", 1), {"parse_dates"}, random.Random(0),
                           evidence)
    assert picked == "text_tfidf"


def test_a_lower_learning_rate_sizes_the_round_cap_from_the_parents_best_iteration() -> None:
    parent = default_recipe("lightgbm", 1)
    facts = read_facts(_tail(best_iteration="140"))
    step = apply_change(parent, "lower_learning_rate", facts, families_for(False),
                        random.Random(0))
    # Half the rate needs about twice the rounds (280); the cap leaves room for twice that.
    assert (step.recipe.learning_rate, step.recipe.n_estimators) == (0.025, 560)
    assert "best iteration 140" in step.description


def test_columns_the_data_lacks_rule_out_their_feature_work() -> None:
    tail = RUN_TAIL.replace("categorical=1 date=1 text=1 missing=2",
                            "categorical=0 date=0 text=0 missing=0")
    evidence = Evidence(Metric.ROC_AUC, read_facts(tail))
    changes = applicable_changes(default_recipe("lightgbm", 1), evidence)
    for ruled_out in ("parse_dates", "text_tfidf", "categorical_encoding",
                      "missing_indicators"):
        assert ruled_out not in changes


def test_a_child_does_not_undo_its_parents_last_change() -> None:
    parent = replace(default_recipe("lightgbm", 1), changes=("more_capacity",))
    assert "less_capacity" not in applicable_changes(parent, Evidence(Metric.RMSE))
    assert "more_capacity" in applicable_changes(parent, Evidence(Metric.RMSE))


def test_class_weights_are_offered_only_where_the_metric_counts_per_class() -> None:
    parent = default_recipe("lightgbm", 1)
    assert "class_weight" in applicable_changes(parent, Evidence(Metric.F1))
    assert "class_weight" not in applicable_changes(parent, Evidence(Metric.LOG_LOSS))


facts_strategy = st.builds(
    RunFacts,
    dates=st.none() | st.integers(0, 2),
    texts=st.none() | st.integers(0, 2),
    categorical=st.none() | st.integers(0, 2),
    missing=st.none() | st.integers(0, 2),
    best_iteration=st.none() | st.integers(1, 5000),
    stopped=st.sampled_from([None, "patience", "cap", "time"]),
    time_bound=st.booleans(),
)


@settings(max_examples=200, deadline=None)
@given(family=st.sampled_from(sorted(ALL_FAMILIES)), metric=st.sampled_from(PROJECT_METRICS),
       facts=facts_strategy, last=st.sampled_from([None, *sorted(INVERSE)]),
       seed=st.integers(0, 1000), penalty=st.sampled_from([None, 0.0, 1e-4, 1.0, 1e4]))
def test_every_applicable_change_edits_only_its_fields_and_is_recorded(
    family: str, metric: Metric, facts: RunFacts, last: str | None, seed: int,
    penalty: float | None
) -> None:
    # Penalties at the ends of their ranges too: a change that cannot move one is not offered.
    parent = replace(default_recipe(family, 5), changes=() if last is None else (last,))
    if penalty is not None:
        parent = replace(parent, reg_strength=penalty)
    evidence = Evidence(metric, facts)
    changes = applicable_changes(parent, evidence)
    assert changes and (last is None or INVERSE[last] not in changes)
    for change in changes:
        step = apply_change(parent, change, facts, families_for(metric.is_regression),
                            random.Random(seed))
        before, after = asdict(parent), asdict(step.recipe)
        changed = {key for key in before if before[key] != after[key]} - {"changes"}
        assert changed and changed <= CHANGE_FIELDS[change], change
        assert step.recipe.changes[-1] == change
        assert parse_recipe(render(step.recipe, _task(metric))) == step.recipe


def test_the_script_budget_ends_well_inside_the_node_limit_and_shrinks_when_time_is_short(
) -> None:
    base = CodeRequest(Operator.DRAFT, _task(), 1, "", cv_folds=3, cv_seed=99)
    roomy = script_plan(replace(base, node_timeout_s=600.0, time_left_s=3600.0))
    short = script_plan(replace(base, node_timeout_s=600.0, time_left_s=120.0))
    tiny = script_plan(replace(base, node_timeout_s=10.0))
    assert (roomy.cv_folds, roomy.cv_seed) == (3, 99)
    assert roomy.time_budget_s <= 0.6 * 600
    assert short.time_budget_s < roomy.time_budget_s
    assert 0 < tiny.time_budget_s <= 0.6 * 10
    # No fold starts past most of the limit, whatever the budget.
    assert tiny.time_budget_s < tiny.hard_stop_s <= 0.8 * 10


async def test_an_improve_response_names_the_change_and_the_evidence() -> None:
    parent = default_recipe("lightgbm", 2)
    request = CodeRequest(Operator.IMPROVE, _task(), 7, "", parent_code=render(parent, _task()),
                          parent_output=RUN_TAIL, cv_seed=5)
    response = await OfflineCoder(seed=4).generate(request)
    assert parse_summary(response.summary)["change"] == "parse_dates"
    child = parse_recipe(response.code)
    assert child is not None and child.dates and child.changes == ("parse_dates",)
    assert "parse_dates" in response.plan and "CV_SEED = 5\n" in response.code


def test_a_model_without_lightgbm_is_blended_with_lightgbm() -> None:
    parent = replace(default_recipe("extra_trees", 1), impute=True)
    step = apply_change(parent, "ensemble", RunFacts(), families_for(False), random.Random(0))
    assert step.recipe.models == ("extra_trees", "lightgbm")
    picks = [choose_change(parent, (), random.Random(seed), Evidence(Metric.ROC_AUC))
             for seed in range(40)]
    assert max(set(picks), key=picks.count) == "ensemble"
