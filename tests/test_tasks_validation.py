"""validate_submission messages and grade() on broken submissions and tasks."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pandas as pd
import pytest

from mlmaster_daemon.errors import GradingError
from mlmaster_daemon.tasks.competition import load_task
from mlmaster_daemon.tasks.examples import build_example
from mlmaster_daemon.tasks.grading import answers_path, grade
from mlmaster_daemon.tasks.spec import Metric, TaskSpec
from mlmaster_daemon.tasks.validation import validate_submission


@pytest.fixture(scope="module")
def roots(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("validation")
    return {name: build_example(name, base / name) for name in ("wine", "diabetes")}


def sample_of(spec: TaskSpec) -> pd.DataFrame:
    return pd.read_csv(spec.public_dir / spec.sample_submission_file)


def check(spec: TaskSpec, frame: pd.DataFrame, path: Path) -> str:
    frame.to_csv(path, index=False)
    message = validate_submission(spec, path)
    assert message is not None
    assert "\n" not in message and str(path) in message
    return message


def test_reordered_rows_are_valid(roots: dict[str, Path], tmp_path: Path) -> None:
    spec = load_task(roots["wine"])
    path = tmp_path / "s.csv"
    sample_of(spec).iloc[::-1].to_csv(path, index=False)
    assert validate_submission(spec, path) is None


def test_missing_file_is_reported(roots: dict[str, Path], tmp_path: Path) -> None:
    message = validate_submission(load_task(roots["wine"]), tmp_path / "none.csv")
    assert message is not None and "No submission file" in message
    assert "id,class_0,class_1,class_2" in message


def test_unparseable_file_is_reported(roots: dict[str, Path], tmp_path: Path) -> None:
    path = tmp_path / "empty.csv"
    path.write_text("")
    message = validate_submission(load_task(roots["wine"]), path)
    assert message is not None and "could not be parsed as CSV" in message


def test_wrong_ids_are_reported(roots: dict[str, Path], tmp_path: Path) -> None:
    spec = load_task(roots["wine"])
    frame = sample_of(spec)
    frame.loc[0, "id"] = 99_999
    message = check(spec, frame, tmp_path / "s.csv")
    assert "1 id(s) of the test set have no row" in message
    assert "1 id(s) are not in the test set (e.g. 99999)" in message


def test_repeated_ids_and_row_count_are_reported(roots: dict[str, Path], tmp_path: Path) -> None:
    spec = load_task(roots["wine"])
    frame = sample_of(spec)
    message = check(spec, pd.concat([frame, frame.head(1)]), tmp_path / "s.csv")
    assert "appear more than once" in message and f"but {len(frame)} are expected" in message


def test_missing_and_unexpected_columns_are_reported(
    roots: dict[str, Path], tmp_path: Path
) -> None:
    spec = load_task(roots["wine"])
    frame = sample_of(spec).rename(columns={"class_2": "cls2"})
    message = check(spec, frame, tmp_path / "s.csv")
    assert "missing column(s) class_2" in message and "unexpected column(s) cls2" in message


def test_missing_predictions_are_reported(roots: dict[str, Path], tmp_path: Path) -> None:
    spec = load_task(roots["diabetes"])
    frame = sample_of(spec)
    frame.loc[[0, 3], "progression"] = None
    message = check(spec, frame, tmp_path / "s.csv")
    assert "column progression has 2 missing value(s)" in message


def test_non_numeric_regression_predictions_are_reported(
    roots: dict[str, Path], tmp_path: Path
) -> None:
    spec = load_task(roots["diabetes"])
    frame = sample_of(spec).astype({"progression": object})
    frame.loc[1, "progression"] = "high"
    message = check(spec, frame, tmp_path / "s.csv")
    assert "must hold numbers for rmse" in message and "'high'" in message


def test_out_of_range_probabilities_are_reported(roots: dict[str, Path], tmp_path: Path) -> None:
    spec = load_task(roots["wine"])
    frame = sample_of(spec)
    frame.loc[2, "class_1"] = 1.5
    message = check(spec, frame, tmp_path / "s.csv")
    assert "class_1 must hold probabilities in [0, 1]" in message and "1.5" in message


def test_grade_refuses_an_invalid_submission(roots: dict[str, Path], tmp_path: Path) -> None:
    spec = load_task(roots["wine"])
    sample_of(spec).drop(columns=["class_0"]).to_csv(tmp_path / "s.csv", index=False)
    with pytest.raises(GradingError, match="missing column"):
        grade(spec, tmp_path / "s.csv")


def test_grade_without_private_answers_says_where_it_looked(
    roots: dict[str, Path], tmp_path: Path
) -> None:
    copy = shutil.copytree(roots["wine"], tmp_path / "wine")
    shutil.rmtree(copy / "prepared" / "private")
    spec = load_task(copy)
    with pytest.raises(GradingError, match=r"no private answers.*prepared/private/test\.csv"):
        grade(spec, spec.public_dir / spec.sample_submission_file)


def test_answers_csv_is_used_when_private_test_csv_is_absent(
    roots: dict[str, Path], tmp_path: Path
) -> None:
    copy = shutil.copytree(roots["diabetes"], tmp_path / "diabetes")
    private = copy / "prepared" / "private"
    (private / "test.csv").rename(private / "answers.csv")
    spec = load_task(copy)
    assert answers_path(spec) == private / "answers.csv"
    assert grade(spec, spec.public_dir / spec.sample_submission_file) > 0


def test_accuracy_task_graded_on_its_own_answers_scores_one(tmp_path: Path) -> None:
    public = tmp_path / "comp" / "prepared" / "public"
    private = tmp_path / "comp" / "prepared" / "private"
    public.mkdir(parents=True)
    private.mkdir()
    (public / "train.csv").write_text("id,x,label\n1,0.1,cat\n2,0.2,dog\n")
    (public / "test.csv").write_text("id,x\n3,0.3\n4,0.4\n5,0.5\n")
    (public / "sample_submission.csv").write_text("id,label\n3,cat\n4,cat\n5,cat\n")
    (private / "test.csv").write_text("id,label\n5,dog\n3,cat\n4,dog\n")
    (tmp_path / "comp" / "task.toml").write_text('metric = "accuracy"\n')
    spec = load_task(tmp_path / "comp")
    assert grade(spec, private / "test.csv") == 1.0
    assert grade(spec, public / "sample_submission.csv") == pytest.approx(1 / 3)


def test_a_file_that_is_not_csv_is_reported(roots: dict[str, Path], tmp_path: Path) -> None:
    spec = load_task(roots["diabetes"])
    path = tmp_path / "submission.parquet"
    sample_of(spec).to_csv(path, index=False)
    message = validate_submission(spec, path)
    assert message is not None and "is not a .csv file" in message


def test_negative_predictions_are_reported_for_rmsle(
    roots: dict[str, Path], tmp_path: Path
) -> None:
    spec = dataclasses.replace(load_task(roots["diabetes"]), metric=Metric.RMSLE)
    frame = sample_of(spec)
    frame.loc[0, "progression"] = -3.0
    message = check(spec, frame, tmp_path / "s.csv")
    assert "must not be negative for rmsle" in message


def test_fractional_grades_are_reported_for_qwk(roots: dict[str, Path], tmp_path: Path) -> None:
    spec = dataclasses.replace(load_task(roots["diabetes"]), metric=Metric.QWK)
    frame = sample_of(spec)
    frame["progression"] = 2.0
    frame.loc[3, "progression"] = 2.5
    message = check(spec, frame, tmp_path / "s.csv")
    assert "whole-number grades for qwk" in message and "2.5" in message
    frame.loc[3, "progression"] = 3
    frame.to_csv(tmp_path / "ok.csv", index=False)
    assert validate_submission(spec, tmp_path / "ok.csv") is None
