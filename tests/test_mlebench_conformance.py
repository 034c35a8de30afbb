"""Every known MLE-bench competition grades as mle-bench (openai/mle-bench 783b15a) grades it.

Each competition's folder is made in the shape its prepare.py leaves (test_mlebench_shapes),
then a perfect submission, a noisy one, the sample submission and the files mle-bench refuses
are graded. Expected scores are worked out with scikit-learn called directly on the rows
paired by id, as mle-bench's grade.py calls it, and must match to 1e-9.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import (
    accuracy_score,
    cohen_kappa_score,
    f1_score,
    log_loss,
    roc_auc_score,
    root_mean_squared_error,
    root_mean_squared_log_error,
)
from test_mlebench_shapes import ROWS, SHAPES, Shape, truth_for, write_folder

from mlmaster_daemon.errors import GradingError
from mlmaster_daemon.tasks.competition import load_task
from mlmaster_daemon.tasks.grading import grade_like_mlebench, grade_report
from mlmaster_daemon.tasks.spec import TaskSpec

TOLERANCE = 1e-9
NA_TOKENS = {"None", "NA"}  # read as missing by pandas, compared as "nan" by mle-bench
BY_ID = {shape.cid: shape for shape in SHAPES}


@dataclass(frozen=True)
class Built:
    shape: Shape
    spec: TaskSpec
    ids: list[Any]
    truth: pd.DataFrame


def build(tmp_path: Path, shape: Shape, seed: int = 0) -> Built:
    truth = truth_for(shape, np.random.default_rng(seed))
    root = write_folder(tmp_path, shape, truth)
    return Built(shape, load_task(root), shape.ids(ROWS), truth)


def perfect(built: Built) -> pd.DataFrame:
    truth = built.truth.copy()
    if built.shape.kind == "jigsaw":
        truth = truth.where(truth >= 0, 0.5)
    return truth.astype(float) if built.shape.kind in ("auc", "auc_columns", "one_hot",
                                                       "binary_log_loss", "jigsaw") else truth


def noisy(built: Built, seed: int = 1) -> pd.DataFrame:
    """Predictions in the answers' order: probabilities leaning to the truth, labels a third
    wrong, values off by noise; a few hard wrong probabilities exercise the log-loss clip."""
    rng = np.random.default_rng(seed)
    shape, truth = built.shape, built.truth
    kind = shape.kind
    if kind in ("auc", "auc_columns", "jigsaw", "binary_log_loss"):
        leaning = 0.35 * truth.clip(lower=0) + 0.65 * rng.random(truth.shape)
        if kind == "binary_log_loss":
            leaning.iloc[:2] = 1.0 - truth.iloc[:2]
        return leaning
    if kind == "one_hot":
        spread = rng.dirichlet(np.ones(len(shape.targets)), ROWS)
        mixed = pd.DataFrame(0.5 * truth.to_numpy() + 0.5 * spread, columns=truth.columns)
        wrong = int(np.argmin(truth.iloc[0].to_numpy()))
        mixed.iloc[0] = 0.0
        mixed.iloc[0, wrong] = 1.0
        return mixed
    if kind == "qwk":
        return (truth + rng.integers(-1, 2, truth.shape)).clip(0, 4)
    if kind == "rmse":
        return truth + rng.normal(0, 0.1 * float(truth.to_numpy().max()), truth.shape)
    if kind == "rmsle":
        return truth * np.exp(rng.normal(0, 0.2, truth.shape))
    labels = np.array(shape.labels)
    guessed = truth.copy().astype(object) if kind == "paddy" else truth.copy()
    wrong = rng.random(ROWS) < 0.3
    guessed.loc[wrong, shape.targets[0]] = labels[rng.integers(0, len(labels), wrong.sum())]
    if kind == "paddy":
        guessed.loc[[3, 7], "label"] = np.nan
    return guessed


def expected(shape: Shape, truth: pd.DataFrame, predicted: pd.DataFrame) -> float:
    """scikit-learn on rows paired by id, as each grade.py calls it."""
    t, p = truth.to_numpy(), predicted.to_numpy()
    kind = shape.kind
    if kind in ("auc", "auc_columns"):
        return float(np.mean([roc_auc_score(t[:, c], p[:, c]) for c in range(t.shape[1])]))
    if kind == "jigsaw":
        keep = t.sum(axis=1) >= 0
        return float(roc_auc_score(t[keep], p[keep], average="macro"))
    if kind in ("one_hot", "binary_log_loss"):
        return float(log_loss(t if kind == "one_hot" else t[:, 0], p if kind == "one_hot"
                              else p[:, 0]))
    if kind == "qwk":
        return float(cohen_kappa_score(p[:, 0], t[:, 0], weights="quadratic"))
    if kind == "rmse":
        return float(root_mean_squared_error(t[:, 0], p[:, 0]))
    if kind == "rmsle":
        return float(np.mean([root_mean_squared_log_error(t[:, c], p[:, c])
                              for c in range(t.shape[1])]))
    if kind == "paddy":
        return float(accuracy_score(t[:, 0], ["" if pd.isna(v) else v for v in p[:, 0]]))
    if kind == "text":
        def text(values: Any) -> list[str]:
            return ["nan" if pd.isna(v) or v in NA_TOKENS else str(v) for v in values]
        return float(accuracy_score(text(t[:, 0]), text(p[:, 0])))
    if kind == "f1_micro":
        return float(f1_score(list(t[:, 0]), list(p[:, 0]), average="micro"))
    return float(accuracy_score(list(t[:, 0]), list(p[:, 0])))


def write_submission(tmp_path: Path, built: Built, predicted: pd.DataFrame, name: str,
                     *, shuffle: bool = True) -> Path:
    """id + scored columns (detecting-insults also its Date, like its sample), rows shuffled
    unless mle-bench pairs them by position (nomad2018)."""
    frame = pd.concat([pd.DataFrame({built.shape.id_column: built.ids}),
                       predicted.reset_index(drop=True)], axis=1)
    if built.shape.cid.startswith("detecting-insults"):
        frame["Date"] = ""
    if shuffle and built.shape.kind != "rmsle":
        frame = frame.sample(frac=1.0, random_state=3).reset_index(drop=True)
    path = tmp_path / f"{name}.csv"
    frame.to_csv(path, index=False)
    return path


def assert_scored(built: Built, path: Path, want: float) -> None:
    got = grade_like_mlebench(built.spec, path)
    assert abs(got - want) <= TOLERANCE, (got, want)
    report = grade_report(built.spec, path)
    assert report.valid_submission and report.score == round(want, 5)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: s.cid)
def test_the_prepared_folder_loads_with_the_scored_columns_of_its_grader(
        tmp_path: Path, shape: Shape) -> None:
    built = build(tmp_path, shape)
    assert built.spec.competition_id == shape.cid
    assert built.spec.id_column == shape.id_column
    assert built.spec.scored_columns == shape.targets


@pytest.mark.parametrize("kind", ["perfect", "noisy"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: s.cid)
def test_a_perfect_and_a_noisy_submission_score_as_scikit_learn_does(
        tmp_path: Path, shape: Shape, kind: str) -> None:
    built = build(tmp_path, shape)
    guess = perfect(built) if kind == "perfect" else noisy(built)
    assert_scored(built, write_submission(tmp_path, built, guess, kind),
                  expected(shape, built.truth, guess))


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: s.cid)
def test_the_sample_submission_scores_as_scikit_learn_does(tmp_path: Path,
                                                          shape: Shape) -> None:
    built = build(tmp_path, shape)
    sample_path = built.spec.public_dir / built.spec.sample_submission_file
    sample = pd.read_csv(sample_path, keep_default_na=shape.kind != "text")
    values = sample.set_index(shape.id_column).loc[built.ids, list(shape.targets)]
    assert_scored(built, sample_path,
                  expected(shape, built.truth, values.reset_index(drop=True)))


def _refusals(shape: Shape) -> dict[str, Any]:
    """Changes to a noisy submission that mle-bench's grader of `shape` refuses."""
    target = shape.targets[0]

    def setting(value: Any) -> Any:
        def change(frame: pd.DataFrame) -> pd.DataFrame:
            frame = frame.astype({target: object})
            frame.loc[0, target] = value
            return frame
        return change

    cases: dict[str, Any] = {
        "a_row_missing": lambda f: f.iloc[1:],
        "the_first_scored_column_missing": lambda f: f.drop(columns=[target]),
    }
    kind = shape.kind
    if kind in ("auc", "binary_log_loss"):
        cases["a_probability_above_1"] = setting(1.5)
    if kind in ("auc", "auc_columns", "one_hot", "accuracy", "binary_log_loss", "qwk"):
        cases["a_missing_value"] = setting(np.nan)
    if kind in ("auc", "auc_columns", "jigsaw", "one_hot", "accuracy", "text", "paddy",
                "f1_micro", "rmse", "binary_log_loss") and shape.cid[0] != "n":
        cases["an_id_not_in_the_answers"] = lambda f: f.replace(
            {shape.id_column: {f[shape.id_column].iloc[0]: "not-an-id"}})
    if shape.cid in ("leaf-classification", "spooky-author-identification",
                     "plant-pathology-2020-fgvc7", "jigsaw-toxic-comment-classification-challenge"):
        cases["an_extra_column"] = lambda f: pd.concat(
            [f, pd.DataFrame({"extra": [0.5] * len(f)})], axis=1)
    if kind == "one_hot":
        cases["a_row_summing_to_1_00002"] = lambda f: f.assign(
            **{target: f[target] + np.where(np.arange(len(f)) == 0, 2e-5, 0.0)})
    if shape.cid.startswith("spooky"):
        cases["the_id_last"] = lambda f: f[[*shape.targets, shape.id_column]]
    if kind in ("qwk",) or shape.cid.startswith("tabular-playground-series-dec"):
        cases["a_fractional_label"] = setting(2.5)
    if kind == "rmsle":
        cases["a_negative_value"] = setting(-0.01)
    if shape.cid.startswith("new-york"):
        cases["a_fare_that_is_text"] = setting("cheap")
    if kind == "f1_micro":
        cases["numbers_for_names"] = lambda f: f.assign(species=range(len(f)))
    if shape.cid == "spaceship-titanic":
        cases["yes_and_no"] = lambda f: f.assign(Transported=np.where(f.Transported, "yes", "no"))
    return cases


REFUSED = [(shape, case) for shape in SHAPES for case in _refusals(shape)]


@pytest.mark.parametrize(("shape", "case"), REFUSED, ids=[f"{s.cid}-{c}" for s, c in REFUSED])
def test_mlebench_refuses_it_and_so_does_grade(tmp_path: Path, shape: Shape, case: str) -> None:
    built = build(tmp_path, shape)
    good = write_submission(tmp_path, built, noisy(built), "noisy", shuffle=False)
    bad = _refusals(shape)[case](pd.read_csv(good))
    bad.to_csv(good, index=False)
    with pytest.raises(GradingError):
        grade_like_mlebench(built.spec, good)
    report = grade_report(built.spec, good)
    assert report.score is None and not report.valid_submission and report.submission_exists
