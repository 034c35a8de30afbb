"""The offline coder's crossover: the combination rules, the blend the scripts choose on
out-of-fold predictions, and real runs of the child scripts."""

from __future__ import annotations

import asyncio
import json
import math
import random
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, replace
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn import metrics

from mlmaster_daemon.coders.offline.changes import CHANGE_FIELDS
from mlmaster_daemon.coders.offline.coder import OfflineCoder
from mlmaster_daemon.coders.offline.crossover import cross
from mlmaster_daemon.coders.offline.improve import Evidence
from mlmaster_daemon.coders.offline.recipe import (
    MAX_PARTNERS,
    Recipe,
    default_recipe,
    families_for,
    parse_recipe,
    parse_summary,
)
from mlmaster_daemon.coders.offline.render import render
from mlmaster_daemon.coders.offline.script_validate import BLEND
from mlmaster_daemon.coders.protocol import CodeRequest, CodeResponse
from mlmaster_daemon.models import Operator
from mlmaster_daemon.tasks.competition import load_task
from mlmaster_daemon.tasks.examples import build_example
from mlmaster_daemon.tasks.spec import Metric, TaskSpec
from tests.offline_runs import Run, run_script

LLM_SCRIPT = "import pandas as pd\n# written by an LLM, no recipe header\nprint('hello')\n"
MEMBER_LINE = re.compile(r"^member=\d+ family=(\w+) oof=([-\d.]+)", re.MULTILINE)



def _crossover(task: TaskSpec, a: str, b: str, node_id: int = 40) -> CodeResponse:
    request = CodeRequest(Operator.CROSSOVER, task, node_id, "", parent_code=a,
                          other_parent_code=b, parent_output="ok", other_parent_output="ok")
    return asyncio.run(OfflineCoder(seed=3).generate(request))



def _check_valid(run: Run) -> float:
    assert run.returncode == 0, run.output[-3000:]
    sample = pd.read_csv(run.task.public_dir / run.task.sample_submission_file)
    submission = pd.read_csv(run.workspace / "submission" / "submission.csv")
    assert list(submission.columns) == list(sample.columns)
    assert len(submission) == len(sample)
    assert not submission.isna().any().any()
    metric = json.loads((run.workspace / "metrics.json").read_text())["validation_metric"]
    assert isinstance(metric, float) and math.isfinite(metric)
    return float(metric)


@pytest.fixture(scope="module")
def tasks(tmp_path_factory: pytest.TempPathFactory) -> dict[str, TaskSpec]:
    root = tmp_path_factory.mktemp("crossover-tasks")
    return {name: load_task(build_example(name, root / name))
            for name in ("breast_cancer", "wine", "diabetes")}


def _parents(tasks: dict[str, TaskSpec]) -> dict[str, tuple[TaskSpec, str, str]]:
    """Each case's task and the code of parents A and B."""
    binary, multi, reg = tasks["breast_cancer"], tasks["wine"], tasks["diabetes"]
    linear = replace(default_recipe("ridge", 6), impute=True)
    return {
        "blend": (binary, render(default_recipe("lightgbm", 5), binary),
                  render(replace(default_recipe("logistic_regression", 6), impute=True),
                         binary)),
        "regression_blend": (reg, render(default_recipe("extra_trees", 1), reg),
                             render(linear, reg)),
        "improve_one": (multi, LLM_SCRIPT, render(default_recipe("hist_gradient_boosting", 7),
                                                  multi)),
    }


@pytest.fixture(scope="module")
def runs(tasks: dict[str, TaskSpec], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Run]:
    root = tmp_path_factory.mktemp("crossover-runs")
    cases = _parents(tasks)
    with ThreadPoolExecutor(max_workers=len(cases)) as pool:
        futures = {
            name: pool.submit(run_script, task, _crossover(task, a, b), root / name)
            for name, (task, a, b) in cases.items()
        }
        return {name: future.result() for name, future in futures.items()}


@pytest.mark.parametrize("case", ["blend", "regression_blend"])
def test_two_recipes_are_fitted_and_blended_only_when_the_blend_beats_both(
    runs: dict[str, Run], case: str
) -> None:
    run = runs[case]
    metric = _check_valid(run)
    members = {family: float(score) for family, score in MEMBER_LINE.findall(run.output)}
    assert len(members) == 2
    lower = run.task.metric.lower_is_better
    best = min(members.values()) if lower else max(members.values())
    if "blend: kept" in run.output:
        assert (metric < best) if lower else (metric > best)
    else:
        assert "blend: not kept" in run.output
        assert f"{metric:.6f}" == f"{best:.6f}"
    summary = parse_summary(run.response.summary)
    assert (summary["op"], summary["rule"]) == ("crossover", "blend")


def test_the_blend_child_keeps_a_and_adds_bs_model_as_a_partner(runs: dict[str, Run]) -> None:
    child = parse_recipe(runs["blend"].response.code)
    assert child is not None
    assert child.models == ("lightgbm", "logistic_regression")
    assert child.alone == default_recipe("lightgbm", 5)
    assert child.partners[0].impute and child.partners[0].seed == 6
    assert parse_summary(runs["blend"].response.summary)["parents"] == (
        "lightgbm+logistic_regression")


