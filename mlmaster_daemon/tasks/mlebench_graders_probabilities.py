"""mle-bench's graders of full-benchmark competitions scored on probabilities against medical
labels: probabilistic F1 (rsna-breast-cancer-detection), weighted multi-label log loss
(rsna-2022-cervical-spine-fracture-detection) and KL divergence of vote shares
(hms-harmful-brain-activity-classification); reproduced as `mlebench_graders` reproduces
Lite's. Each grade.py names its own columns, so these graders use those names."""

from __future__ import annotations

import numpy as np
import pandas as pd

from mlmaster_daemon.errors import GradingError
from mlmaster_daemon.tasks.mlebench_graders import FloatArray, Grader, require, same_length

SPINE_PARTS = ("patient_overall", "C1", "C2", "C3", "C4", "C5", "C6", "C7")
HMS_VOTES = ("seizure_vote", "lpd_vote", "gpd_vote", "lrda_vote", "grda_vote", "other_vote")


# --- probabilistic F1 (rsna-breast-cancer-detection) ---------------------------------------


def _rsna_breast_cancer(sub: pd.DataFrame, ans: pd.DataFrame, id_column: str,
                        targets: tuple[str, ...]) -> float:
    """pF1: predictions clipped to [0, 1] count as fractional true and false positives; 0
    when precision or recall is not positive (a missing prediction makes both NaN)."""
    require(sub, ("prediction_id", "cancer"))
    same_length(sub, ans)
    s = sub.sort_values("prediction_id")
    a = ans.sort_values("prediction_id")
    if (s["prediction_id"].to_numpy() != a["prediction_id"].to_numpy()).any():
        raise GradingError("the submission's prediction_id values are not the answers' ids")
    guess = s["cancer"]
    if guess.dtype.kind not in "biuf":
        raise GradingError("submission column 'cancer' must hold numbers")
    labels = a["cancer"].to_numpy()
    positive = (labels != 0) if labels.dtype.kind in "biuf" else np.array(
        [bool(v) for v in labels.tolist()])
    if not positive.any():
        raise GradingError("the answers have no positive case, so recall is undefined")
    p = np.clip(guess.to_numpy(dtype=np.float64), 0, 1)
    true_positive, false_positive = float(np.sum(p[positive])), float(np.sum(p[~positive]))
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.float64(true_positive) / np.float64(true_positive + false_positive)
    recall = true_positive / int(positive.sum())
    if precision > 0 and recall > 0:
        return float(2 * (precision * recall) / (precision + recall))
    return 0.0


# --- weighted multi-label log loss (rsna-2022-cervical-spine) ------------------------------


def _by_study(frame: pd.DataFrame) -> pd.DataFrame:
    """row_id `<study>_<part>` back to one row per study and one column per part."""
    if frame["row_id"].dtype.kind in "biufcmM":
        raise GradingError("row_id values must read <StudyInstanceUID>_<part>")
    parts = frame["row_id"].str.split("_", n=1, expand=True)
    if parts.shape[1] != 2:
        raise GradingError("row_id values must read <StudyInstanceUID>_<part>")
    table = pd.DataFrame({"study": parts[0], "part": parts[1],
                          "fractured": frame["fractured"].to_numpy()})
    if table.duplicated(["study", "part"]).any():
        raise GradingError("a row_id names the same study and part twice")
    wide = table.pivot(index="study", columns="part", values="fractured")
    missing = [p for p in SPINE_PARTS if p not in wide.columns]
    if missing:
        raise GradingError(f"no row_id names the part(s) {', '.join(missing)}")
    return wide.sort_index()[list(SPINE_PARTS)]


