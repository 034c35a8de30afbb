"""Score a submission against answers with one of the supported metrics.

Labels and ids are compared in a normalised text form (see `normalise_label`), so that
`1`, `1.0` and `"1"` are the same label whichever way a CSV reader typed them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
from sklearn.metrics import (
    accuracy_score,
    mean_absolute_error,
    roc_auc_score,
    root_mean_squared_error,
)

from mlmaster_daemon.errors import GradingError
from mlmaster_daemon.tasks.spec import Metric

PROBABILITY_EPS = 1e-15
_EXAMPLES_SHOWN = 5

FloatArray = npt.NDArray[np.float64]


def normalise_label(value: Any) -> str:
    """Canonical text of a label or id.

    Whole numbers (int, float or numeric text) become integer text (`1.0` -> `"1"`), other
    numbers their shortest float text, booleans `"True"`/`"False"`, other text is stripped.
    Missing values become `""`.
    """
    if isinstance(value, str):
        return _text_label(value.strip())
    if isinstance(value, bool | np.bool_):
        return str(bool(value))
    # exact for integers beyond 2**53, where a float round trip would merge distinct ids
    if isinstance(value, int | np.integer):
        return str(int(value))
    if value is None or (np.ndim(value) == 0 and bool(pd.isna(value))):
        return ""
    if isinstance(value, float | np.floating):
        return _number_text(float(value))
    return str(value).strip()


def normalise_labels(values: Iterable[Any]) -> list[str]:
    """`normalise_label` applied to each value."""
    return [normalise_label(value) for value in values]


def sort_labels(labels: Iterable[str]) -> list[str]:
    """Unique labels sorted numerically when all are numbers, else as text."""
    unique = set(labels)
    try:
        return sorted(unique, key=float)
    except ValueError:
        return sorted(unique)


def score(
    metric: Metric,
    answers: pd.DataFrame,
    submission: pd.DataFrame,
    id_column: str,
    target: str,
) -> float:
    """Score `submission` against `answers` (columns `id_column` and `target`).

    Rows are matched by id, in any order. For roc_auc and binary log_loss the positive class
    is the largest answer label (numeric order when labels are numbers, else text order); a
    2-column submission (id, prediction) holds its probability. Otherwise a submission may
    hold one probability column per class, named by the class label. Raises `GradingError`
    when ids or columns do not match or predictions are missing or non-numeric.
    """
    for column in (id_column, target):
        if column not in answers.columns:
            raise GradingError(f"the answers have no column {column!r}")
    if id_column not in submission.columns:
        raise GradingError(f"the submission has no id column {id_column!r}")
    aligned = _align(answers, submission, id_column)
    y_true = normalise_labels(answers[target])
    if "" in y_true:
        raise GradingError(f"the answers have missing values in {target!r}")
    if metric is Metric.ACCURACY:
        return _accuracy(aligned, y_true, target)
    if metric is Metric.ROC_AUC:
        return _roc_auc(aligned, y_true, id_column, target)
    if metric is Metric.LOG_LOSS:
        return _log_loss(aligned, y_true, id_column)
    truth = _numbers(answers[target], f"answers column {target!r}")
    predicted = _numbers(_column(aligned, target), f"submission column {target!r}")
    if metric is Metric.RMSE:
        return float(root_mean_squared_error(truth, predicted))
    return float(mean_absolute_error(truth, predicted))


def _text_label(text: str) -> str:
    try:
        return str(int(text))
    except ValueError:
        pass
    try:
        number = float(text)
    except ValueError:
        return text
    return _number_text(number)


def _number_text(number: float) -> str:
    if not math.isfinite(number):
        return repr(number)
    if number.is_integer():
        return str(int(number))
    return repr(number)


def _align(answers: pd.DataFrame, submission: pd.DataFrame, id_column: str) -> pd.DataFrame:
    """Submission rows reordered to the answers' row order; raises when ids differ."""
    answer_ids = normalise_labels(answers[id_column])
    submitted_ids = normalise_labels(submission[id_column])
    for ids, who in ((answer_ids, "answers"), (submitted_ids, "submission")):
        duplicated = pd.Series(ids)[pd.Series(ids).duplicated()].unique().tolist()
        if duplicated:
            raise GradingError(f"the {who} repeat ids: {_examples(duplicated)}")
    missing = set(answer_ids) - set(submitted_ids)
    extra = set(submitted_ids) - set(answer_ids)
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"{len(missing)} id(s) have no prediction: {_examples(missing)}")
        if extra:
            parts.append(f"{len(extra)} id(s) are not in the test set: {_examples(extra)}")
        raise GradingError("the submission's ids do not match the test set: " + "; ".join(parts))
    position = {identifier: row for row, identifier in enumerate(submitted_ids)}
    order = [position[identifier] for identifier in answer_ids]
    return submission.iloc[order].reset_index(drop=True)


