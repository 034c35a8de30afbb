"""MLE-bench's own graders (openai/mle-bench at 783b15a, `competitions/<id>/grade.py` and
`competitions/utils.py`), reproduced per family so that `mlmaster grade` gives a known
competition the score mle-bench gives it, refusals included.

mle-bench is more lenient than the project's own checks in places (extra columns accepted,
rows paired by position or by sorted order without checking ids, no range check) and stricter
in others (id column first, exact column sets). Each family below follows what its grade.py
does with the frames `pandas.read_csv` makes, and raises `GradingError` wherever mle-bench's
grader raises (it scores any exception as an invalid submission). Results follow
scikit-learn 1.5.1, which mle-bench pins: log loss is clipped at float64's epsilon and never
renormalised, RMSLE refuses negative values, and accuracy compares the values pandas parsed
(`True == 1`, `2.0 == 2`, `"1" != 1`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from mlmaster_daemon.errors import GradingError

FloatArray = npt.NDArray[np.float64]
EPS = float(np.finfo(np.float64).eps)
# np.isclose(row_sum, 1, atol=1e-6) with numpy's default rtol, as the log-loss graders call it.
ROW_SUM_ATOL = 1e-6
ROW_SUM_RTOL = 1e-5

Grader = Callable[[pd.DataFrame, pd.DataFrame, str, tuple[str, ...]], float]


def grade(family: str, submission: pd.DataFrame, answers: pd.DataFrame, id_column: str,
          targets: Sequence[str], answer_columns: Sequence[str] = ()) -> float:
    """The score mle-bench's grader of `family` gives `submission` (columns as read by
    pandas), unrounded. The answers must hold `answer_columns`, by default the id column and
    `targets`. Raises `GradingError` saying why where mle-bench refuses it."""
    grader = families().get(family)
    if grader is None:
        raise ValueError(f"unknown mle-bench grader family {family!r}")
    for column in answer_columns or (id_column, *targets):
        if column not in answers.columns:
            raise GradingError(f"the answers have no column {column!r}: prepare the "
                               "competition again with `mlebench prepare`")
    try:
        return float(grader(submission.copy(), answers.copy(), id_column, tuple(targets)))
    except GradingError:
        raise
    except (ValueError, TypeError, IndexError, KeyError, pd.errors.IndexingError) as exc:
        # What scikit-learn or pandas raise inside mle-bench's grader: invalid there too.
        raise GradingError(f"mle-bench's grader fails on it ({type(exc).__name__}: {exc})") \
            from None


def families() -> dict[str, Grader]:
    """Every reproduced grader by family name: Lite's here, the full benchmark's in the
    modules beside this one (one per kind of answer), imported on first use."""
    from mlmaster_daemon.tasks import (
        mlebench_graders_detection,
        mlebench_graders_full,
        mlebench_graders_labels,
        mlebench_graders_lidar,
        mlebench_graders_masks,
        mlebench_graders_numeric,
        mlebench_graders_probabilities,
        mlebench_graders_text,
    )

    found: dict[str, Grader] = dict(GRADERS)
    for module in (mlebench_graders_full, mlebench_graders_text, mlebench_graders_labels,
                   mlebench_graders_numeric, mlebench_graders_masks,
                   mlebench_graders_detection, mlebench_graders_lidar,
                   mlebench_graders_probabilities):
        found.update(module.GRADERS)
    return found


def require(submission: pd.DataFrame, columns: Sequence[str]) -> None:
    missing = [c for c in columns if c not in submission.columns]
    if missing:
        raise GradingError(f"the submission has no column(s) {', '.join(map(repr, missing))}")


def same_length(submission: pd.DataFrame, answers: pd.DataFrame) -> None:
    if len(submission) != len(answers):
        raise GradingError(f"the submission has {len(submission)} rows, the answers "
                           f"{len(answers)}")


def sorted_by_id(submission: pd.DataFrame, answers: pd.DataFrame,
                  id_column: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Both sorted by id, refused unless the ids then agree row by row."""
    sub = submission.sort_values(id_column).reset_index(drop=True)
    ans = answers.sort_values(id_column).reset_index(drop=True)
    if (sub[id_column].to_numpy() != ans[id_column].to_numpy()).any():
        raise GradingError(f"the submission's {id_column} values are not the answers' ids")
    return sub, ans


