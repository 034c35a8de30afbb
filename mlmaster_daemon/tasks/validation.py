"""Check a submission file's format against the task's public sample submission."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pandas as pd

from mlmaster_daemon.errors import InvalidTaskDir
from mlmaster_daemon.tasks.metrics import ROW_SUM_ATOL, ROW_SUM_RTOL, normalise_labels
from mlmaster_daemon.tasks.spec import Metric, TaskSpec

_EXAMPLES_SHOWN = 3
MIB = 1024 * 1024
MIN_SUBMISSION_LIMIT = 64 * MIB
SUBMISSION_SIZE_FACTOR = 20
# Only an empty cell is a missing value: "None", "NA" or "null" are words a label may be
# (text-normalization's answers hold them), never a prediction left out.
ONLY_BLANKS_MISSING: dict[str, Any] = {"keep_default_na": False, "na_values": [""]}
_READ_ERRORS = (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError)


def validate_submission(spec: TaskSpec, submission_path: Path) -> str | None:
    """None when the submission can be scored, else one paragraph saying what is wrong.

    Compared with the sample submission: the file parses as CSV, has the same columns, row
    count and ids (any order), no missing predictions, numbers where the metric needs them,
    probabilities within [0, 1] for roc_auc and log_loss (class probabilities summing to 1 per
    row), no negatives for rmsle and whole numbers for qwk (the "competition" metric leaves
    the values to its grader, which `grading.grade` runs). This is stricter than some of
    MLE-bench's graders (see `mlebench_graders`): a file that passes is right everywhere.
    Raises `InvalidTaskDir` only when the task's own sample submission cannot be read.
    """
    if not submission_path.is_file():
        return validate_submission_file(spec, None, submission_path, 0)
    with submission_path.open("rb") as handle:
        return validate_submission_file(spec, handle, submission_path,
                                        submission_size_limit(spec))


def submission_size_limit(spec: TaskSpec) -> int:
    """The most bytes a submission may hold: far more than the sample submission's size (a
    prediction is rarely 20 times longer than the sample's), so reading it stays bounded."""
    try:
        sample = (spec.public_dir / spec.sample_submission_file).stat().st_size
    except OSError:
        sample = 0
    return max(MIN_SUBMISSION_LIMIT, SUBMISSION_SIZE_FACTOR * sample)


def validate_submission_file(spec: TaskSpec, handle: BinaryIO | None, shown: Path,
                             max_bytes: int) -> str | None:
    """`validate_submission` on an open file (None: no file was written); `shown` names it in
    the messages, and a file over `max_bytes` is refused without being parsed."""
    sample_path = spec.public_dir / spec.sample_submission_file
    try:
        sample = pd.read_csv(sample_path, **ONLY_BLANKS_MISSING)
    except (OSError, *_READ_ERRORS) as exc:
        raise InvalidTaskDir(f"cannot read the sample submission {sample_path}: {exc}") from exc
    expected = (
        f"Expected a CSV with header `{','.join(map(str, sample.columns))}` and {len(sample)} "
        f"rows, one per id in {spec.test_file}, in the format of {spec.sample_submission_file}."
    )
    if handle is None:
        return f"No submission file was written at {shown}. {expected}"
    if shown.suffix.lower() != ".csv":
        return f"The submission {shown.name} is not a .csv file. {expected}"
    size = os.fstat(handle.fileno()).st_size
    if size > max_bytes:
        return (f"The submission at {shown} is {size / MIB:.1f} MiB, too large to be a "
                f"prediction for this test set (at most {max_bytes / MIB:.1f} MiB). {expected}")
    try:
        submission = pd.read_csv(handle, **ONLY_BLANKS_MISSING)
    except (OSError, *_READ_ERRORS) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return (
            f"The submission at {shown} could not be parsed as CSV ({reason}). {expected}"
        )
    problems = _problems(spec, sample, submission)
    if not problems:
        return None
    return f"The submission at {shown} is invalid: {'; '.join(problems)}. {expected}"


def _problems(spec: TaskSpec, sample: pd.DataFrame, submission: pd.DataFrame) -> list[str]:
    problems = _column_problems(sample, submission)
    if len(submission) != len(sample):
        problems.append(f"it has {len(submission)} rows but {len(sample)} are expected")
    if spec.id_column in submission.columns:
        problems.extend(_id_problems(spec.id_column, sample, submission))
    predictions = [c for c in _prediction_columns(spec, sample) if c in submission.columns]
    for column in predictions:
        problems.extend(_value_problems(spec, str(column), submission[column]))
    if not problems and spec.metric is Metric.LOG_LOSS and len(predictions) > 1:
        problems.extend(_row_sum_problems(submission[predictions]))
    return problems


