"""Score a submission against answers with one of the supported metrics, as MLE-bench grades.

Ids, and labels whose answers are numbers or booleans, are compared in a normalised text form
(`labels.normalise_label`), so that `1`, `1.0`, `"1"` and `True` are the same label whichever
way a CSV reader typed them; text answers are compared as exact text. scikit-learn
is imported only by the metrics that use it, when they are first scored.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from mlmaster_daemon.errors import GradingError
from mlmaster_daemon.tasks.labels import normalise_label, normalise_labels, sort_labels, text_label
from mlmaster_daemon.tasks.spec import Metric

__all__ = ["PROBABILITY_EPS", "ROW_SUM_ATOL", "ROW_SUM_RTOL", "normalise_label",
           "normalise_labels", "score", "sort_labels"]

# scikit-learn >= 1.5 (which MLE-bench pins) clips log-loss probabilities at float64's epsilon.
PROBABILITY_EPS = float(np.finfo(np.float64).eps)
# MLE-bench refuses class probabilities whose row sum is not 1 within np.isclose's tolerance.
ROW_SUM_ATOL = 1e-6
ROW_SUM_RTOL = 1e-5
_EXAMPLES_SHOWN = 5
_F1_METRICS = (Metric.F1, Metric.F1_MICRO, Metric.F1_MACRO)

FloatArray = npt.NDArray[np.float64]


def score(
    metric: Metric,
    answers: pd.DataFrame,
    submission: pd.DataFrame,
    id_column: str,
    target: str | Sequence[str],
    *,
    k: int = 5,
) -> float:
    """Score `submission` against `answers` (columns `id_column` and `target`).

    Rows are matched by id, in any order. `target` names the scored column, or several: with
    several, log_loss reads them as one-hot class columns (answers 0/1 with a single 1 per row,
    the submission a probability per column) and every other metric is the mean of its score
    on each column (e.g. mean column-wise ROC AUC, leaving out rows whose answers are all -1,
    or RMSLE).

    On one column: for roc_auc, binary log_loss and f1 the positive class is the largest
    answer label (numeric order when labels are numbers, else text order). A roc_auc or
    log_loss submission of one prediction column holds the positive class's probability,
    otherwise it may hold one probability column per class, named by the class label. qwk
    needs integer labels; rmsle values >= 0; roc_auc probabilities in [0, 1]; log_loss clips
    probabilities at float64's epsilon and refuses class probabilities whose rows do not sum
    to 1 (within 1e-6 + 1e-5), never renormalising them (scikit-learn >= 1.5). map@k reads
    space-separated labels: the true one(s) per answer row, up to `k` ranked guesses per
    submission row (later ones are ignored). f1_micro and f1_macro average over every label
    of the answers and the predictions, as scikit-learn does. Raises `GradingError` saying
    what is wrong when ids or columns do not match or values are missing or unusable.
    """
    if metric is Metric.COMPETITION:
        raise ValueError("the competition metric is scored by the competition's grader "
                         "(grading.grade), not by metrics.score")
    columns = _target_columns(target)
    if metric is Metric.MAP_AT_K and k < 1:
        raise GradingError(f"map@k needs k >= 1, got k={k}")
    for column in (id_column, *columns):
        if column not in answers.columns:
            raise GradingError(f"the answers have no column {column!r}")
    if id_column not in submission.columns:
        raise GradingError(f"the submission has no id column {id_column!r}")
    aligned = _align(answers, submission, id_column)
    if len(columns) == 1:
        return _score_column(metric, answers, aligned, id_column, columns[0], k, lone=True)
    if metric is Metric.LOG_LOSS:
        return _one_hot_log_loss(answers, aligned, id_column, columns)
    if metric is Metric.ROC_AUC:
        answers, aligned = _scored_rows(answers, aligned, columns)
    per_column = [
        _score_column(metric, answers, aligned, id_column, column, k, lone=False)
        for column in columns
    ]
    return float(np.mean(per_column))


def _scored_rows(answers: pd.DataFrame, aligned: pd.DataFrame,
                 columns: tuple[str, ...]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Without the rows whose answers are -1 in every column: Kaggle's mark for test rows that
    are not scored (jigsaw's test labels), which MLE-bench drops too."""
    values = answers[list(columns)].apply(pd.to_numeric, errors="coerce")
    unscored = (values == -1).all(axis=1).to_numpy()
    if not unscored.any():
        return answers, aligned
    keep = ~unscored
    return (answers[keep].reset_index(drop=True), aligned[keep].reset_index(drop=True))