def floats(values: Any, where: str) -> FloatArray:
    """Finite floats, as scikit-learn's input check requires."""
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise GradingError(f"{where} must hold numbers") from None
    if not np.isfinite(array).all():
        raise GradingError(f"{where} has missing or infinite values")
    return array


def _roc_auc(y_true: Any, y_score: Any, where: str) -> float:
    from sklearn.metrics import roc_auc_score

    truth = np.asarray(y_true)
    if len(pd.unique(truth)) != 2:
        raise GradingError(f"ROC AUC of {where} needs both classes in the answers")
    return float(roc_auc_score(truth, floats(y_score, f"submission column {where!r}")))


# --- families ------------------------------------------------------------------------------


def _auroc(sub: pd.DataFrame, ans: pd.DataFrame, id_column: str,
           targets: tuple[str, ...]) -> float:
    """utils.prepare_for_auroc_metric per scored column, then roc_auc_score; several columns
    (ranzcr) are averaged."""
    scores = []
    for target in targets:
        require(sub, (id_column, target))
        same_length(sub, ans)
        try:
            numeric = pd.to_numeric(sub[target])
        except (ValueError, TypeError):
            raise GradingError(f"submission column {target!r} must hold numbers") from None
        if numeric.min() < 0 or numeric.max() > 1:
            raise GradingError(f"submission column {target!r} must hold probabilities in "
                               "[0, 1]")
        s, a = sorted_by_id(sub, ans, id_column)
        scores.append(_roc_auc(a[target], s[target], target))
    return float(np.mean(scores))


def _column_auc(sub: pd.DataFrame, ans: pd.DataFrame, id_column: str,
                targets: tuple[str, ...]) -> float:
    """playground-series-s3e18: macro ROC AUC over the columns, by id, no range check."""
    require(sub, (id_column, *targets))
    same_length(sub, ans)
    s, a = sorted_by_id(sub, ans, id_column)
    return float(np.mean([_roc_auc(a[t], s[t], t) for t in targets]))


def _column_auc_exact_columns(sub: pd.DataFrame, ans: pd.DataFrame, id_column: str,
                              targets: tuple[str, ...]) -> float:
    """plant-pathology-2020-fgvc7: exactly the id and class columns, by id, no range check."""
    same_length(sub, ans)
    expected = {id_column, *targets}
    if set(sub.columns) != expected:
        raise GradingError(f"the submission's columns must be exactly {sorted(expected)}")
    return _column_auc(sub, ans, id_column, targets)


def _column_auc_by_position(sub: pd.DataFrame, ans: pd.DataFrame, id_column: str,
                            targets: tuple[str, ...]) -> float:
    """jigsaw-toxic: rows whose answers are all -1 are dropped; every non-id submission
    column is scored by its position against the answers' columns; no range check."""
    require(sub, (id_column, *targets))
    if len(sub) != len(ans):
        raise GradingError(f"the submission has {len(sub)} rows, the answers {len(ans)}")
    s = sub.set_index(id_column).sort_index()
    a = ans.set_index(id_column).sort_index()
    if not s.index.equals(a.index):
        raise GradingError(f"the submission's {id_column} values are not the answers' ids")
    keep = (a[list(targets)].sum(axis=1) >= 0).to_numpy()
    truth, scores = a.to_numpy()[keep], s.to_numpy()[keep]
    if truth.shape != scores.shape:
        raise GradingError(f"the submission has {scores.shape[1]} prediction columns where "
                           f"the answers have {truth.shape[1]} (columns are read by position)")
    return float(np.mean([_roc_auc(truth[:, c], scores[:, c], f"column {c + 1}")
                          for c in range(truth.shape[1])]))


def _label_kind(values: npt.NDArray[Any]) -> str:
    """'text' or 'number' (bools included), as scikit-learn's label checks see them."""
    if values.dtype.kind in "biuf":
        return "number"
    return "text" if any(isinstance(v, str) for v in values) else "number"


