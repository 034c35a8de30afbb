"""End-to-end checks of the offline coder: generated scripts run as real subprocesses."""

from __future__ import annotations

import asyncio
import json
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_breast_cancer, load_diabetes, load_wine

from mlmaster_daemon.coders.offline.changes import CHANGE_FIELDS
from mlmaster_daemon.coders.offline.coder import OfflineCoder
from mlmaster_daemon.coders.offline.drafts import DRAFT_STYLES, style_recipe
from mlmaster_daemon.coders.offline.recipe import (
    Recipe,
    default_recipe,
    parse_recipe,
    parse_summary,
)
from mlmaster_daemon.coders.offline.render import render
from mlmaster_daemon.coders.protocol import CodeRequest, CodeResponse
from mlmaster_daemon.models import Operator
from mlmaster_daemon.search.memory import MemoryItem
from mlmaster_daemon.tasks.spec import Metric, TaskSpec
from tests.offline_runs import Run, run_script

MAX_PARALLEL = 4
NAN_ERROR = "Input X contains NaN"
WINE_LABELS = {0: "barolo", 1: "grignolino", 2: "barbera"}

# Every family runs at least once, on a subset of task types, to keep the module fast.
DRAFT_CASES: list[tuple[str, str]] = [
    ("binary", "logistic_regression"),
    ("binary", "knn"),
    ("binary_accuracy", "lightgbm"),
    ("multiclass", "logistic_regression"),
    ("multiclass", "random_forest"),
    ("multiclass", "lightgbm"),
    ("regression", "ridge"),
    ("regression", "extra_trees"),
    ("regression_mae", "hist_gradient_boosting"),
]
# (task, parent recipe, change the improve step is steered to). The feature work on dates and
# text runs in test_offline_features, on data that has such columns.
IMPROVE_CASES: list[tuple[str, Recipe, str]] = [
    ("binary", default_recipe("lightgbm", 11), "lower_learning_rate"),
    ("binary", default_recipe("lightgbm", 11), "ensemble"),
    ("multiclass", default_recipe("hist_gradient_boosting", 12), "categorical_encoding"),
    ("multiclass", default_recipe("hist_gradient_boosting", 12), "more_leaf_samples"),
    ("multiclass", replace(default_recipe("random_forest", 12), impute=True), "less_capacity"),
    ("regression", replace(default_recipe("ridge", 13), impute=True), "add_ratios"),
    ("regression", replace(default_recipe("ridge", 13), impute=True), "add_features"),
    ("regression", default_recipe("lightgbm", 14), "switch_family"),
]



def _generate(coder: OfflineCoder, request: CodeRequest) -> CodeResponse:
    return asyncio.run(coder.generate(request))


def _frame(kind: str) -> pd.DataFrame:
    rng = np.random.RandomState(0)
    if kind == "binary":
        frame = load_breast_cancer(as_frame=True).frame.sample(300, random_state=0)
    elif kind == "multiclass":
        frame = load_wine(as_frame=True).frame.sample(frac=1.0, random_state=0)
        frame["target"] = frame["target"].map(WINE_LABELS)
    else:
        frame = load_diabetes(as_frame=True).frame.sample(300, random_state=0)
    frame = pd.DataFrame(frame).reset_index(drop=True)
    first = str(frame.columns[0])
    frame["colour"] = pd.qcut(frame[first], 3, labels=["blue", "green", "red"]).astype(object)
    frame.loc[rng.rand(len(frame)) < 0.05, "colour"] = np.nan
    for col in frame.columns[1:4]:
        frame.loc[rng.rand(len(frame)) < 0.1, col] = np.nan
    frame.insert(0, "id", np.arange(1000, 1000 + len(frame)))
    return frame


def _make_task(root: Path, kind: str) -> TaskSpec:
    public = root / kind / "public"
    public.mkdir(parents=True)
    frame = _frame(kind)
    cut = int(len(frame) * 0.8)
    train, test = frame.iloc[:cut], frame.iloc[cut:].drop(columns=["target"])
    train.to_csv(public / "train.csv", index=False)
    test.to_csv(public / "test.csv", index=False)
    sample = pd.DataFrame({"id": test["id"]})
    metric = {"binary": Metric.ROC_AUC, "multiclass": Metric.LOG_LOSS}.get(kind, Metric.RMSE)
    if kind == "multiclass":
        # Deliberately not in sorted order: the script must follow the sample's order.
        for label in WINE_LABELS.values():
            sample[label] = 1 / 3
    else:
        sample["target"] = 0.5
    sample.to_csv(public / "sample_submission.csv", index=False)
    return TaskSpec(
        name=f"offline-{kind}",
        root=root / kind,
        public_dir=public,
        private_dir=None,
        description=f"A small {kind} task for the offline coder tests.",
        metric=metric,
        lower_is_better=metric.lower_is_better,
        target="target",
        id_column="id",
    )



