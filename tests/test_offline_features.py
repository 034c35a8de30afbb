"""Each feature-work change of the improve step runs on data that has that kind of column:
dates, free text, categoricals (target, frequency and one-hot encodings), missing values and
numeric pairs. The child scripts run as real subprocesses; the feature names each member used
(working/features_1.json) show what was built."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mlmaster_daemon.coders.offline.changes import CHANGE_FIELDS
from mlmaster_daemon.coders.offline.coder import OfflineCoder
from mlmaster_daemon.coders.offline.recipe import Recipe, default_recipe, parse_recipe
from mlmaster_daemon.coders.offline.render import render
from mlmaster_daemon.coders.protocol import CodeRequest, CodeResponse
from mlmaster_daemon.models import Operator
from mlmaster_daemon.search.memory import MemoryItem
from mlmaster_daemon.tasks.spec import Metric, TaskSpec
from tests.offline_runs import Run, run_script

WORDS = np.array(["good", "bad", "great", "awful", "fine", "poor", "superb", "meh"])
# What a parent's run printed about this data: every column kind is present.
PARENT_OUTPUT = ("columns: rows=480 numeric=2 categorical=1 date=1 text=1 missing=2\n"
                 "target: classes=2 imbalance=2.10\n")
LIGHTGBM = default_recipe("lightgbm", 21)
LINEAR = replace(default_recipe("logistic_regression", 22), impute=True)
# (case, parent recipe, change the improve step is steered to, metric).
CASES: list[tuple[str, Recipe, str, Metric]] = [
    ("dates", LIGHTGBM, "parse_dates", Metric.ROC_AUC),
    ("text_trees", LIGHTGBM, "text_tfidf", Metric.ROC_AUC),
    ("text_linear", LINEAR, "text_tfidf", Metric.ROC_AUC),
    ("target_means", replace(LIGHTGBM, categorical="frequency"), "categorical_encoding",
     Metric.ROC_AUC),
    ("missing", LIGHTGBM, "missing_indicators", Metric.ROC_AUC),
    ("ratios", LIGHTGBM, "add_ratios", Metric.ROC_AUC),
    ("class_weight", LINEAR, "class_weight", Metric.F1),
]



def _frame(n: int = 600) -> pd.DataFrame:
    """Numbers with gaps, a colour, a date whose weekday matters and a review whose words do."""
    rng = np.random.default_rng(0)
    x1, x2 = rng.normal(size=n), rng.normal(size=n)
    colour = rng.choice(["red", "green", "blue", "teal"], n)
    day = pd.Timestamp("2020-01-01") + pd.to_timedelta(rng.integers(0, 700, n), unit="D")
    reviews = [" ".join(rng.choice(WORDS, 6)) for _ in range(n)]
    tone = np.array([r.count("good") + r.count("great") - r.count("bad") for r in reviews])
    signal = x1 + (colour == "red") + (day.day_of_week >= 5) + 0.5 * tone
    frame = pd.DataFrame({"id": np.arange(n), "x1": x1, "x2": x2, "colour": colour,
                          "when": day.strftime("%Y-%m-%d"), "review": reviews,
                          "target": (signal + rng.normal(scale=0.5, size=n) > 0.8).astype(int)})
    frame.loc[rng.random(n) < 0.1, "x2"] = np.nan
    frame.loc[rng.random(n) < 0.05, "colour"] = np.nan
    return frame


def _task(root: Path, metric: Metric) -> TaskSpec:
    public = root / "public"
    public.mkdir(parents=True)
    frame = _frame()
    cut = int(len(frame) * 0.8)
    frame.iloc[:cut].to_csv(public / "train.csv", index=False)
    frame.iloc[cut:].drop(columns=["target"]).to_csv(public / "test.csv", index=False)
    fill = 0 if metric is Metric.F1 else 0.5
    pd.DataFrame({"id": frame["id"].iloc[cut:], "target": fill}).to_csv(
        public / "sample_submission.csv", index=False)
    return TaskSpec(name=root.name, root=root, public_dir=public, private_dir=None,
                    description="", metric=metric, lower_is_better=False, target="target",
                    id_column="id")


def _improve(task: TaskSpec, parent: Recipe, change: str) -> CodeResponse:
    """The improve step's child, steered to `change` by siblings that tried all the others."""
    memory = tuple(MemoryItem(i, Operator.IMPROVE, f"model={parent.family}; change={name}",
                              0.9, False) for i, name in enumerate(CHANGE_FIELDS)
                   if name != change)
    request = CodeRequest(Operator.IMPROVE, task, 60, "", parent_code=render(parent, task),
                          parent_output=PARENT_OUTPUT, memory=memory, cv_seed=11)
    return asyncio.run(OfflineCoder(seed=5).generate(request))