def _target_columns(target: str | Sequence[str]) -> tuple[str, ...]:
    columns = (target,) if isinstance(target, str) else tuple(target)
    if not columns:
        raise GradingError("no target column was given to score")
    return columns


def _score_column(
    metric: Metric,
    answers: pd.DataFrame,
    aligned: pd.DataFrame,
    id_column: str,
    target: str,
    k: int,
    *,
    lone: bool,
) -> float:
    """`metric` on one answers column; `lone` when it is the only one (class columns allowed)."""
    y_true = normalise_labels(answers[target])
    if "" in y_true:
        raise GradingError(f"the answers have missing values in {target!r}")
    if metric is Metric.ACCURACY or metric in _F1_METRICS:
        labels, guesses = _class_labels(answers[target], aligned, target, y_true)
        if metric is Metric.ACCURACY:
            return _accuracy(labels, guesses)
        return _f1(metric, labels, guesses, target)
    if metric is Metric.MAP_AT_K:
        return _map_at_k(answers[target], _labels_column(aligned, target), k)
    if metric is Metric.ROC_AUC:
        return _roc_auc(aligned, y_true, id_column, target, lone)
    if metric is Metric.LOG_LOSS:
        return _log_loss(aligned, y_true, id_column)
    truth = _numbers(answers[target], f"answers column {target!r}")
    predicted = _numbers(_column(aligned, target), f"submission column {target!r}")
    if metric is Metric.QWK:
        return _qwk(truth, predicted, target)
    if metric is Metric.RMSLE:
        return _rmsle(truth, predicted, target)
    if metric is Metric.RMSE:
        return float(np.sqrt(np.mean((predicted - truth) ** 2)))
    return float(np.mean(np.abs(predicted - truth)))


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


def _labels_column(frame: pd.DataFrame, column: str) -> pd.Series:
    """The submission's `column`; raises when it has missing predictions."""
    values = _column(frame, column)
    missing = int(values.isna().sum())
    if missing:
        raise GradingError(f"submission column {column!r} has {missing} missing prediction(s)")
    return values


def _labels(frame: pd.DataFrame, column: str) -> list[str]:
    predicted = normalise_labels(_labels_column(frame, column))
    if "" in predicted:
        raise GradingError(f"submission column {column!r} has missing predictions")
    return predicted


def _class_labels(truth: pd.Series, aligned: pd.DataFrame, target: str,
                  normalised: list[str]) -> tuple[list[str], list[str]]:
    """Labels to compare: numbers and booleans in normalised form (`1 == 1.0 == True`), text
    answers as exact text, as scikit-learn compares what pandas read ("007" is not "7")."""
    if pd.api.types.is_numeric_dtype(truth) or pd.api.types.is_bool_dtype(truth):
        return normalised, _labels(aligned, target)
    return [str(v) for v in truth.tolist()], [str(v) for v in _labels_column(aligned, target)]


def _accuracy(y_true: list[str], predicted: list[str]) -> float:
    return float(np.mean(np.asarray(y_true) == np.asarray(predicted)))