def accuracy_values(y_true: npt.NDArray[Any], y_pred: npt.NDArray[Any]) -> float:
    """accuracy_score on the raw values: refused with missing or fractional labels, and
    when both sides are binary but one holds text and the other numbers."""
    for values, who in ((y_true, "answers"), (y_pred, "submission")):
        if pd.isna(values).any():
            raise GradingError(f"the {who} have missing labels")
        if values.dtype.kind == "f" and (values != np.round(values)).any():
            raise GradingError(f"the {who} hold fractional numbers, not class labels")
    kinds = {_label_kind(y_true), _label_kind(y_pred)}
    if len(kinds) == 2 and max(len(pd.unique(y_true)), len(pd.unique(y_pred))) <= 2:
        raise GradingError("the submission mixes text and number labels with the answers'")
    equal = np.array([t == p for t, p in zip(y_true.tolist(), y_pred.tolist(), strict=True)],
                     dtype=bool)
    return float(equal.mean())


def _accuracy(sub: pd.DataFrame, ans: pd.DataFrame, id_column: str,
              targets: tuple[str, ...]) -> float:
    """utils.prepare_for_accuracy_metric, then accuracy_score."""
    target = targets[0]
    same_length(sub, ans)
    require(sub, (target, id_column))
    s, a = sorted_by_id(sub, ans, id_column)
    return accuracy_values(a[target].to_numpy(), s[target].to_numpy())


def _accuracy_blank_is_wrong(sub: pd.DataFrame, ans: pd.DataFrame, id_column: str,
                             targets: tuple[str, ...]) -> float:
    """paddy-disease-classification: a blank label is "", so it counts as wrong."""
    target = targets[0]
    require(sub, (id_column, target))
    same_length(sub, ans)
    s, a = sorted_by_id(sub, ans, id_column)
    predicted = s[target].astype(object).where(s[target].notna(), "")
    return accuracy_values(a[target].to_numpy(), np.asarray(predicted.tolist(), dtype=object))


def _as_text(values: pd.Series) -> list[str]:
    """pandas 2's `astype(str)`: a missing value is "nan", a float keeps its ".0"."""
    return ["nan" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v)
            for v in values.tolist()]


def _text_accuracy(sub: pd.DataFrame, ans: pd.DataFrame, id_column: str,
                   targets: tuple[str, ...]) -> float:
    """text-normalization: exact text equality of the values as pandas read them (NA-like
    tokens such as "None" or "NA" read as missing on both sides and compare equal)."""
    target = targets[0]
    same_length(sub, ans)
    require(sub, (target, id_column))
    s, a = sorted_by_id(sub, ans, id_column)
    truth, guess = _as_text(a[target]), _as_text(s[target])
    return float(np.mean([t == g for t, g in zip(truth, guess, strict=True)]))


def _f1_micro(sub: pd.DataFrame, ans: pd.DataFrame, id_column: str,
              targets: tuple[str, ...]) -> float:
    """plant-seedlings: f1_score(average="micro") on lists, which numpy turns into text when
    any label is text (a blank becomes "nan", a wrong label); equal to accuracy."""
    target = targets[0]
    require(sub, (id_column, target))
    same_length(sub, ans)
    s, a = sorted_by_id(sub, ans, id_column)
    sides = []
    for values in (a[target], s[target]):
        listed = values.tolist()
        if any(isinstance(v, str) for v in listed):
            sides.append(np.asarray(_as_text(values), dtype=object))
        else:
            sides.append(np.asarray(listed))
    if _label_kind(sides[0]) != _label_kind(sides[1]):
        raise GradingError("the submission mixes text and number labels with the answers'")
    return accuracy_values(sides[0], sides[1])