def _run_all(jobs: list[tuple[TaskSpec, CodeResponse]], root: Path) -> list[Run]:
    """Run the scripts a few at a time, each in a workspace whose `input` links to public."""
    root.mkdir(parents=True, exist_ok=True)
    offset = len(list(root.iterdir()))
    with ThreadPoolExecutor(max_workers=MAX_PARALLEL) as pool:
        futures = [
            pool.submit(run_script, task, response, root / f"ws{offset + n}")
            for n, (task, response) in enumerate(jobs)
        ]
        return [future.result() for future in futures]


def _check_valid(run: Run) -> float:
    """Assert the run honoured the solution contract; return its validation metric."""
    assert run.returncode == 0, run.output[-3000:]
    sample = pd.read_csv(run.task.public_dir / "sample_submission.csv")
    test = pd.read_csv(run.task.public_dir / "test.csv")
    submission = pd.read_csv(run.workspace / "submission" / "submission.csv")
    assert list(submission.columns) == list(sample.columns)
    assert len(submission) == len(test)
    assert sorted(submission["id"]) == sorted(test["id"])
    values = submission.drop(columns=["id"])
    assert not values.isna().any().any()
    if run.task.metric.needs_probabilities:
        assert ((values >= 0) & (values <= 1)).all().all()
    if len(values.columns) > 1:
        assert np.allclose(values.sum(axis=1), 1.0, atol=1e-6)
    written = json.loads((run.workspace / "metrics.json").read_text())
    metric = written["validation_metric"]
    assert isinstance(metric, float) and math.isfinite(metric)
    assert f"{metric:.6f}" in run.output
    assert len(written["fold_metrics"]) == 5
    return metric


def _draft_request(task: TaskSpec, family: str, node_id: int) -> CodeRequest:
    """A draft request whose sibling memory leaves one style of `family` as the only
    undrafted one."""
    regression = task.metric.is_regression
    wanted = next(style for style in DRAFT_STYLES
                  if style_recipe(style, regression, 1, 0.05).family == family)
    memory = tuple(
        MemoryItem(i, Operator.DRAFT, f"model=x; draft={style}; op=draft", 0.5, False)
        for i, style in enumerate(s for s in DRAFT_STYLES if s != wanted)
    )
    return CodeRequest(Operator.DRAFT, task, node_id, "", memory=memory)


def _debug_request(run: Run, node_id: int) -> CodeRequest:
    return CodeRequest(
        Operator.DEBUG,
        run.task,
        node_id,
        "",
        parent_code=run.response.code,
        parent_output=run.output[-2000:],
        parent_error="metrics.json missing",
    )


@pytest.fixture(scope="module")
def tasks(tmp_path_factory: pytest.TempPathFactory) -> dict[str, TaskSpec]:
    root = tmp_path_factory.mktemp("tasks")
    made = {kind: _make_task(root, kind) for kind in ("binary", "multiclass", "regression")}
    # Same files, other metrics: predicted labels for accuracy, plain values for mae.
    made["binary_accuracy"] = replace(made["binary"], metric=Metric.ACCURACY)
    made["regression_mae"] = replace(made["regression"], metric=Metric.MAE)
    return made


@dataclass(frozen=True)
class Runs:
    """Every script the module runs: a first wave in one batch, then the drafts' debugs."""

    drafts: dict[tuple[str, str], tuple[Run, Run | None]]
    improves: list[tuple[Recipe, Run]]
    baseline: Run


def _improve_request(task: TaskSpec, parent: Recipe, change: str, node_id: int) -> CodeRequest:
    """An improve request whose siblings tried every change but `change`, steering the pick."""
    memory = tuple(
        MemoryItem(i, Operator.IMPROVE, f"model={parent.family}; change={name}", 0.9, False)
        for i, name in enumerate(CHANGE_FIELDS)
        if name != change
    )
    code = render(parent, task)
    return CodeRequest(Operator.IMPROVE, task, node_id, "", parent_code=code, memory=memory)