def _f1(metric: Metric, y_true: list[str], predicted: list[str], target: str) -> float:
    """F1 of the positive (largest) label, or the micro / macro F1 over every label either
    side uses (a predicted label the answers lack is a false positive, scoring F1 0)."""
    if metric is Metric.F1:
        labels = [_binary_classes(y_true, f"f1 on answers column {target!r}")[1]]
    else:
        labels = sort_labels([*y_true, *predicted])
    truth, guess = np.asarray(y_true), np.asarray(predicted)
    # Per label: true positives, false positives, false negatives.
    counts = np.array(
        [
            [
                np.sum((truth == label) & (guess == label)),
                np.sum((truth != label) & (guess == label)),
                np.sum((truth == label) & (guess != label)),
            ]
            for label in labels
        ],
        dtype=np.float64,
    )
    if metric is Metric.F1_MICRO:
        tp, fp, fn = counts.sum(axis=0)
        return float(2 * tp / (2 * tp + fp + fn))
    # Every label occurs on one side at least, so 2 tp + fp + fn > 0.
    per_label = 2 * counts[:, 0] / (2 * counts[:, 0] + counts[:, 1] + counts[:, 2])
    return float(np.mean(per_label))


def _tokens(value: Any) -> list[str]:
    """The space-separated labels in one cell, each normalised."""
    if isinstance(value, str):
        return [text_label(token) for token in value.split()]
    return [normalise_label(value)]


def _map_at_k(answer_values: pd.Series, predicted_values: pd.Series, k: int) -> float:
    """Mean over rows of the average precision at k of each row's ranked guesses."""
    precisions = [
        _average_precision(set(_tokens(truth)), _tokens(guesses)[:k], k)
        for truth, guesses in zip(answer_values, predicted_values, strict=True)
    ]
    return float(np.mean(precisions))


def _average_precision(actual: set[str], ranked: list[str], k: int) -> float:
    """Sum of precision at each rank holding a new true label, over min(|actual|, k)."""
    hits = 0
    total = 0.0
    seen: set[str] = set()
    for rank, label in enumerate(ranked, start=1):
        # A repeated guess keeps its rank but cannot be a second hit.
        if label in actual and label not in seen:
            hits += 1
            total += hits / rank
        seen.add(label)
    return total / min(len(actual), k)


def _binary_classes(y_true: list[str], what: str) -> tuple[str, str]:
    classes = sort_labels(y_true)
    if len(classes) != 2:
        raise GradingError(
            f"{what} needs exactly 2 classes in the answers, "
            f"found {len(classes)}: {_examples(classes)}"
        )
    return classes[0], classes[1]


def _probabilities(values: pd.Series, where: str) -> FloatArray:
    """`_numbers`, also requiring each value to lie in [0, 1]."""
    array = _numbers(values, where)
    outside = array[(array < 0.0) | (array > 1.0)]
    if len(outside):
        raise GradingError(
            f"{where} must hold probabilities in [0, 1] but has {len(outside)} value(s) "
            f"outside, such as {float(outside[0])!r}"
        )
    return array


def _roc_auc(
    aligned: pd.DataFrame, y_true: list[str], id_column: str, target: str, lone: bool
) -> float:
    from sklearn.metrics import roc_auc_score

    _, positive = _binary_classes(y_true, f"roc_auc on answers column {target!r}")
    if target in aligned.columns or not lone:
        column = target
    else:
        by_label = {normalise_label(c): c for c in aligned.columns if c != id_column}
        if positive not in by_label:
            raise GradingError(
                f"the submission has neither a {target!r} column nor a column for the "
                f"positive class {positive!r}"
            )
        column = by_label[positive]
    scores = _probabilities(_column(aligned, column), f"submission column {column!r}")
    truth = np.array([label == positive for label in y_true], dtype=np.int64)
    return float(roc_auc_score(truth, scores))


