"""The offline scripts validate on the task's plan: the same folds for every node whatever its
own seed, per-fold scores in metrics.json, a time budget that stops work early, and LightGBM
rounds that the next node reads back. Scripts run as real subprocesses on small data."""

from __future__ import annotations

import asyncio
import math
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics
from sklearn.datasets import load_breast_cancer, make_classification
from sklearn.model_selection import StratifiedKFold

from mlmaster_daemon.coders.offline.changes import CHANGE_FIELDS
from mlmaster_daemon.coders.offline.coder import OfflineCoder
from mlmaster_daemon.coders.offline.plan import ScriptPlan
from mlmaster_daemon.coders.offline.recipe import default_recipe, parse_recipe, parse_summary
from mlmaster_daemon.coders.offline.render import render
from mlmaster_daemon.coders.protocol import CodeRequest
from mlmaster_daemon.models import Operator
from mlmaster_daemon.search.memory import MemoryItem
from mlmaster_daemon.tasks.spec import Metric, TaskSpec
from tests.offline_runs import Run, run_script

CV_SEED = 1234
BEST_ITERATION = re.compile(r"^member=1 .*best_iteration=(\d+)", re.MULTILINE)



def _task(root: Path, frame: pd.DataFrame) -> TaskSpec:
    public = root / "public"
    public.mkdir(parents=True)
    frame.insert(0, "id", np.arange(len(frame)))
    cut = int(len(frame) * 0.8)
    frame.iloc[:cut].to_csv(public / "train.csv", index=False)
    frame.iloc[cut:].drop(columns=["target"]).to_csv(public / "test.csv", index=False)
    pd.DataFrame({"id": frame["id"].iloc[cut:], "target": 0.5}).to_csv(
        public / "sample_submission.csv", index=False)
    return TaskSpec(name=root.name, root=root, public_dir=public, private_dir=None,
                    description="", metric=Metric.ROC_AUC, lower_is_better=False,
                    target="target", id_column="id")



def _check_valid(run: Run) -> None:
    assert run.returncode == 0, run.output[-3000:]
    sample = pd.read_csv(run.task.public_dir / "sample_submission.csv")
    submission = pd.read_csv(run.workspace / "submission" / "submission.csv")
    assert list(submission.columns) == list(sample.columns)
    assert sorted(submission["id"]) == sorted(sample["id"])
    assert submission["target"].between(0, 1).all()


def _draft(task: TaskSpec, node_id: int, memory: tuple[MemoryItem, ...] = (),
           cv_folds: int = 5) -> str:
    request = CodeRequest(Operator.DRAFT, task, node_id, "", memory=memory,
                          cv_folds=cv_folds, cv_seed=CV_SEED)
    return asyncio.run(OfflineCoder(seed=8).generate(request)).code


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Run]:
    root = tmp_path_factory.mktemp("validation")
    cancer = _task(root / "cancer", load_breast_cancer(as_frame=True).frame.sample(
        400, random_state=0).reset_index(drop=True))
    features, labels = make_classification(20_000, 20, random_state=0)
    large = pd.DataFrame(features, columns=[f"x{i}" for i in range(20)]).assign(target=labels)
    big = _task(root / "big", large)
    # A sibling drafted LightGBM, so this draft is a linear model.
    sibling = MemoryItem(1, Operator.DRAFT, "model=lightgbm; op=draft", 0.9, False)
    slow = replace(default_recipe("lightgbm", 3), learning_rate=0.01, n_estimators=20_000)
    capped = replace(default_recipe("lightgbm", 4), learning_rate=0.01, n_estimators=10)
    jobs = {
        "lightgbm": (cancer, _draft(cancer, 1)),
        "linear": (cancer, _draft(cancer, 2, (sibling,))),
        "holdout": (cancer, _draft(cancer, 3, cv_folds=0)),
        "capped": (cancer, render(capped, cancer, ScriptPlan(5, CV_SEED))),
        "tiny_budget": (big, render(slow, big, ScriptPlan(5, CV_SEED, time_budget_s=1.0))),
    }
    with ThreadPoolExecutor(max_workers=3) as pool:
        futures = {name: pool.submit(run_script, task, code, root / name)
                   for name, (task, code) in jobs.items()}
        return {name: future.result() for name, future in futures.items()}


