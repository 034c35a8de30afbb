"""Bundled example competitions: layout, messiness, determinism, loading and grading."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mlmaster_daemon.errors import InvalidRequest
from mlmaster_daemon.tasks.competition import load_task
from mlmaster_daemon.tasks.examples import EXAMPLES, build_example
from mlmaster_daemon.tasks.grading import grade, grade_sample_submission
from mlmaster_daemon.tasks.spec import Metric
from mlmaster_daemon.tasks.validation import validate_submission

NAMES = ["breast_cancer", "wine", "diabetes"]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("examples")
    return {name: build_example(name, base / name) for name in NAMES}


def public(root: Path, name: str) -> pd.DataFrame:
    return pd.read_csv(root / "prepared" / "public" / name)


def test_the_three_examples_are_listed() -> None:
    assert set(NAMES) <= set(EXAMPLES)
    assert EXAMPLES["wine"].metric is Metric.LOG_LOSS
    assert EXAMPLES["breast_cancer"].metric is Metric.ROC_AUC
    assert EXAMPLES["diabetes"].metric is Metric.RMSE


@pytest.mark.parametrize("name", NAMES)
def test_example_has_the_mle_bench_layout(built: dict[str, Path], name: str) -> None:
    root = built[name]
    for relative in (
        "task.toml",
        "prepared/public/description.md",
        "prepared/public/train.csv",
        "prepared/public/test.csv",
        "prepared/public/sample_submission.csv",
        "prepared/private/test.csv",
    ):
        assert (root / relative).is_file(), relative


@pytest.mark.parametrize("name", NAMES)
def test_example_loads_with_its_metric_and_target(built: dict[str, Path], name: str) -> None:
    spec = load_task(built[name])
    info = EXAMPLES[name]
    assert (spec.metric, spec.target, spec.id_column) == (info.metric, info.target, "id")
    assert spec.lower_is_better == info.metric.lower_is_better
    assert spec.private_dir == built[name] / "prepared" / "private"
    assert info.metric.value in spec.description and "better" in spec.description


@pytest.mark.parametrize("name", NAMES)
def test_example_split_is_75_25_with_unique_ids(built: dict[str, Path], name: str) -> None:
    train, test = public(built[name], "train.csv"), public(built[name], "test.csv")
    assert len(test) / (len(train) + len(test)) == pytest.approx(0.25, abs=0.01)
    ids = pd.concat([train["id"], test["id"]])
    assert ids.is_unique and ids.dtype.kind == "i"


@pytest.mark.parametrize("name", NAMES)
def test_example_data_is_messy_and_columns_are_identifiers(
    built: dict[str, Path], name: str
) -> None:
    train = public(built[name], "train.csv")
    target = EXAMPLES[name].target
    features = train.drop(columns=["id", target])
    assert all(re.fullmatch(r"[a-z][a-z0-9_]*", str(c)) for c in train.columns)
    numeric_with_gaps = [
        c for c in features.columns if features[c].dtype.kind == "f" and features[c].isna().any()
    ]
    assert len(numeric_with_gaps) == 3
    bands = [c for c in features.columns if features[c].dtype.kind not in "iuf"]
    assert len(bands) == 1
    assert set(features[bands[0]].dropna()) == {"low", "mid", "high"}
    assert features[bands[0]].isna().any()


def test_classification_split_is_stratified(built: dict[str, Path]) -> None:
    train = public(built["wine"], "train.csv")
    answers = pd.read_csv(built["wine"] / "prepared" / "private" / "test.csv")
    train_share = train["cultivar"].value_counts(normalize=True).sort_index()
    test_share = answers["cultivar"].value_counts(normalize=True).sort_index()
    assert list(train_share.index) == ["class_0", "class_1", "class_2"]
    assert np.allclose(train_share, test_share, atol=0.03)


def test_breast_cancer_target_is_binary(built: dict[str, Path]) -> None:
    train = public(built["breast_cancer"], "train.csv")
    assert set(train["target"]) == {0, 1}
    sample = public(built["breast_cancer"], "sample_submission.csv")
    assert list(sample.columns) == ["id", "target"] and set(sample["target"]) == {0.5}


def test_wine_sample_submission_has_uniform_class_columns(built: dict[str, Path]) -> None:
    sample = public(built["wine"], "sample_submission.csv")
    assert list(sample.columns) == ["id", "class_0", "class_1", "class_2"]
    assert np.allclose(sample[["class_0", "class_1", "class_2"]], 1 / 3)


def test_diabetes_sample_submission_is_the_train_mean(built: dict[str, Path]) -> None:
    train = public(built["diabetes"], "train.csv")
    sample = public(built["diabetes"], "sample_submission.csv")
    assert np.allclose(sample["progression"], train["progression"].mean(), atol=1e-4)


@pytest.mark.parametrize("name", NAMES)
def test_sample_submission_validates(built: dict[str, Path], name: str) -> None:
    spec = load_task(built[name])
    assert validate_submission(spec, spec.public_dir / spec.sample_submission_file) is None


def test_sample_submission_baselines(built: dict[str, Path]) -> None:
    assert grade_sample_submission(load_task(built["breast_cancer"])) == 0.5
    assert grade_sample_submission(load_task(built["wine"])) == pytest.approx(math.log(3))
    answers = pd.read_csv(built["diabetes"] / "prepared" / "private" / "test.csv")
    sample = public(built["diabetes"], "sample_submission.csv")
    expected = math.sqrt(((answers["progression"] - sample["progression"]) ** 2).mean())
    assert grade_sample_submission(load_task(built["diabetes"])) == pytest.approx(expected)


def test_true_answers_score_perfectly(built: dict[str, Path], tmp_path: Path) -> None:
    for name, perfect in (("breast_cancer", 1.0), ("diabetes", 0.0)):
        spec = load_task(built[name])
        answers = pd.read_csv(built[name] / "prepared" / "private" / "test.csv")
        answers.astype({spec.target: float}).to_csv(tmp_path / f"{name}.csv", index=False)
        assert grade(spec, tmp_path / f"{name}.csv") == pytest.approx(perfect)
    spec = load_task(built["wine"])
    answers = pd.read_csv(built["wine"] / "prepared" / "private" / "test.csv")
    one_hot = pd.get_dummies(answers["cultivar"]).astype(float)
    one_hot.insert(0, "id", answers["id"])
    one_hot.to_csv(tmp_path / "wine.csv", index=False)
    assert grade(spec, tmp_path / "wine.csv") == pytest.approx(0.0, abs=1e-12)


def test_same_seed_gives_identical_bytes(tmp_path: Path) -> None:
    first = build_example("wine", tmp_path / "a", seed=7)
    second = build_example("wine", tmp_path / "b", seed=7)
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert len(files) == 7
    for relative in files:
        assert (first / relative).read_bytes() == (second / relative).read_bytes(), relative


def test_different_seed_gives_a_different_split(tmp_path: Path) -> None:
    first = build_example("diabetes", tmp_path / "a", seed=1)
    second = build_example("diabetes", tmp_path / "b", seed=2)
    relative = Path("prepared/public/train.csv")
    assert (first / relative).read_bytes() != (second / relative).read_bytes()


def test_unknown_example_lists_the_names(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequest, match=r"breast_cancer.*diabetes.*wine"):
        build_example("iris2", tmp_path / "x")


def test_non_empty_destination_is_refused(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(InvalidRequest, match="not empty"):
        build_example("wine", tmp_path)


def test_empty_existing_destination_is_used(tmp_path: Path) -> None:
    dest = tmp_path / "empty"
    dest.mkdir()
    assert build_example("breast_cancer", dest) == dest
    assert (dest / "task.toml").is_file()