def _qwk(sub: pd.DataFrame, ans: pd.DataFrame, id_column: str,
         targets: tuple[str, ...]) -> float:
    """aptos2019: the same set of ids (no length check), sorted; quadratic kappa."""
    from sklearn.metrics import cohen_kappa_score

    target = targets[0]
    require(sub, (target,))
    if sub.empty:
        raise GradingError("the submission has no rows")
    require(sub, (id_column,))
    if set(sub[id_column]) != set(ans[id_column]):
        raise GradingError(f"the submission's {id_column} values are not the answers' ids")
    s = sub.sort_values(id_column)
    a = ans.sort_values(id_column)
    if len(s) != len(a):
        raise GradingError(f"the submission has {len(s)} rows, the answers {len(a)}")
    predicted, truth = s[target].to_numpy(), a[target].to_numpy()
    accuracy_values(truth, predicted)  # the same label checks as scikit-learn's
    return float(cohen_kappa_score(predicted, truth, weights="quadratic"))


def _rmse(truth: Any, predicted: Any, target: str) -> float:
    t = floats(truth, f"answers column {target!r}")
    p = floats(predicted, f"submission column {target!r}")
    if len(t) != len(p):
        raise GradingError(f"the submission has {len(p)} rows, the answers {len(t)}")
    return float(np.sqrt(np.mean((t - p) ** 2)))


def _rmse_by_id(sub: pd.DataFrame, ans: pd.DataFrame, id_column: str,
                targets: tuple[str, ...]) -> float:
    """denoising-dirty-documents: numbers, same length, the same ids after sorting."""
    target = targets[0]
    require(sub, (id_column, target))
    floats(sub[target].dropna(), f"submission column {target!r}")
    same_length(sub, ans)
    s, a = sorted_by_id(sub, ans, id_column)
    return _rmse(a[target], s[target], target)


def _rmse_sorted_unchecked(sub: pd.DataFrame, ans: pd.DataFrame, id_column: str,
                           targets: tuple[str, ...]) -> float:
    """new-york-city-taxi: both sorted by key and paired by position; keys are not compared."""
    target = targets[0]
    require(sub, (target, id_column))
    s = sub.sort_values(id_column)
    a = ans.sort_values(id_column)
    return _rmse(a[target], s[target], target)


def _rmsle_by_position(sub: pd.DataFrame, ans: pd.DataFrame, id_column: str,
                       targets: tuple[str, ...]) -> float:
    """nomad2018: mean RMSLE over the columns, rows paired by position (ids never read)."""
    require(sub, targets)
    same_length(sub, ans)
    scores = []
    for target in targets:
        t = floats(ans[target], f"answers column {target!r}")
        p = floats(sub[target], f"submission column {target!r}")
        if (t < 0).any() or (p < 0).any():
            raise GradingError(f"RMSLE cannot score negative values (column {target!r})")
        scores.append(float(np.sqrt(np.mean((np.log1p(t) - np.log1p(p)) ** 2))))
    return float(np.mean(scores))


def _binary_log_loss(sub: pd.DataFrame, ans: pd.DataFrame, id_column: str,
                     targets: tuple[str, ...]) -> float:
    """dogs-vs-cats: one probability column, in [0, 1], the same ids; clipped at eps."""
    target = targets[0]
    require(sub, (id_column, target))
    if set(sub[id_column]) != set(ans[id_column]):
        raise GradingError(f"the submission's {id_column} values are not the answers' ids")
    same_length(sub, ans)
    p = pd.to_numeric(sub[target], errors="coerce")
    if not ((p >= 0) & (p <= 1)).all():
        raise GradingError(f"submission column {target!r} must hold probabilities in [0, 1]")
    s = sub.sort_values(id_column)
    a = ans.sort_values(id_column)
    truth = floats(a[target], f"answers column {target!r}")
    if len(np.unique(truth)) != 2 or not np.isin(truth, (0.0, 1.0)).all():
        raise GradingError(f"answers column {target!r} must hold both classes 0 and 1")
    clipped = np.clip(floats(s[target], target), EPS, 1.0 - EPS)
    return float(-np.mean(truth * np.log(clipped) + (1.0 - truth) * np.log(1.0 - clipped)))


