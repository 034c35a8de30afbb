"""The offline coder's scripts for every metric run, report a finite validation score computed
with that metric (and one per fold of the task's plan), and write a submission `metrics.score`
grades on the hidden answers."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_breast_cancer, load_diabetes, load_wine

from mlmaster_daemon.coders.offline.recipe import default_recipe
from mlmaster_daemon.coders.offline.render import render
from mlmaster_daemon.tasks.metrics import score
from mlmaster_daemon.tasks.spec import PROJECT_METRICS, Metric, TaskSpec

RUN_TIMEOUT_S = 120
MAX_PARALLEL = 4
# Integer labels for qwk and map@k (wine's 3 cultivars), binary for f1, a positive target for
# rmsle; the metrics the other tests already run get the data they are usually paired with.
DATASETS = {
    Metric.ACCURACY: "binary",
    Metric.ROC_AUC: "binary",
    Metric.LOG_LOSS: "multiclass",
    Metric.RMSE: "regression",
    Metric.MAE: "regression",
    Metric.RMSLE: "regression",
    Metric.QWK: "multiclass",
    Metric.MAP_AT_K: "multiclass",
    Metric.F1: "binary",
    Metric.F1_MICRO: "multiclass",
    Metric.F1_MACRO: "multiclass",
}


def _frame(kind: str) -> pd.DataFrame:
    if kind == "binary":
        frame = load_breast_cancer(as_frame=True).frame.sample(200, random_state=0)
    elif kind == "multiclass":
        frame = load_wine(as_frame=True).frame.sample(frac=1.0, random_state=0)
    else:
        frame = load_diabetes(as_frame=True).frame.sample(200, random_state=0)
    frame = pd.DataFrame(frame).reset_index(drop=True)
    frame.insert(0, "id", np.arange(500, 500 + len(frame)))
    return frame


def _task(root: Path, metric: Metric) -> tuple[TaskSpec, pd.DataFrame]:
    """A task for `metric` in `root/public`, and its hidden answers."""
    kind = DATASETS[metric]
    public = root / "public"
    public.mkdir(parents=True)
    frame = _frame(kind)
    cut = int(len(frame) * 0.75)
    train, answers = frame.iloc[:cut], frame.iloc[cut:][["id", "target"]]
    train.to_csv(public / "train.csv", index=False)
    frame.iloc[cut:].drop(columns=["target"]).to_csv(public / "test.csv", index=False)
    sample = pd.DataFrame({"id": answers["id"]})
    if metric is Metric.LOG_LOSS:
        for label in sorted(train["target"].unique()):
            sample[str(label)] = 1 / 3
    else:
        sample["target"] = 0.5 if metric.needs_probabilities or metric.is_regression else 0
    sample.to_csv(public / "sample_submission.csv", index=False)
    spec = TaskSpec(
        name=f"offline-{metric.value}",
        root=root,
        public_dir=public,
        private_dir=None,
        description=f"A small {kind} task scored with {metric.value}.",
        metric=metric,
        lower_is_better=metric.lower_is_better,
        target="target",
        id_column="id",
    )
    return spec, answers.reset_index(drop=True)


@dataclass(frozen=True)
class Run:
    task: TaskSpec
    answers: pd.DataFrame
    workspace: Path
    returncode: int
    output: str


def _run(metric: Metric, root: Path) -> Run:
    task, answers = _task(root / "task", metric)
    family = "ridge" if metric.is_regression else "logistic_regression"
    workspace = root / "workspace"
    workspace.mkdir()
    (workspace / "input").symlink_to(task.public_dir, target_is_directory=True)
    (workspace / "solution.py").write_text(render(default_recipe(family, 3), task))
    done = subprocess.run(
        [sys.executable, "solution.py"],
        cwd=workspace,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )
    return Run(task, answers, workspace, done.returncode, done.stdout)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[Metric, Run]:
    """One script per metric, run a few at a time."""
    root = tmp_path_factory.mktemp("metric-scripts")
    with ThreadPoolExecutor(max_workers=MAX_PARALLEL) as pool:
        futures = {metric: pool.submit(_run, metric, root / metric.name)
                   for metric in PROJECT_METRICS}
        return {metric: future.result() for metric, future in futures.items()}


@pytest.mark.parametrize("metric", PROJECT_METRICS)
def test_offline_script_validates_with_the_metric_and_beats_the_sample_when_graded(
    runs: dict[Metric, Run], metric: Metric
) -> None:
    run = runs[metric]
    assert run.returncode == 0, run.output[-3000:]
    written = json.loads((run.workspace / "metrics.json").read_text())
    validation = written["validation_metric"]
    assert math.isfinite(validation)
    assert len(written["fold_metrics"]) == 5
    assert all(math.isfinite(value) for value in written["fold_metrics"])
    assert f"{metric.value}: {validation:.6f}" in run.output
    submission = pd.read_csv(run.workspace / "submission" / "submission.csv")
    sample = pd.read_csv(run.task.public_dir / run.task.sample_submission_file)
    graded = score(metric, run.answers, submission, "id", "target", k=run.task.map_k)
    baseline = score(metric, run.answers, sample, "id", "target", k=run.task.map_k)
    assert (graded < baseline) if metric.lower_is_better else (graded > baseline)