def _rsna_cervical_spine(sub: pd.DataFrame, ans: pd.DataFrame, id_column: str,
                         targets: tuple[str, ...]) -> float:
    """Per study, the log loss of its 8 parts (clipped at 1e-15) weighted 7 (overall) and 1,
    doubled where fractured, over the weights' sum; then the mean over studies."""
    require(sub, ("row_id", "fractured"))
    guess = sub["fractured"]
    if guess.dtype.kind not in "biuf":
        raise GradingError("submission column 'fractured' must hold numbers")
    if not guess.between(0, 1).all():
        raise GradingError("submission column 'fractured' must hold probabilities in [0, 1] "
                           "(none missing)")
    if not ans["fractured"].isin([0, 1]).all():
        raise GradingError("answers column 'fractured' must hold 0 or 1")
    s = sub.sort_values("row_id")
    a = ans.sort_values("row_id")
    if len(s) != len(a) or (s["row_id"].to_numpy() != a["row_id"].to_numpy()).any():
        raise GradingError("the submission's row_id values are not the answers' ids")
    truth = _by_study(a).to_numpy(dtype=np.float64)
    predicted = np.clip(_by_study(s).to_numpy(dtype=np.float64), 1e-15, 1 - 1e-15)
    loss = -(truth * np.log(predicted) + (1 - truth) * np.log(1 - predicted))
    weights = truth * np.array([14, 2, 2, 2, 2, 2, 2, 2], dtype=np.float64) \
        + (1 - truth) * np.array([7, 1, 1, 1, 1, 1, 1, 1], dtype=np.float64)
    return float(np.mean(np.sum(loss * weights, axis=1) / weights.sum(axis=1)))


# --- KL divergence (hms-harmful-brain-activity-classification) -----------------------------


def _probability_table(frame: pd.DataFrame, who: str) -> FloatArray:
    """Kaggle's verify_valid_probabilities: numbers in [0, 1], rows summing to 1 (allclose)."""
    values = frame.to_numpy()
    if not pd.api.types.is_numeric_dtype(values):
        raise GradingError(f"every column of the {who} but eeg_id must hold numbers")
    numbers = np.asarray(values, dtype=np.float64)
    if np.nanmin(numbers, initial=np.inf) < 0 or np.nanmax(numbers, initial=-np.inf) > 1:
        raise GradingError(f"every probability of the {who} must lie in [0, 1]")
    if not np.allclose(np.nansum(numbers, axis=1), 1):
        raise GradingError(f"the {who}' rows must sum to 1")
    return numbers


def _hms_brain_activity(sub: pd.DataFrame, ans: pd.DataFrame, id_column: str,
                        targets: tuple[str, ...]) -> float:
    """Mean over rows of Σ y·log(y / p) over the six votes, the answers' votes divided by
    their row's total, predictions clipped to [1e-15, 1 - 1e-15], 0 where y is 0 or p is
    missing; rows paired by sorted eeg_id. Every submission column but eeg_id must be a
    probability and each row must sum to 1 (6 decimals for the six votes, allclose for all)."""
    votes = list(HMS_VOTES)
    require(sub, ("eeg_id", *votes))
    same_length(sub, ans)
    if not {sub[v].dtype.kind for v in votes} <= set("iuf"):
        # Boolean columns clip to objects that numpy cannot take the log of.
        raise GradingError("the vote columns must hold numbers")
    sums = sub[votes].to_numpy(dtype=np.float64, na_value=np.nan)
    if not all(round(total, 5) == 1 for total in np.nansum(sums, axis=1).tolist()):
        raise GradingError("each row's vote probabilities must sum to 1")
    if set(ans["eeg_id"]) != set(sub["eeg_id"]):
        raise GradingError("the submission's eeg_id values are not the answers' ids")
    # eeg_id repeats. mle-bench's unstable sort pairs a repeated id's rows in an order that
    # varies with numpy's version and CPU, except when both files list the rows alike (or the
    # predictions agree within the id): then it pairs them by position, as a stable sort does.
    s = sub.sort_values("eeg_id", kind="stable").reset_index(drop=True)
    a = ans.sort_values("eeg_id", kind="stable").reset_index(drop=True)
    counts = a[votes].to_numpy(dtype=np.float64, na_value=np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        truth = counts / np.nansum(counts, axis=1, keepdims=True)
    _probability_table(pd.DataFrame(truth), "answers")
    _probability_table(s.drop(columns="eeg_id"), "submission")
    # pandas 2 clips a whole-number column to whole numbers: a 0 stays 0 (log of y / 0).
    predicted = np.column_stack([
        s[v].to_numpy(dtype=np.float64, na_value=np.nan) if s[v].dtype.kind in "iu"
        else np.clip(s[v].to_numpy(dtype=np.float64, na_value=np.nan), 1e-15, 1 - 1e-15)
        for v in votes])
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(truth != 0, truth * np.log(truth / predicted), 0.0)
    return float(np.mean(np.nansum(terms, axis=1)))


GRADERS: dict[str, Grader] = {
    "rsna-breast-cancer-detection": _rsna_breast_cancer,
    "rsna-2022-cervical-spine-fracture-detection": _rsna_cervical_spine,
    "hms-harmful-brain-activity-classification": _hms_brain_activity,
}