def test_nodes_with_different_seeds_and_models_score_on_the_task_folds(
    runs: dict[str, Run],
) -> None:
    first, second = runs["lightgbm"], runs["linear"]
    recipes = [parse_recipe(run.code) for run in (first, second)]
    assert recipes[0] is not None and recipes[1] is not None
    assert recipes[0].family != recipes[1].family and recipes[0].seed != recipes[1].seed
    labels = pd.read_csv(first.task.public_dir / "train.csv")["target"].to_numpy()
    expected = np.full(len(labels), -1)
    splitter = StratifiedKFold(n_splits=5, shuffle=True, random_state=CV_SEED)
    for k, (_, val_rows) in enumerate(splitter.split(labels, labels)):
        expected[val_rows] = k
    for run in (first, second):
        _check_valid(run)
        assert f"CV_SEED = {CV_SEED}\n" in run.code
        folds = np.load(run.workspace / "working" / "folds.npy")
        np.testing.assert_array_equal(folds, expected)
        # Each fold score is the metric on that fold's rows of the out-of-fold predictions.
        oof = np.load(run.workspace / "working" / "oof_predictions.npy")
        scores = [metrics.roc_auc_score(labels[folds == k], oof[folds == k, 1])
                  for k in range(5)]
        assert run.written()["fold_metrics"] == pytest.approx(scores)


FOLD_ROUNDS = re.compile(r"^lightgbm fold \d/5: .*\(rounds (\d+),", re.MULTILINE)
REFIT = re.compile(r"^refit: lightgbm on all (\d+) rows \(rounds (\d+),", re.MULTILINE)


def test_a_small_task_predicts_the_test_rows_with_a_refit_on_every_row(
    runs: dict[str, Run],
) -> None:
    small, large, holdout = runs["lightgbm"], runs["tiny_budget"], runs["holdout"]
    _check_valid(small)
    refit = REFIT.search(small.output)
    assert refit is not None, small.output[-3000:]
    rounds = [int(r) for r in FOLD_ROUNDS.findall(small.output)]
    assert len(rounds) == 5
    # Every labelled row, and the folds' mean best round count plus a tenth for the extra rows.
    assert int(refit.group(1)) == 320
    assert int(refit.group(2)) == max(1, int(np.mean(rounds) * 1.1))
    # 16,000 rows: the fold models' average is kept; one split: nothing to average or refit.
    assert "refit:" not in large.output and "refit:" not in holdout.output


def test_a_plan_below_two_folds_is_one_80_20_split(runs: dict[str, Run]) -> None:
    run = runs["holdout"]
    _check_valid(run)
    folds = np.load(run.workspace / "working" / "folds.npy")
    assert (folds == 0).sum() == round(0.2 * len(folds))
    assert set(folds.tolist()) == {-1, 0}
    written = run.written()
    assert written["fold_metrics"] == [written["validation_metric"]]


def test_a_tiny_time_budget_stops_early_and_still_writes_a_valid_submission(
    runs: dict[str, Run],
) -> None:
    run = runs["tiny_budget"]
    _check_valid(run)
    assert "time budget: lightgbm stopped" in run.output
    assert "stopped=time" in run.output
    fold_metrics = run.written()["fold_metrics"]
    assert isinstance(fold_metrics, list) and 1 <= len(fold_metrics) <= 5
    assert all(math.isfinite(value) for value in fold_metrics)


def _improve(run: Run, steer: str | None = None) -> tuple[str, str]:
    """The improve step's change and child code for the parent `run`, optionally steered to
    `steer` by siblings that tried every other change."""
    memory = tuple(MemoryItem(i, Operator.IMPROVE, f"model=lightgbm; change={name}", 0.9, False)
                   for i, name in enumerate(CHANGE_FIELDS) if steer is not None and name != steer)
    request = CodeRequest(Operator.IMPROVE, run.task, 50, "", parent_code=run.code,
                          parent_output=run.output, memory=memory, cv_seed=CV_SEED)
    response = asyncio.run(OfflineCoder(seed=2).generate(request))
    return parse_summary(response.summary)["change"], response.code


def test_the_childs_round_cap_comes_from_the_parents_best_iteration(
    runs: dict[str, Run],
) -> None:
    parent = runs["lightgbm"]
    found = BEST_ITERATION.search(parent.output)
    assert found is not None
    best = int(found.group(1))
    change, code = _improve(parent, steer="lower_learning_rate")
    child = parse_recipe(code)
    assert change == "lower_learning_rate" and child is not None
    assert child.learning_rate == 0.025
    assert child.n_estimators == max(500, min(20_000, int(2 * best * 0.05 / 0.025)))


def test_a_lightgbm_that_used_every_round_gets_more_rounds(runs: dict[str, Run]) -> None:
    parent = runs["capped"]
    _check_valid(parent)
    assert "stopped=cap" in parent.output
    change, code = _improve(parent)
    child = parse_recipe(code)
    assert change == "more_estimators" and child is not None and child.n_estimators == 20