@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Run]:
    root = tmp_path_factory.mktemp("features")
    tasks = {metric: _task(root / metric.value, metric) for metric in (Metric.ROC_AUC,
                                                                      Metric.F1)}
    jobs = {case: (tasks[metric], _improve(tasks[metric], parent, change))
            for case, parent, change, metric in CASES}
    task = tasks[Metric.ROC_AUC]
    target = replace(LIGHTGBM, categorical="target")
    jobs["target_direct"] = (task, CodeResponse("", render(target, task), ""))
    with ThreadPoolExecutor(max_workers=3) as pool:
        futures = {case: pool.submit(run_script, task, response, root / case)
                   for case, (task, response) in jobs.items()}
        return {case: future.result() for case, future in futures.items()}


def _check(run: Run, change: str) -> Recipe:
    assert run.returncode == 0, run.output[-3000:]
    assert f"change={change}" in run.response.summary
    submission = pd.read_csv(run.workspace / "submission" / "submission.csv")
    sample = pd.read_csv(run.task.public_dir / "sample_submission.csv")
    assert list(submission.columns) == ["id", "target"]
    assert sorted(submission["id"]) == sorted(sample["id"])
    assert not submission["target"].isna().any()
    child = parse_recipe(run.response.code)
    assert child is not None
    return child


def test_date_columns_are_parsed_into_parts(runs: dict[str, Run]) -> None:
    child = _check(runs["dates"], "parse_dates")
    assert child.dates
    names = runs["dates"].feature_names()
    assert {"when_year", "when_month", "when_day", "when_weekday", "when_days"} <= set(names)
    assert "when" not in names


def test_text_becomes_svd_components_for_trees(runs: dict[str, Run]) -> None:
    child = _check(runs["text_trees"], "text_tfidf")
    assert child.text
    names = runs["text_trees"].feature_names()
    assert "review_svd0" in names and "review_chars" in names


def test_text_reaches_a_linear_model_as_sparse_tfidf(runs: dict[str, Run]) -> None:
    run = runs["text_linear"]
    _check(run, "text_tfidf")
    width = int(run.output.split("member 1: logistic_regression on ")[1].split()[0])
    # The TF-IDF vocabulary is appended to the named dense features.
    assert width > len(run.feature_names()) + len(WORDS)


def test_the_categorical_encoding_changes_and_runs(runs: dict[str, Run]) -> None:
    child = _check(runs["target_means"], "categorical_encoding")
    assert child.categorical != "frequency"
    names = runs["target_means"].feature_names()
    assert "colour" in names and ("colour_frequency" in names) == (child.categorical != "native")


def test_categoricals_get_out_of_fold_target_means(runs: dict[str, Run]) -> None:
    run = runs["target_direct"]
    assert run.returncode == 0, run.output[-3000:]
    assert {"colour", "colour_frequency", "colour_target0"} <= set(run.feature_names())


def test_missing_values_get_indicators(runs: dict[str, Run]) -> None:
    child = _check(runs["missing"], "missing_indicators")
    assert child.missing_indicators
    assert {"x2_missing", "colour_missing"} <= set(runs["missing"].feature_names())


def test_ratios_of_numeric_pairs_are_added(runs: dict[str, Run]) -> None:
    child = _check(runs["ratios"], "add_ratios")
    assert child.ratios
    names = runs["ratios"].feature_names()
    assert any("_over_" in name for name in names) and any("_minus_" in name for name in names)


def test_class_weights_run_on_an_f1_task(runs: dict[str, Run]) -> None:
    child = _check(runs["class_weight"], "class_weight")
    assert child.class_weight
    assert '"class_weight": "balanced"' in runs["class_weight"].response.code