def test_a_parent_without_recipe_falls_back_to_improving_the_other(
    runs: dict[str, Run],
) -> None:
    run = runs["improve_one"]
    summary = parse_summary(run.response.summary)
    assert summary["rule"] == "improve_one"
    assert summary["parents"] == "unknown+hist_gradient_boosting"
    child = parse_recipe(run.response.code)
    assert child is not None
    before = asdict(default_recipe("hist_gradient_boosting", 7))
    changed = {key for key, value in asdict(child).items() if before[key] != value}
    assert changed - {"changes"} <= CHANGE_FIELDS[summary["change"]]
    assert "unknown" in run.response.plan and "hist_gradient_boosting" in run.response.plan
    _check_valid(run)


def test_no_recipe_at_all_gives_the_safe_baseline(tasks: dict[str, TaskSpec]) -> None:
    # The safe baseline's own runs are covered by test_offline_coder; only the choice is here.
    response = _crossover(tasks["wine"], LLM_SCRIPT, "")
    summary = parse_summary(response.summary)
    assert (summary["rule"], summary["parents"]) == ("safe_baseline", "unknown+unknown")
    child = parse_recipe(response.code)
    assert child is not None and child.family == "hist_gradient_boosting" and child.impute


def test_generation_is_deterministic(tasks: dict[str, TaskSpec]) -> None:
    task, a, b = _parents(tasks)["blend"]
    assert _crossover(task, a, b) == _crossover(task, a, b)


def test_a_parent_model_the_other_already_has_gets_one_change_first(
    tasks: dict[str, TaskSpec],
) -> None:
    task = tasks["breast_cancer"]
    parent = default_recipe("extra_trees", 9)
    response = _crossover(task, render(parent, task), render(replace(parent, seed=10), task))
    child = parse_recipe(response.code)
    assert child is not None and child.alone == parent
    change = parse_summary(response.summary)["change"]
    before, after = asdict(parent), asdict(child.partners[0])
    assert {key for key in before if before[key] != after[key]} - {"changes", "seed"} <= (
        CHANGE_FIELDS[change])


def _blend(y: np.ndarray[Any, Any], predictions: list[np.ndarray[Any, Any]],
           ) -> tuple[list[float], str]:
    """The scripts' own `blend` on out-of-fold `predictions` of a binary ROC AUC task."""
    lines: list[str] = []
    space: dict[str, Any] = {
        "np": np, "y": y, "HIGHER_IS_BETTER": True, "METRIC": "roc_auc",
        "FOLDS": [(np.arange(0), np.arange(len(y)))],
        "evaluate": lambda truth, pred: float(metrics.roc_auc_score(truth, pred)),
        "print": lines.append,
    }
    exec(BLEND, space)
    results = [{"name": f"m{i}", "oof": pred, "done": [0]} for i, pred in enumerate(predictions)]
    weights, _ = space["blend"](results)
    return [float(w) for w in weights], "\n".join(lines)


def test_the_blend_keeps_a_mix_of_complementary_members() -> None:
    rng = np.random.default_rng(0)
    signal_a, signal_b = rng.normal(size=400), rng.normal(size=400)
    truth = signal_a + signal_b
    y = (truth + rng.normal(scale=0.3, size=400) > 0).astype(int)
    weights, said = _blend(y, [signal_a, signal_b])
    assert all(w > 0 for w in weights) and math.isclose(sum(weights), 1.0)
    assert "blend: kept" in said


def test_the_blend_is_dropped_when_no_mix_beats_the_best_member() -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 400)
    perfect = y + rng.uniform(0, 0.5, 400)
    weights, said = _blend(y, [rng.normal(size=400), perfect])
    assert weights == [0.0, 1.0]
    assert "blend: not kept" in said and "submitting m1's predictions" in said


def _recipes(regression: bool) -> st.SearchStrategy[Recipe]:
    return st.builds(
        Recipe,
        family=st.sampled_from(families_for(regression)),
        n_estimators=st.sampled_from([100, 200, 300]),
        max_depth=st.sampled_from([None, 3, 6]),
        min_samples_leaf=st.sampled_from([1, 2, 4]),
        reg_strength=st.sampled_from([0.0, 0.3, 1.0, 3.0]),
        impute=st.booleans(),
        scale=st.booleans(),
        dates=st.booleans(),
        partners=st.lists(st.builds(Recipe, family=st.sampled_from(families_for(regression))),
                          max_size=2).map(tuple),
        seed=st.integers(1, 99),
    )


@settings(max_examples=150, deadline=None)
@given(st.data(), st.booleans(), st.integers(0, 1000))
def test_any_two_recipes_cross_by_the_documented_rules(
    data: st.DataObject, regression: bool, seed: int
) -> None:
    a = data.draw(_recipes(regression))
    b = data.draw(_recipes(regression))
    metric = Metric.RMSE if regression else Metric.ROC_AUC
    evidence = (Evidence(metric), Evidence(metric))
    child = cross(a, b, evidence, (), random.Random(seed))
    assert child == cross(a, b, evidence, (), random.Random(seed))
    assert child.rule == "blend"
    assert child.recipe.alone == a.alone
    assert len(child.recipe.partners) <= MAX_PARTNERS
    partner = child.recipe.partners[0]
    if child.change is None:
        assert partner == b.alone
    else:
        assert replace(partner, changes=()) != replace(b.alone, seed=partner.seed)