def _examples(values: Iterable[str]) -> str:
    """Up to a few of `values`, sorted, as text for an error message."""
    unique = sorted(set(values))
    more = ", ..." if len(unique) > _EXAMPLES_SHOWN else ""
    return ", ".join(repr(value) for value in unique[:_EXAMPLES_SHOWN]) + more


def _column(frame: pd.DataFrame, column: str) -> pd.Series:
    if column not in frame.columns:
        present = ", ".join(map(str, frame.columns))
        raise GradingError(f"the submission has no column {column!r} (it has: {present})")
    return frame[column]


def _numbers(values: pd.Series, where: str) -> FloatArray:
    """`values` as floats; raises naming `where` on missing or non-numeric entries."""
    if values.isna().any():
        raise GradingError(f"{where} has {int(values.isna().sum())} missing value(s)")
    numeric = pd.to_numeric(values, errors="coerce")
    bad = values[numeric.isna()]
    if len(bad):
        raise GradingError(
            f"{where} must hold numbers but has non-numeric values such as {bad.iloc[0]!r}"
        )
    array = numeric.to_numpy(dtype=np.float64)
    if not np.isfinite(array).all():
        raise GradingError(f"{where} has infinite values")
    return array


def _accuracy(aligned: pd.DataFrame, y_true: list[str], target: str) -> float:
    predicted = normalise_labels(_column(aligned, target))
    if "" in predicted:
        raise GradingError(f"submission column {target!r} has missing predictions")
    return float(accuracy_score(y_true, predicted))


def _binary_classes(y_true: list[str], metric: str) -> tuple[str, str]:
    classes = sort_labels(y_true)
    if len(classes) != 2:
        raise GradingError(
            f"{metric} on a single probability column needs exactly 2 classes in the answers, "
            f"found {len(classes)}: {_examples(classes)}"
        )
    return classes[0], classes[1]


def _roc_auc(aligned: pd.DataFrame, y_true: list[str], id_column: str, target: str) -> float:
    _, positive = _binary_classes(y_true, "roc_auc")
    if target in aligned.columns:
        column = target
    else:
        by_label = {normalise_label(c): c for c in aligned.columns if c != id_column}
        if positive not in by_label:
            raise GradingError(
                f"the submission has neither a {target!r} column nor a column for the "
                f"positive class {positive!r}"
            )
        column = by_label[positive]
    scores = _numbers(aligned[column], f"submission column {column!r}")
    truth = np.array([label == positive for label in y_true], dtype=np.int64)
    return float(roc_auc_score(truth, scores))


def _log_loss(aligned: pd.DataFrame, y_true: list[str], id_column: str) -> float:
    prediction_columns = [c for c in aligned.columns if c != id_column]
    if not prediction_columns:
        raise GradingError("the submission has no prediction columns")
    if len(prediction_columns) == 1:
        negative, positive = _binary_classes(y_true, "log_loss")
        column = prediction_columns[0]
        p_positive = _numbers(aligned[column], f"submission column {column!r}")
        probabilities = np.column_stack([1.0 - p_positive, p_positive])
        classes = [negative, positive]
    else:
        classes = normalise_labels(prediction_columns)
        unknown = set(y_true) - set(classes)
        if unknown:
            raise GradingError(
                "the submission has no probability column for class(es) "
                f"{_examples(unknown)} (class columns found: {', '.join(classes)})"
            )
        probabilities = np.column_stack(
            [_numbers(aligned[c], f"submission column {c!r}") for c in prediction_columns]
        )
    return _multiclass_log_loss(probabilities, [classes.index(label) for label in y_true])


def _multiclass_log_loss(probabilities: FloatArray, true_index: list[int]) -> float:
    """Mean negative log probability of the true class after clipping and row normalising."""
    clipped = np.clip(probabilities, PROBABILITY_EPS, 1.0 - PROBABILITY_EPS)
    normalised = clipped / clipped.sum(axis=1, keepdims=True)
    picked = normalised[np.arange(len(true_index)), true_index]
    return float(-np.mean(np.log(picked)))