def class_probabilities(frame: pd.DataFrame, columns: Sequence[str]) -> FloatArray:
    """Class columns whose rows sum to 1 (np.isclose) and lie in [0, 1], as the log-loss
    graders check before scoring."""
    try:
        values = frame[list(columns)].to_numpy(dtype=np.float64)
    except (TypeError, ValueError):
        raise GradingError("the class probability columns must hold numbers (is the id the "
                           "first column?)") from None
    sums = values.sum(axis=1)
    if not np.isclose(sums, 1.0, rtol=ROW_SUM_RTOL, atol=ROW_SUM_ATOL).all():
        raise GradingError("each row's class probabilities must sum to 1 (within 1e-6)")
    if not ((values >= 0) & (values <= 1)).all():
        raise GradingError("every class probability must lie in [0, 1]")
    return values


def one_hot_log_loss_inputs(sub: pd.DataFrame, ans: pd.DataFrame, id_column: str,
                             classes: tuple[str, ...]) -> float:
    """utils.one_hot_dfs_to_log_loss_inputs, then log_loss on one-hot answers."""
    require(sub, [id_column, *classes])
    columns = [id_column, *classes]
    s = sub[columns].sort_values(id_column).reset_index(drop=True)
    a = ans[columns].sort_values(id_column).reset_index(drop=True)
    if s[id_column].tolist() != a[id_column].tolist():
        raise GradingError(f"the submission's {id_column} values are not the answers' ids")
    truth = floats(a[list(classes)], "the answers' class columns")
    predicted = np.clip(floats(s[list(classes)], "the class columns"), EPS, 1.0 - EPS)
    return float(-np.mean((truth * np.log(predicted)).sum(axis=1)))


def _one_hot_log_loss(sub: pd.DataFrame, ans: pd.DataFrame, id_column: str,
                      targets: tuple[str, ...]) -> float:
    """dog-breed-identification: every class column and the id (others ignored)."""
    require(sub, [*targets, id_column])
    same_length(sub, ans)
    class_probabilities(sub, targets)
    return one_hot_log_loss_inputs(sub, ans, id_column, targets)


def _one_hot_log_loss_exact_columns(sub: pd.DataFrame, ans: pd.DataFrame, id_column: str,
                                    targets: tuple[str, ...]) -> float:
    """leaf-classification: exactly the id and the class columns."""
    if set(sub.columns) != {id_column, *targets}:
        raise GradingError(f"the submission's columns must be exactly {id_column} and the "
                           f"{len(targets)} class columns")
    same_length(sub, ans)
    class_probabilities(sub, targets)
    return one_hot_log_loss_inputs(sub, ans, id_column, targets)


def _one_hot_log_loss_by_shape(sub: pd.DataFrame, ans: pd.DataFrame, id_column: str,
                               targets: tuple[str, ...]) -> float:
    """spooky-author-identification: one row per answer and the id plus one column per
    class, the id first (the row sums are taken over every other column)."""
    if sub.shape != (len(ans), len(targets) + 1):
        raise GradingError(f"the submission must have {len(ans)} rows and {len(targets) + 1} "
                           f"columns, it has {sub.shape[0]} and {sub.shape[1]}")
    class_probabilities(sub, [str(c) for c in sub.columns[1:]])
    return one_hot_log_loss_inputs(sub, ans, id_column, targets)


GRADERS: dict[str, Grader] = {
    "auroc": _auroc,
    "column_auc": _column_auc,
    "column_auc_exact_columns": _column_auc_exact_columns,
    "column_auc_by_position": _column_auc_by_position,
    "accuracy": _accuracy,
    "accuracy_blank_is_wrong": _accuracy_blank_is_wrong,
    "text_accuracy": _text_accuracy,
    "f1_micro": _f1_micro,
    "qwk": _qwk,
    "rmse_by_id": _rmse_by_id,
    "rmse_sorted_unchecked": _rmse_sorted_unchecked,
    "rmsle_by_position": _rmsle_by_position,
    "binary_log_loss": _binary_log_loss,
    "one_hot_log_loss": _one_hot_log_loss,
    "one_hot_log_loss_exact_columns": _one_hot_log_loss_exact_columns,
    "one_hot_log_loss_by_shape": _one_hot_log_loss_by_shape,
}
