"""The offline coder's crossover: the combination rules, and real runs of the child scripts."""

from __future__ import annotations

import asyncio
import json
import math
import random
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlmaster_daemon.coders.offline.coder import OfflineCoder
from mlmaster_daemon.coders.offline.crossover import (
    DATA_HANDLING,
    HYPERPARAMETERS,
    cross,
    regularisation,
)
from mlmaster_daemon.coders.offline.improve import CHANGE_FIELDS
from mlmaster_daemon.coders.offline.recipe import (
    Recipe,
    default_recipe,
    families_for,
    parse_recipe,
    parse_summary,
)
from mlmaster_daemon.coders.offline.render import render
from mlmaster_daemon.coders.protocol import CodeRequest, CodeResponse
from mlmaster_daemon.models import Operator
from mlmaster_daemon.tasks.competition import load_task
from mlmaster_daemon.tasks.examples import build_example
from mlmaster_daemon.tasks.spec import TaskSpec

RUN_TIMEOUT_S = 120
LLM_SCRIPT = "import pandas as pd\n# written by an LLM, no recipe header\nprint('hello')\n"


@dataclass(frozen=True)
class Run:
    task: TaskSpec
    response: CodeResponse
    workspace: Path
    returncode: int
    output: str


def _crossover(task: TaskSpec, a: str, b: str, node_id: int = 40) -> CodeResponse:
    request = CodeRequest(Operator.CROSSOVER, task, node_id, "", parent_code=a,
                          other_parent_code=b, parent_output="ok", other_parent_output="ok")
    return asyncio.run(OfflineCoder(seed=3).generate(request))


def _run_one(task: TaskSpec, response: CodeResponse, workspace: Path) -> Run:
    workspace.mkdir()
    (workspace / "input").symlink_to(task.public_dir, target_is_directory=True)
    (workspace / "solution.py").write_text(response.code)
    done = subprocess.run([sys.executable, "solution.py"], cwd=workspace, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          timeout=RUN_TIMEOUT_S, check=False)
    return Run(task, response, workspace, done.returncode, done.stdout)


def _check_valid(run: Run) -> None:
    assert run.returncode == 0, run.output[-3000:]
    sample = pd.read_csv(run.task.public_dir / run.task.sample_submission_file)
    submission = pd.read_csv(run.workspace / "submission" / "submission.csv")
    assert list(submission.columns) == list(sample.columns)
    assert len(submission) == len(sample)
    assert not submission.isna().any().any()
    metric = json.loads((run.workspace / "metrics.json").read_text())["validation_metric"]
    assert isinstance(metric, float) and math.isfinite(metric)


@pytest.fixture(scope="module")
def tasks(tmp_path_factory: pytest.TempPathFactory) -> dict[str, TaskSpec]:
    root = tmp_path_factory.mktemp("crossover-tasks")
    return {name: load_task(build_example(name, root / name))
            for name in ("breast_cancer", "wine", "diabetes")}


def _parents(tasks: dict[str, TaskSpec]) -> dict[str, tuple[TaskSpec, str, str]]:
    """Each case's task and the code of parents A and B."""
    binary, multi, reg = tasks["breast_cancer"], tasks["wine"], tasks["diabetes"]
    loose = replace(default_recipe("random_forest", 1), impute=True, feature_engineering=True)
    tight = replace(default_recipe("random_forest", 2), impute=True, min_samples_leaf=4,
                    max_depth=8, n_estimators=150)
    return {
        "ensemble": (binary, render(default_recipe("lightgbm", 5), binary),
                     render(default_recipe("logistic_regression", 6), binary)),
        "mix": (reg, render(loose, reg), render(tight, reg)),
        "improve_one": (multi, LLM_SCRIPT, render(default_recipe("hist_gradient_boosting", 7),
                                                  multi)),
    }


@pytest.fixture(scope="module")
def runs(tasks: dict[str, TaskSpec], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Run]:
    root = tmp_path_factory.mktemp("crossover-runs")
    cases = _parents(tasks)
    with ThreadPoolExecutor(max_workers=len(cases)) as pool:
        futures = {
            name: pool.submit(_run_one, task, _crossover(task, a, b), root / name)
            for name, (task, a, b) in cases.items()
        }
        return {name: future.result() for name, future in futures.items()}


def test_different_families_are_ensembled_on_a_s_recipe(runs: dict[str, Run]) -> None:
    run = runs["ensemble"]
    child = parse_recipe(run.response.code)
    assert child is not None
    assert (child.family, child.ensemble_with) == ("lightgbm", "logistic_regression")
    # Logistic regression rejects NaN and wants scaled inputs; A's holdout scheme stays.
    assert child.impute and child.scale and child.cv_folds == 0
    summary = parse_summary(run.response.summary)
    assert (summary["op"], summary["rule"], summary["parents"]) == (
        "crossover", "ensemble", "lightgbm+logistic_regression")
    assert "lightgbm" in run.response.plan and "logistic_regression" in run.response.plan
    _check_valid(run)