def _qwk(truth: FloatArray, predicted: FloatArray, target: str) -> float:
    """Quadratic weighted kappa, weights by position among the labels either side uses."""
    from sklearn.metrics import cohen_kappa_score

    for values, who in ((truth, "answers"), (predicted, "submission")):
        fractional = values[values != np.round(values)]
        if len(fractional):
            raise GradingError(
                f"qwk needs integer labels but {who} column {target!r} has "
                f"{len(fractional)} non-integer value(s), such as {float(fractional[0])!r}"
            )
    kappa = cohen_kappa_score(
        truth.astype(np.int64), predicted.astype(np.int64), weights="quadratic"
    )
    return float(kappa)


def _rmsle(truth: FloatArray, predicted: FloatArray, target: str) -> float:
    for values, who in ((truth, "answers"), (predicted, "submission")):
        negative = values[values < 0.0]
        if len(negative):
            raise GradingError(
                f"rmsle needs values >= 0 but {who} column {target!r} has {len(negative)} "
                f"negative value(s), such as {float(negative[0])!r}"
            )
    return float(np.sqrt(np.mean((np.log1p(predicted) - np.log1p(truth)) ** 2)))


def _log_loss(aligned: pd.DataFrame, y_true: list[str], id_column: str) -> float:
    prediction_columns = [c for c in aligned.columns if c != id_column]
    if not prediction_columns:
        raise GradingError("the submission has no prediction columns")
    if len(prediction_columns) == 1:
        _, positive = _binary_classes(y_true, "log_loss on a single probability column")
        column = prediction_columns[0]
        p_positive = np.clip(_probabilities(aligned[column], f"submission column {column!r}"),
                             PROBABILITY_EPS, 1.0 - PROBABILITY_EPS)
        probabilities = np.column_stack([1.0 - p_positive, p_positive])
        return _multiclass_log_loss(probabilities, [int(label == positive) for label in y_true],
                                    check_sums=False)
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


def _multiclass_log_loss(probabilities: FloatArray, true_index: list[int], *,
                         check_sums: bool = True) -> float:
    """Mean negative log probability of the true class, clipped to [eps, 1 - eps] and not
    renormalised; with `check_sums`, rows must sum to 1 first (MLE-bench's check)."""
    if check_sums:
        sums = probabilities.sum(axis=1)
        off = ~np.isclose(sums, 1.0, rtol=ROW_SUM_RTOL, atol=ROW_SUM_ATOL)
        if off.any():
            row = int(np.argmax(off))
            raise GradingError(
                f"each row's class probabilities must sum to 1, but {int(off.sum())} row(s) do "
                f"not (row {row + 1} in the answers' order sums to {float(sums[row])!r}); "
                "normalise them before writing")
    outside = probabilities[(probabilities < 0.0) | (probabilities > 1.0)]
    if len(outside):
        raise GradingError(f"probabilities must lie in [0, 1] but {len(outside)} value(s) do "
                           f"not, such as {float(outside[0])!r}")
    clipped = np.clip(probabilities, PROBABILITY_EPS, 1.0 - PROBABILITY_EPS)
    picked = clipped[np.arange(len(true_index)), true_index]
    return float(-np.mean(np.log(picked)))


def _one_hot_log_loss(
    answers: pd.DataFrame, aligned: pd.DataFrame, id_column: str, columns: tuple[str, ...]
) -> float:
    """Log loss with answers given as one-hot class columns and a probability column each."""
    truth = np.column_stack([_numbers(answers[c], f"answers column {c!r}") for c in columns])
    one_hot = np.isin(truth, (0.0, 1.0)).all(axis=1) & (truth.sum(axis=1) == 1.0)
    if not one_hot.all():
        row = int(np.argmin(one_hot))
        raise GradingError(
            "the answers' class columns must be one-hot (a single 1 per row, 0 elsewhere) but "
            f"the row of id {normalise_label(answers[id_column].iloc[row])!r} is not"
        )
    probabilities = np.column_stack(
        [_numbers(_column(aligned, c), f"submission column {c!r}") for c in columns]
    )
    return _multiclass_log_loss(probabilities, truth.argmax(axis=1).tolist())