def _prediction_columns(spec: TaskSpec, sample: pd.DataFrame) -> list[str]:
    """The sample's columns the metric reads: the scored ones, else (class probabilities named
    by label) every column but the id. Others, like detecting-insults' `Date`, are carried."""
    scored = [c for c in spec.scored_columns if c in sample.columns]
    return scored or [str(c) for c in sample.columns if c != spec.id_column]


def _row_sum_problems(probabilities: pd.DataFrame) -> list[str]:
    """Class probabilities must sum to 1 per row, as MLE-bench's log-loss graders require."""
    sums = probabilities.to_numpy(dtype=np.float64).sum(axis=1)
    off = ~np.isclose(sums, 1.0, rtol=ROW_SUM_RTOL, atol=ROW_SUM_ATOL)
    if not off.any():
        return []
    return [f"{int(off.sum())} row(s) of class probabilities do not sum to 1 (e.g. row "
            f"{int(np.argmax(off)) + 1} sums to {float(sums[np.argmax(off)])!r}); normalise "
            "each row"]


def _column_problems(sample: pd.DataFrame, submission: pd.DataFrame) -> list[str]:
    missing = [str(c) for c in sample.columns if c not in submission.columns]
    extra = [str(c) for c in submission.columns if c not in sample.columns]
    problems = []
    if missing:
        problems.append(f"missing column(s) {', '.join(missing)}")
    if extra:
        problems.append(f"unexpected column(s) {', '.join(extra)}")
    return problems


def _id_problems(id_column: str, sample: pd.DataFrame, submission: pd.DataFrame) -> list[str]:
    submitted = pd.Series(normalise_labels(submission[id_column]))
    wanted = set(normalise_labels(sample[id_column]))
    problems = []
    blank = int(submission[id_column].isna().sum())
    if blank:
        problems.append(f"column {id_column} has {blank} missing id(s)")
    repeated = submitted[submitted.duplicated()].unique().tolist()
    if repeated:
        problems.append(f"{len(repeated)} id(s) appear more than once (e.g. {_show(repeated)})")
    missing = wanted - set(submitted)
    extra = set(submitted) - wanted
    if missing:
        problems.append(f"{len(missing)} id(s) of the test set have no row (e.g. {_show(missing)})")
    if extra:
        problems.append(f"{len(extra)} id(s) are not in the test set (e.g. {_show(extra)})")
    return problems


def _value_problems(spec: TaskSpec, column: str, values: pd.Series) -> list[str]:
    if spec.metric is Metric.COMPETITION:
        # The competition's grader judges the values: a blank may be a prediction there (an
        # empty mask, no box, no answer).
        return []
    missing = int(values.isna().sum())
    if missing:
        return [f"column {column} has {missing} missing value(s)"]
    if not (spec.metric.is_regression or spec.metric.needs_probabilities
            or spec.metric is Metric.QWK):
        return []
    numeric = pd.to_numeric(values, errors="coerce")
    non_numeric = values[numeric.isna()]
    if len(non_numeric):
        return [
            f"column {column} must hold numbers for {spec.metric.value} but has "
            f"{len(non_numeric)} non-numeric value(s) (e.g. {non_numeric.iloc[0]!r})"
        ]
    array = numeric.to_numpy(dtype=np.float64)
    if not np.isfinite(array).all():
        return [f"column {column} has infinite values"]
    if spec.metric is Metric.RMSLE and (array < 0).any():
        return [f"column {column} must not be negative for rmsle (log(1 + x) of each value) "
                f"but has {int((array < 0).sum())} negative value(s)"]
    if spec.metric is Metric.QWK and not np.equal(np.round(array), array).all():
        odd = array[np.round(array) != array]
        return [f"column {column} must hold whole-number grades for qwk but has {len(odd)} "
                f"other value(s) (e.g. {float(odd[0])!r})"]
    if spec.metric.needs_probabilities:
        outside = array[(array < 0.0) | (array > 1.0)]
        if len(outside):
            return [
                f"column {column} must hold probabilities in [0, 1] for {spec.metric.value} "
                f"but has {len(outside)} value(s) outside (e.g. {float(outside[0])!r})"
            ]
    return []


def _show(values: Iterable[object]) -> str:
    """A few of `values`, sorted, for a message."""
    unique = sorted(map(str, values))
    more = ", ..." if len(unique) > _EXAMPLES_SHOWN else ""
    return ", ".join(unique[:_EXAMPLES_SHOWN]) + more