def _baseline_request(task: TaskSpec) -> CodeRequest:
    return CodeRequest(
        Operator.DEBUG,
        task,
        300,
        "",
        parent_code=render(default_recipe("knn", 4), task),
        parent_output="Traceback (most recent call last):\nZeroDivisionError: division by zero",
        parent_error="exit code 1",
    )


@pytest.fixture(scope="module")
def runs(tasks: dict[str, TaskSpec], tmp_path_factory: pytest.TempPathFactory) -> Runs:
    coder = OfflineCoder(seed=7)
    raw = replace(default_recipe("random_forest", 5), encode_categoricals=False)
    draft_keys = [*DRAFT_CASES, ("binary", "raw_categoricals")]
    jobs = [
        (tasks[kind], _generate(coder, _draft_request(tasks[kind], family, n)))
        for n, (kind, family) in enumerate(DRAFT_CASES)
    ]
    jobs.append((tasks["binary"], CodeResponse("", render(raw, tasks["binary"]), "")))
    for n, (kind, parent, change) in enumerate(IMPROVE_CASES):
        jobs.append(
            (tasks[kind], _generate(coder, _improve_request(tasks[kind], parent, change, 200 + n)))
        )
    jobs.append((tasks["multiclass"], _generate(coder, _baseline_request(tasks["multiclass"]))))
    root = tmp_path_factory.mktemp("runs")
    first = _run_all(jobs, root)
    drafts, improves, baseline = (
        first[: len(draft_keys)],
        first[len(draft_keys) : -1],
        first[-1],
    )
    failed = [run for run in drafts if run.returncode != 0]
    debug_jobs = [
        (run.task, _generate(coder, _debug_request(run, 100 + i))) for i, run in enumerate(failed)
    ]
    fixed = dict(zip([id(run) for run in failed], _run_all(debug_jobs, root), strict=True))
    return Runs(
        drafts={
            key: (run, fixed.get(id(run))) for key, run in zip(draft_keys, drafts, strict=True)
        },
        improves=[(case[1], run) for case, run in zip(IMPROVE_CASES, improves, strict=True)],
        baseline=baseline,
    )


@pytest.mark.parametrize(("kind", "family"), DRAFT_CASES)
def test_draft_writes_valid_submission_or_fails_on_nan_and_debug_repairs(
    runs: Runs, kind: str, family: str
) -> None:
    draft, debug = runs.drafts[(kind, family)]
    assert parse_summary(draft.response.summary)["model"] == family
    if draft.returncode == 0:
        _check_valid(draft)
        return
    assert NAN_ERROR in draft.output
    assert debug is not None
    assert parse_summary(debug.response.summary)["fix"] == "impute_nan"
    _check_valid(debug)


def test_debug_encodes_categoricals_after_string_conversion_error(runs: Runs) -> None:
    draft, debug = runs.drafts[("binary", "raw_categoricals")]
    assert draft.returncode != 0
    assert "could not convert string to float" in draft.output
    assert debug is not None
    assert parse_summary(debug.response.summary)["fix"] == "encode_categoricals"
    _check_valid(debug)


@pytest.mark.parametrize("index", range(len(IMPROVE_CASES)))
def test_improve_changes_exactly_one_thing_and_runs(runs: Runs, index: int) -> None:
    parent, run = runs.improves[index]
    change = IMPROVE_CASES[index][2]
    assert parse_summary(run.response.summary)["change"] == change
    assert change in run.response.plan
    child = parse_recipe(run.response.code)
    assert child is not None
    before, after = asdict(parent), asdict(child)
    changed = {key for key in before if before[key] != after[key]} - {"changes"}
    assert changed and changed <= CHANGE_FIELDS[change]
    assert child.changes == (change,)
    _check_valid(run)


def test_unrecognised_error_gives_a_working_safe_baseline(runs: Runs) -> None:
    recipe = parse_recipe(runs.baseline.response.code)
    assert recipe is not None
    assert (recipe.family, recipe.impute, recipe.encode_categoricals) == (
        "hist_gradient_boosting",
        True,
        True,
    )
    assert parse_summary(runs.baseline.response.summary)["fix"] == "safe_baseline"
    _check_valid(runs.baseline)