def test_same_family_takes_the_tighter_settings_and_the_other_data_handling(
    runs: dict[str, Run],
) -> None:
    run = runs["mix"]
    child = parse_recipe(run.response.code)
    assert child is not None
    # B (4 samples per leaf) regularises more, so its hyperparameters win; A's features stay.
    assert (child.min_samples_leaf, child.max_depth, child.n_estimators) == (4, 8, 150)
    assert child.feature_engineering and child.impute
    assert child.seed == 1 and child.ensemble_with is None
    assert parse_summary(run.response.summary)["rule"] == "mix"
    _check_valid(run)


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
    assert changed and changed <= CHANGE_FIELDS[summary["change"]]
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
    task, a, b = _parents(tasks)["ensemble"]
    assert _crossover(task, a, b) == _crossover(task, a, b)


def test_identical_parents_get_one_change_on_top(tasks: dict[str, TaskSpec]) -> None:
    task = tasks["breast_cancer"]
    parent = default_recipe("extra_trees", 9)
    response = _crossover(task, render(parent, task), render(parent, task))
    child = parse_recipe(response.code)
    assert child is not None and child != parent
    change = parse_summary(response.summary)["change"]
    before, after = asdict(parent), asdict(child)
    assert {key for key in before if before[key] != after[key]} <= CHANGE_FIELDS[change]


@pytest.mark.parametrize(("family", "weaker", "stronger"), [
    ("logistic_regression", {"reg_strength": 3.0}, {"reg_strength": 0.3}),
    ("ridge", {"reg_strength": 0.3}, {"reg_strength": 3.0}),
    ("knn", {"n_neighbors": 5}, {"n_neighbors": 25}),
    ("lightgbm", {"max_depth": None}, {"max_depth": 4}),
    ("hist_gradient_boosting", {"reg_strength": 0.0}, {"reg_strength": 1.0}),
    ("random_forest", {"min_samples_leaf": 1}, {"min_samples_leaf": 4}),
    ("extra_trees", {"max_depth": 6}, {"max_depth": 3}),
])
def test_regularisation_order_per_family(
    family: str, weaker: dict[str, object], stronger: dict[str, object]
) -> None:
    base = default_recipe(family, 1)
    assert regularisation(replace(base, **stronger)) > regularisation(  # type: ignore[arg-type]
        replace(base, **weaker))  # type: ignore[arg-type]


def _recipes(regression: bool) -> st.SearchStrategy[Recipe]:
    return st.builds(
        Recipe,
        family=st.sampled_from(families_for(regression)),
        n_estimators=st.sampled_from([100, 200, 300]),
        max_depth=st.sampled_from([None, 3, 6]),
        min_samples_leaf=st.sampled_from([1, 2, 4]),
        reg_strength=st.sampled_from([0.0, 0.3, 1.0, 3.0]),
        n_neighbors=st.sampled_from([5, 15]),
        impute=st.booleans(),
        scale=st.booleans(),
        feature_engineering=st.booleans(),
        cv_folds=st.sampled_from([0, 5]),
        ensemble_with=st.sampled_from([None, "lightgbm"]),
        seed=st.integers(1, 99),
    )


@settings(max_examples=150, deadline=None)
@given(st.data(), st.booleans(), st.integers(0, 1000))
def test_any_two_recipes_cross_by_the_documented_rules(
    data: st.DataObject, regression: bool, seed: int
) -> None:
    a = data.draw(_recipes(regression))
    b = data.draw(_recipes(regression))
    child = cross(a, b, regression, (), random.Random(seed))
    assert child == cross(a, b, regression, (), random.Random(seed))
    assert replace(child.recipe, seed=a.seed) != a and replace(child.recipe, seed=b.seed) != b
    # Fields the one change on top may touch are exempt from the combination rules.
    touched = CHANGE_FIELDS[child.change] if child.change is not None else frozenset()
    assert child.recipe.cv_folds == a.cv_folds or "cv_folds" in touched
    if a.family != b.family:
        assert child.rule == "ensemble"
        assert (child.recipe.family, child.recipe.ensemble_with) == (a.family, b.family)
        return
    assert child.rule == "mix"
    tuned, handled = (b, a) if regularisation(b) > regularisation(a) else (a, b)
    for name in HYPERPARAMETERS - touched:
        assert getattr(child.recipe, name) == getattr(tuned, name)
    for name in DATA_HANDLING - touched:
        assert getattr(child.recipe, name) == getattr(handled, name)
