"""mle-bench's graders of full-benchmark competitions scored on numbers: per-type log MAE, column-
wise Spearman, angular error, Laplace log-likelihood, per-trip haversine, masked MCRMSE, Pearson
r, MAE on scored rows; reproduced as `mlebench_graders` reproduces Lite's. Families are named by
competition id.

Where a grade.py sorts by id and then pairs rows by position, equal ids are ordered as pandas 2
on numpy 1.26 orders them (an unstable introsort, missing values last), so that a submission
with repeated ids pairs its rows as mle-bench pairs them.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from mlmaster_daemon.errors import GradingError
from mlmaster_daemon.tasks.mlebench_graders import FloatArray, Grader, floats, require

IntArray = npt.NDArray[np.intp]

QUEST_ID = "qa_id"
QUEST_CLASSES = (
    "question_asker_intent_understanding", "question_body_critical", "question_conversational",
    "question_expect_short_answer", "question_fact_seeking",
    "question_has_commonly_accepted_answer", "question_interestingness_others",
    "question_interestingness_self", "question_multi_intent", "question_not_really_a_question",
    "question_opinion_seeking", "question_type_choice", "question_type_compare",
    "question_type_consequence", "question_type_definition", "question_type_entity",
    "question_type_instructions", "question_type_procedure",
    "question_type_reason_explanation", "question_type_spelling", "question_well_written",
    "answer_helpful", "answer_level_of_information", "answer_plausible", "answer_relevance",
    "answer_satisfaction", "answer_type_instructions", "answer_type_procedure",
    "answer_type_reason_explanation", "answer_well_written",
)
ICECUBE_COLUMNS = ("event_id", "azimuth", "zenith")
OSIC_SCORED_WEEKS = 3
OSIC_MIN_SIGMA = 70
OSIC_MAX_ERROR = 1000
TRIP_COLUMNS = ("tripId", "UnixTimeMillis", "LatitudeDegrees", "LongitudeDegrees")
HAVERSINE_RADIUS_M = 6_371_000
COVID_SCORED = ("reactivity", "deg_Mg_pH10", "deg_Mg_50C")
COVID_UNSCORED = ("deg_pH10", "deg_50C")


def _raw(values: pd.Series) -> npt.NDArray[Any]:
    """The array pandas 2 holds: objects for a text column, the numpy array otherwise."""
    if not isinstance(values.dtype, np.dtype):
        return values.to_numpy(dtype=object)
    raw = values.to_numpy()
    if raw.dtype == object:
        # pandas 3 reads whole numbers past uint64 as Python ints, pandas 2 as their text.
        raw = np.array([str(v) if type(v) is int else v for v in raw], dtype=object)
    return raw


def _numbers(values: pd.Series, where: str) -> FloatArray:
    return floats(_raw(values), where)


def _pandas2_order(values: pd.Series) -> IntArray:
    """The row order pandas 2's `sort_values` gives (numpy 1.26's introsort on the present
    values, which reorders equal keys, then the missing ones in file order)."""
    raw = _raw(values)
    missing = np.asarray(pd.isna(raw), dtype=bool)
    if not missing.any() and values.is_unique:
        return np.argsort(raw, kind="stable")
    positions = np.arange(len(raw))
    # numpy 2 sorts numbers with SIMD kernels that order ties otherwise; objects still go
    # through the introsort numpy 1.26 used for every dtype on this hardware class.
    present = np.argsort(raw[~missing].astype(object), kind="quicksort")
    return np.concatenate([positions[~missing][present], positions[missing]])


def _sorted(frame: pd.DataFrame, column: str) -> pd.DataFrame:
    return frame.iloc[_pandas2_order(frame[column])]


def _answers_have(answers: pd.DataFrame, columns: tuple[str, ...]) -> None:
    missing = [c for c in columns if c not in answers.columns]
    if missing:
        raise GradingError(f"the answers have no column(s) {', '.join(map(repr, missing))}: "
                           "prepare the competition again with `mlebench prepare`")


def _rows_match(submission: pd.DataFrame, answers: pd.DataFrame) -> None:
    if len(submission) != len(answers):
        raise GradingError(f"the submission has {len(submission)} rows, the answers "
                           f"{len(answers)}")


def _same_id_set(submission: pd.DataFrame, answers: pd.DataFrame, id_column: str) -> None:
    """`set(submission ids) == set(answer ids)`, hashed by pandas instead of Python sets (ten
    million ids); a missing id never equals another, as two NaN objects in a set do not."""
    mine, theirs = _raw(submission[id_column]), _raw(answers[id_column])
    if pd.isna(mine).any() or pd.isna(theirs).any():
        raise GradingError(f"the submission's {id_column} values are not the answers' ids "
                           "(some are missing)")
    mine, theirs = pd.unique(mine), pd.unique(theirs)
    if len(mine) != len(theirs) or not pd.Series(mine).isin(theirs).all():
        raise GradingError(f"the submission's {id_column} values are not the answers' ids")


def _ids_agree(sub_ids: pd.Series, ans_ids: pd.Series, id_column: str) -> None:
    """Row-by-row equality of ids already sorted (numpy's elementwise `!=`)."""
    if np.asarray(_raw(sub_ids) != _raw(ans_ids), dtype=bool).any():
        raise GradingError(f"the submission's {id_column} values are not the answers' ids "
                           "(compared row by row once both are sorted)")


def _nonempty(values: FloatArray, where: str) -> FloatArray:
    if values.size == 0:
        raise GradingError(f"no rows are scored ({where})")
    return values


def _champs(sub: pd.DataFrame, ans: pd.DataFrame, id_column: str,
            targets: tuple[str, ...]) -> float:
    """champs-scalar-coupling: the same set of ids, rows joined on the id, the log of the MAE
    per coupling type averaged over types (a perfect type gives -inf)."""
    target = targets[0]
    _answers_have(ans, ("type",))
    require(sub, (target,))
    require(sub, (id_column,))
    _same_id_set(sub, ans, id_column)
    merged = ans.merge(sub[[id_column, target]], on=id_column, suffixes=("_true", "_pred"))
    log_maes = []
    for _, group in merged.groupby("type"):
        truth = _numbers(group[f"{target}_true"], f"answers column {target!r}")
        guess = _numbers(group[f"{target}_pred"], f"submission column {target!r}")
        with np.errstate(divide="ignore"):
            log_maes.append(np.log(np.mean(np.abs(guess - truth))))
    return float(np.mean(log_maes))


def _spearman(guess: npt.NDArray[Any], truth: npt.NDArray[Any]) -> float:
    from scipy.stats import spearmanr  # type: ignore[import-untyped]

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return float(spearmanr(guess, truth).correlation)
        except AttributeError:
            raise GradingError("the label columns must hold numbers or text that sorts") \
                from None


def _google_quest(sub: pd.DataFrame, ans: pd.DataFrame, id_column: str,
                  targets: tuple[str, ...]) -> float:
    """google-quest-challenge: the id and exactly the 30 label columns, as many rows as the
    answers; both sorted by id and paired by position (ids never compared); mean Spearman."""
    require(sub, (QUEST_ID,))
    require(sub, QUEST_CLASSES)
    if len(sub.columns) != len(QUEST_CLASSES) + 1:
        raise GradingError(f"the submission has {len(sub.columns) - 1} columns besides "
                           f"{QUEST_ID}, where {len(QUEST_CLASSES)} are expected")
    _rows_match(sub, ans)
    _answers_have(ans, (QUEST_ID, *QUEST_CLASSES))
    if len(ans.columns) != len(QUEST_CLASSES) + 1:
        raise GradingError("the answers must hold only qa_id and the 30 label columns: "
                           "prepare the competition again with `mlebench prepare`")
    s, a = _sorted(sub, QUEST_ID), _sorted(ans, QUEST_ID)
    return float(np.mean([_spearman(_raw(s[c]), _raw(a[c])) for c in QUEST_CLASSES]))


def _is_number_dtype(values: pd.Series) -> bool:
    """np.issubdtype(dtype, np.number): integers and floats, not booleans nor text."""
    return isinstance(values.dtype, np.dtype) and values.dtype.kind in "iufc"


def _directions(frame: pd.DataFrame, who: str) -> None:
    for column in ("azimuth", "zenith"):
        if not _is_number_dtype(frame[column]):
            raise GradingError(f"{who} column {column!r} must hold numbers")
        if not np.isfinite(frame[column].to_numpy()).all():
            raise GradingError(f"{who} column {column!r} has missing or infinite values")


def _icecube(sub: pd.DataFrame, ans: pd.DataFrame, id_column: str,
             targets: tuple[str, ...]) -> float:
    """icecube-neutrinos-in-deep-ice: exactly event_id, azimuth and zenith, finite numbers,
    the same ids and row count; mean angle between the directions, rows paired by id."""
    if set(sub.columns) != set(ICECUBE_COLUMNS):
        raise GradingError("the submission's columns must be exactly event_id, azimuth and "
                           "zenith")
    _directions(sub, "submission")
    if set(ans.columns) != set(ICECUBE_COLUMNS):
        raise GradingError("the answers must hold exactly event_id, azimuth and zenith: "
                           "prepare the competition again with `mlebench prepare`")
    _directions(ans, "answers")
    _rows_match(sub, ans)
    _same_id_set(sub, ans, "event_id")
    s, a = _sorted(sub, "event_id"), _sorted(ans, "event_id")
    az_true, zen_true = a["azimuth"].to_numpy(), a["zenith"].to_numpy()
    az_pred, zen_pred = s["azimuth"].to_numpy(), s["zenith"].to_numpy()
    # The cosine of the angle between the two unit vectors, clipped against rounding.
    cosine = (np.sin(zen_true) * np.sin(zen_pred)
              * (np.cos(az_true) * np.cos(az_pred) + np.sin(az_true) * np.sin(az_pred))
              + np.cos(zen_true) * np.cos(zen_pred))
    return float(np.mean(np.abs(np.arccos(np.clip(cosine, -1, 1)))))


def _week(patient_week: object) -> int:
    if not isinstance(patient_week, str):
        raise GradingError(f"the answers' Patient_Week {patient_week!r} is not text")
    return int(patient_week.split("_")[-1])


def _osic(sub: pd.DataFrame, ans: pd.DataFrame, id_column: str,
          targets: tuple[str, ...]) -> float:
    """osic-pulmonary-fibrosis-progression: every Patient_Week one of the answers', numeric FVC
    and Confidence (blank confidence is 0); the modified Laplace log-likelihood over each
    patient's last three measured weeks, rows paired by Patient_Week."""
    _answers_have(ans, ("Patient_Week", "FVC", "Patient"))
    require(sub, ("Patient_Week",))
    require(sub, ("FVC",))
    require(sub, ("Confidence",))
    asked = pd.Series(_raw(sub["Patient_Week"]), dtype=object)
    known = asked.isin(_raw(ans["Patient_Week"])) & asked.notna()
    if not known.all():
        raise GradingError(f"Patient_Week {asked[~known].iloc[0]!r} of the submission is not "
                           "one of the answers'")
    for column in ("FVC", "Confidence"):
        if not pd.api.types.is_numeric_dtype(sub[column]):
            raise GradingError(f"submission column {column!r} must hold numbers")
    sub["Confidence"] = sub["Confidence"].fillna(0)

    measured = ans.dropna(subset=["FVC"])
    weeks = pd.Series([_week(v) for v in _raw(measured["Patient_Week"])], dtype=np.int64,
                      index=measured.index)
    latest = measured.iloc[_pandas2_order(weeks)].groupby("Patient").tail(OSIC_SCORED_WEEKS)
    scored = sub[sub["Patient_Week"].isin(latest["Patient_Week"])]
    scored = _sorted(scored, "Patient_Week")
    latest = _sorted(latest, "Patient_Week")
    truth = latest.loc[latest["Patient_Week"].isin(scored["Patient_Week"]), "FVC"].to_numpy()
    paired = scored["Patient_Week"].isin(latest["Patient_Week"])
    guess = scored.loc[paired, "FVC"].to_numpy()
    confidence = scored.loc[paired, "Confidence"].to_numpy()

    sigma = np.maximum(confidence, OSIC_MIN_SIGMA)
    error = np.minimum(np.abs(truth - guess), OSIC_MAX_ERROR)
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        return float(np.mean(-np.sqrt(2) * error / sigma - np.log(np.sqrt(2) * sigma)))


def _trip_score(guess_lat: FloatArray, guess_lng: FloatArray, true_lat: FloatArray,
                true_lng: FloatArray) -> float:
    """The mean of the 50th and 95th percentile haversine distances, rows paired by position."""
    with np.errstate(invalid="ignore"):  # an infinite coordinate gives NaN, as in mle-bench
        a = (np.sin((true_lat - guess_lat) / 2) ** 2
             + np.cos(guess_lat) * np.cos(true_lat) * np.sin((true_lng - guess_lng) / 2) ** 2)
        distance = 2 * HAVERSINE_RADIUS_M * np.arcsin(np.sqrt(a))
    return float(np.mean([np.quantile(distance, 0.50), np.quantile(distance, 0.95)]))


def _smartphone(sub: pd.DataFrame, ans: pd.DataFrame, id_column: str,
                targets: tuple[str, ...]) -> float:
    """smartphone-decimeter-2022: as many rows as the answers, and per trip; the rows of a trip
    are paired in file order (timestamps never compared); the mean over trips of
    (P50 + P95) / 2 of the haversine distances in metres."""
    _answers_have(ans, TRIP_COLUMNS)
    for column in TRIP_COLUMNS:
        require(sub, (column,))
    _rows_match(sub, ans)
    radians = {}
    for who, frame in (("submission", sub), ("answers", ans)):
        try:
            radians[who] = (np.deg2rad(_raw(frame["LatitudeDegrees"])),
                            np.deg2rad(_raw(frame["LongitudeDegrees"])))
        except TypeError:
            raise GradingError(f"the {who}' latitudes and longitudes must be numbers") \
                from None
    sub_rows = sub.groupby("tripId", sort=False).indices
    ans_rows = ans.groupby("tripId", sort=False).indices
    no_rows = np.array([], dtype=np.intp)
    scores = []
    for trip in ans["tripId"].unique():
        mine, theirs = sub_rows.get(trip, no_rows), ans_rows.get(trip, no_rows)
        if len(mine) != len(theirs):
            raise GradingError(f"trip {trip!r} has {len(mine)} rows in the submission and "
                               f"{len(theirs)} in the answers")
        if len(theirs) == 0:
            raise GradingError("the answers have a row without a tripId")
        scores.append(_trip_score(radians["submission"][0][mine],
                                  radians["submission"][1][mine],
                                  radians["answers"][0][theirs], radians["answers"][1][theirs]))
    return float(np.mean(scores))


def _rmse(truth: FloatArray, guess: FloatArray) -> float:
    if len(truth) != len(guess):
        raise GradingError(f"{len(guess)} submission rows are scored against {len(truth)} "
                           "answers")
    return float(np.sqrt(np.mean((truth - guess) ** 2)))


def _stanford_covid(sub: pd.DataFrame, ans: pd.DataFrame, id_column: str,
                    targets: tuple[str, ...]) -> float:
    """stanford-covid-vaccine: as many rows as the answers, the five prediction columns, ids
    equal row by row once sorted; the mean RMSE of the three scored columns over the rows the
    answers keep. mle-bench picks the submission's kept rows by index label, that is by their
    position in the submission file, not by id: a reordered submission is scored on the rows
    at the kept positions."""
    _rows_match(sub, ans)
    _answers_have(ans, ("id_seqpos", *COVID_SCORED, "keep"))
    require(sub, ("id_seqpos", *COVID_SCORED, *COVID_UNSCORED))
    s, a = _sorted(sub, "id_seqpos"), _sorted(ans, "id_seqpos")
    _ids_agree(s["id_seqpos"], a["id_seqpos"], "id_seqpos")
    if ans["keep"].dtype != np.bool_:
        raise GradingError("the answers' keep column must hold True/False: prepare the "
                           "competition again with `mlebench prepare`")
    keep = ans["keep"]
    sub_keep = keep.reindex(s.index)
    if sub_keep.isna().any():
        raise GradingError("the submission's rows cannot be matched to the answers' keep mask")
    kept_sub = s[sub_keep.to_numpy(dtype=bool)]
    kept_ans = a[keep.reindex(a.index).to_numpy(dtype=bool)]
    errors = []
    for column in COVID_SCORED:
        truth = _nonempty(_numbers(kept_ans[column], f"answers column {column!r}"), column)
        guess = _numbers(kept_sub[column], f"submission column {column!r}")
        errors.append(_rmse(truth, guess))
    return float(np.mean(errors))


def _us_patent(sub: pd.DataFrame, ans: pd.DataFrame, id_column: str,
               targets: tuple[str, ...]) -> float:
    """us-patent-phrase-to-phrase-matching: as many rows as the answers, id and score, ids equal
    row by row once sorted; Pearson's r between the scores."""
    from scipy.stats import pearsonr

    _rows_match(sub, ans)
    if not {"id", "score"} <= set(sub.columns):
        raise GradingError("the submission must have the columns id and score")
    s, a = _sorted(sub, "id"), _sorted(ans, "id")
    _ids_agree(s["id"], a["id"], "id")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return float(pearsonr(_raw(a["score"]), _raw(s["score"]))[0])
        except AttributeError:  # what scipy raises on a column of text
            raise GradingError("submission column 'score' must hold numbers") from None


def _ventilator(sub: pd.DataFrame, ans: pd.DataFrame, id_column: str,
                targets: tuple[str, ...]) -> float:
    """ventilator-pressure-prediction: id and pressure, as many rows as the answers, ids equal
    row by row once sorted; MAE over the rows whose answer has u_out == 0 (the inspiratory
    phase), so other rows' predictions are never read."""
    require(sub, ("id",))
    require(sub, ("pressure",))
    _rows_match(sub, ans)
    _answers_have(ans, ("u_out",))
    s, a = _sorted(sub, "id"), _sorted(ans, "id")
    _ids_agree(s["id"], a["id"], "id")
    a = a[np.asarray(_raw(a["u_out"]) == 0, dtype=bool)]
    s = _sorted(s[s["id"].isin(a["id"]).to_numpy()], "id")
    a = _sorted(a, "id")
    truth = _nonempty(_numbers(a["pressure"], "answers column 'pressure'"), "u_out == 0")
    guess = _numbers(s["pressure"], "submission column 'pressure'")
    if len(truth) != len(guess):
        raise GradingError(f"{len(guess)} submission rows are scored against {len(truth)} "
                           "answers")
    return float(np.mean(np.abs(guess - truth)))


GRADERS: dict[str, Grader] = {
    "champs-scalar-coupling": _champs,
    "google-quest-challenge": _google_quest,
    "icecube-neutrinos-in-deep-ice": _icecube,
    "osic-pulmonary-fibrosis-progression": _osic,
    "smartphone-decimeter-2022": _smartphone,
    "stanford-covid-vaccine": _stanford_covid,
    "us-patent-phrase-to-phrase-matching": _us_patent,
    "ventilator-pressure-prediction": _ventilator,
}
