"""mle-bench's graders of the competitions scored on numbers (tasks/mlebench_graders_numeric.py):
each scores as its grade.py does, worked out here by hand or with scipy, on answers shaped as its
prepare.py leaves them, and refuses what it refuses. The last test grades the same files with
mle-bench itself where MLEBENCH_SRC and MLEBENCH_PYTHON are set."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from mlebench_reference import Manifest, differing, mlebench_scores, needs_mlebench, ours_or_none
from scipy.stats import pearsonr, spearmanr  # type: ignore[import-untyped]

from mlmaster_daemon.errors import GradingError
from mlmaster_daemon.tasks import mlebench_graders
from mlmaster_daemon.tasks.mlebench_graders_numeric import QUEST_CLASSES

TOLERANCE = 1e-9
Change = Callable[[pd.DataFrame], pd.DataFrame]
R_EARTH = 6_371_000
COVID_COLUMNS = ("reactivity", "deg_Mg_pH10", "deg_pH10", "deg_Mg_50C", "deg_50C")
KEYS: dict[str, tuple[str, tuple[str, ...]]] = {
    "champs-scalar-coupling": ("id", ("scalar_coupling_constant",)),
    "google-quest-challenge": ("qa_id", QUEST_CLASSES),
    "icecube-neutrinos-in-deep-ice": ("event_id", ("azimuth", "zenith")),
    "osic-pulmonary-fibrosis-progression": ("Patient_Week", ("FVC", "Confidence")),
    "smartphone-decimeter-2022": ("tripId", ("LatitudeDegrees", "LongitudeDegrees")),
    "stanford-covid-vaccine": ("id_seqpos", ("reactivity", "deg_Mg_pH10", "deg_Mg_50C")),
    "us-patent-phrase-to-phrase-matching": ("id", ("score",)),
    "ventilator-pressure-prediction": ("id", ("pressure",)),
}


def as_read(frame: pd.DataFrame, path: Path) -> pd.DataFrame:
    """The frame as `pandas.read_csv` gives it back from the CSV mle-bench would read."""
    frame.to_csv(path, index=False)
    return pd.read_csv(path)


def graded(tmp_path: Path, cid: str, submission: pd.DataFrame, answers: pd.DataFrame) -> float:
    id_column, targets = KEYS[cid]
    return mlebench_graders.grade(cid, as_read(submission, tmp_path / "submission.csv"),
                                  as_read(answers, tmp_path / "answers.csv"), id_column, targets)


# --- champs-scalar-coupling ---------------------------------------------------------------------


def champs_answers() -> pd.DataFrame:
    return pd.DataFrame({
        "id": [50, 51, 52, 53, 54],
        "molecule_name": ["dsgdb9nsd_000007"] * 3 + ["dsgdb9nsd_000009"] * 2,
        "atom_index_0": [2, 2, 3, 1, 1], "atom_index_1": [0, 1, 0, 0, 2],
        "type": ["1JHC", "2JHH", "1JHC", "2JHH", "3JHC"],
        "scalar_coupling_constant": [84.8, -11.3, 84.5, -11.1, 3.2],
    })


def champs_noisy() -> pd.DataFrame:
    # 1JHC errors 1 and 3, 2JHH errors 0.5 and 1.5, 3JHC error 4: MAEs 2, 1 and 4.
    return pd.DataFrame({"id": [54, 53, 52, 51, 50],
                         "scalar_coupling_constant": [7.2, -9.6, 87.5, -11.8, 83.8]})


def test_champs_is_the_mean_over_types_of_the_log_mae(tmp_path: Path) -> None:
    score = graded(tmp_path, "champs-scalar-coupling", champs_noisy(), champs_answers())
    assert score == pytest.approx((math.log(2) + math.log(1) + math.log(4)) / 3, abs=TOLERANCE)


def test_champs_perfect_type_scores_minus_infinity(tmp_path: Path) -> None:
    perfect = champs_answers()[["id", "scalar_coupling_constant"]]
    assert graded(tmp_path, "champs-scalar-coupling", perfect, champs_answers()) == -math.inf


def test_champs_joins_on_the_id_so_a_repeated_row_counts_twice(tmp_path: Path) -> None:
    guess = champs_noisy()
    twice = pd.concat([guess, guess.iloc[[0]]])  # 3JHC's error counted twice: MAE still 4
    moved = pd.concat([guess, guess.iloc[[2]]])  # 1JHC errors 1, 3, 3: MAE 7/3
    assert graded(tmp_path, "champs-scalar-coupling", twice, champs_answers()) == pytest.approx(
        math.log(8) / 3, abs=TOLERANCE)
    assert graded(tmp_path, "champs-scalar-coupling", moved, champs_answers()) == pytest.approx(
        (math.log(7 / 3) + math.log(4)) / 3, abs=TOLERANCE)


CHAMPS_REFUSALS: list[tuple[Change, str]] = [
    (lambda f: f.drop(columns=["id"]), "no column"),
    (lambda f: f.drop(columns=["scalar_coupling_constant"]), "no column"),
    (lambda f: f.iloc[1:], "not the answers' ids"),
    (lambda f: f.assign(id=[54, 53, 52, 51, 99]), "not the answers' ids"),
    (lambda f: f.assign(scalar_coupling_constant=[1.0, np.nan, 2.0, 3.0, 4.0]), "missing"),
    (lambda f: f.assign(scalar_coupling_constant=["a", "1", "2", "3", "4"]), "numbers"),
]


@pytest.mark.parametrize(("change", "message"), CHAMPS_REFUSALS)
def test_champs_refuses(tmp_path: Path, change: Change,
                        message: str) -> None:
    with pytest.raises(GradingError, match=message):
        graded(tmp_path, "champs-scalar-coupling", change(champs_noisy()), champs_answers())


# --- google-quest-challenge ---------------------------------------------------------------------


def quest_answers() -> pd.DataFrame:
    rng = np.random.default_rng(14)
    frame = pd.DataFrame({"qa_id": [39, 46, 70, 132, 200, 245]})
    for column in QUEST_CLASSES:
        frame[column] = rng.permutation([0.0, 1 / 3, 0.5, 2 / 3, 1.0, 1.0])
    return frame


def quest_noisy() -> pd.DataFrame:
    rng = np.random.default_rng(7)
    frame = quest_answers().iloc[::-1].reset_index(drop=True)
    frame[list(QUEST_CLASSES)] = rng.random((6, len(QUEST_CLASSES))).round(3)
    return frame


def test_google_quest_is_the_mean_spearman_of_the_columns_paired_by_id(tmp_path: Path) -> None:
    answers, guess = quest_answers(), quest_noisy()
    paired = answers.merge(guess, on="qa_id", suffixes=("", "_guess"))
    expected = np.mean([spearmanr(paired[c], paired[f"{c}_guess"]).statistic
                        for c in QUEST_CLASSES])
    assert graded(tmp_path, "google-quest-challenge", guess, answers) == pytest.approx(
        expected, abs=TOLERANCE)
    assert graded(tmp_path, "google-quest-challenge", answers, answers) == pytest.approx(
        1.0, abs=TOLERANCE)


def test_google_quest_pairs_rows_by_sorted_position_without_comparing_ids(
        tmp_path: Path) -> None:
    answers = quest_answers()
    renamed = answers.assign(qa_id=answers["qa_id"] + 1000)  # same order, other ids
    assert graded(tmp_path, "google-quest-challenge", renamed, answers) == pytest.approx(
        1.0, abs=TOLERANCE)


def test_google_quest_constant_column_scores_nan(tmp_path: Path) -> None:
    guess = quest_noisy().assign(answer_helpful=0.5)
    assert math.isnan(graded(tmp_path, "google-quest-challenge", guess, quest_answers()))


QUEST_REFUSALS: list[tuple[Change, str]] = [
    (lambda f: f.drop(columns=["qa_id"]), "no column"),
    (lambda f: f.drop(columns=["answer_helpful"]), "no column"),
    (lambda f: f.assign(extra=0.5), "columns besides"),
    (lambda f: f.iloc[1:], "rows"),
]


@pytest.mark.parametrize(("change", "message"), QUEST_REFUSALS)
def test_google_quest_refuses(tmp_path: Path, change: Change,
                              message: str) -> None:
    with pytest.raises(GradingError, match=message):
        graded(tmp_path, "google-quest-challenge", change(quest_noisy()), quest_answers())


# --- icecube-neutrinos-in-deep-ice --------------------------------------------------------------


def icecube_answers() -> pd.DataFrame:
    # Straight up (zenith 0) and along the horizon (zenith pi/2), where angles are plain.
    return pd.DataFrame({"event_id": [2092, 7174, 9000, 1111],
                         "azimuth": [1.0, 2.5, 0.3, 4.0],
                         "zenith": [0.0, 0.0, math.pi / 2, math.pi / 2]})


def test_icecube_is_the_mean_angle_between_directions_paired_by_id(tmp_path: Path) -> None:
    guess = pd.DataFrame({"event_id": [1111, 9000, 7174, 2092],
                          "azimuth": [4.0, 1.3, 0.7, 5.0],
                          "zenith": [math.pi / 2, math.pi / 2, math.pi / 4, 0.0]})
    # angles: 0 (same), 1 rad along the horizon, pi/4 off the pole, 0 (the pole itself)
    expected = (0 + 1.0 + math.pi / 4 + 0) / 4
    score = graded(tmp_path, "icecube-neutrinos-in-deep-ice", guess, icecube_answers())
    assert score == pytest.approx(expected, abs=TOLERANCE)


ICECUBE_REFUSALS: list[tuple[Change, str]] = [
    (lambda f: f.assign(extra=1), "exactly"),
    (lambda f: f.drop(columns=["zenith"]), "exactly"),
    (lambda f: f.assign(azimuth=["a", "1", "2", "3"]), "numbers"),
    (lambda f: f.assign(zenith=[True, False, True, True]), "numbers"),
    (lambda f: f.assign(zenith=[0.1, np.nan, 0.2, 0.3]), "missing or infinite"),
    (lambda f: f.assign(zenith=[0.1, np.inf, 0.2, 0.3]), "missing or infinite"),
    (lambda f: f.iloc[1:], "rows"),
    (lambda f: f.assign(event_id=[2092, 7174, 9000, 2]), "not the answers' ids"),
]


@pytest.mark.parametrize(("change", "message"), ICECUBE_REFUSALS)
def test_icecube_refuses(tmp_path: Path, change: Change,
                         message: str) -> None:
    with pytest.raises(GradingError, match=message):
        graded(tmp_path, "icecube-neutrinos-in-deep-ice", change(icecube_answers()),
               icecube_answers())


# --- osic-pulmonary-fibrosis-progression --------------------------------------------------------


def osic_answers() -> pd.DataFrame:
    """Every patient over weeks -3..6 (blank FVC where unmeasured), as prepare.py writes it.
    P1 measured at -2, 0, 3 and 5 (the last three are scored), P2 only at 1 and 4."""
    measured = {("P1", -2): 2500.0, ("P1", 0): 2400.0, ("P1", 3): 2300.0, ("P1", 5): 2200.0,
                ("P2", 1): 3000.0, ("P2", 4): 2900.0}
    rows = [{"Patient": p, "Weeks": w, "FVC": measured.get((p, w), np.nan), "Percent": 60.0,
             "Age": 70, "Sex": "Male", "SmokingStatus": "Ex-smoker", "Patient_Week": f"{p}_{w}",
             "Confidence": 100} for p in ("P1", "P2") for w in range(-3, 7)]
    return pd.DataFrame(rows)


def osic_submission(fvc: dict[str, float], confidence: dict[str, float]) -> pd.DataFrame:
    weeks = osic_answers()["Patient_Week"]
    return pd.DataFrame({"Patient_Week": weeks,
                         "FVC": [fvc.get(w, 2000.0) for w in weeks],
                         "Confidence": [confidence.get(w, 100.0) for w in weeks]})


def laplace(error: float, sigma: float) -> float:
    sigma, error = max(sigma, 70), min(abs(error), 1000)
    return -math.sqrt(2) * error / sigma - math.log(math.sqrt(2) * sigma)


def test_osic_scores_each_patients_last_three_measured_weeks(tmp_path: Path) -> None:
    fvc = {"P1_0": 2500.0, "P1_3": 2300.0, "P1_5": 4500.0, "P2_1": 3050.0, "P2_4": 2900.0,
           "P1_-2": 99999.0}  # week -2 is not among P1's last three: never read
    confidence = {"P1_0": 100.0, "P1_3": 50.0, "P1_5": 300.0, "P2_1": 200.0}
    guess = osic_submission(fvc, confidence)
    guess.loc[guess["Patient_Week"] == "P2_4", "Confidence"] = np.nan  # blank is 0, then 70
    expected = np.mean([laplace(100, 100), laplace(0, 50), laplace(2300, 300),
                        laplace(50, 200), laplace(0, 0)])
    score = graded(tmp_path, "osic-pulmonary-fibrosis-progression", guess, osic_answers())
    assert score == pytest.approx(expected, abs=TOLERANCE)


def test_osic_rows_may_come_in_any_order_and_unscored_weeks_may_be_left_out(
        tmp_path: Path) -> None:
    scored = {"P1_0": 2400.0, "P1_3": 2300.0, "P1_5": 2200.0, "P2_1": 3000.0, "P2_4": 2900.0}
    guess = osic_submission(scored, {w: 70.0 for w in scored})
    guess = guess[guess["Patient_Week"].isin(scored)].iloc[::-1]
    score = graded(tmp_path, "osic-pulmonary-fibrosis-progression", guess, osic_answers())
    assert score == pytest.approx(-math.log(math.sqrt(2) * 70), abs=TOLERANCE)


def test_osic_blank_fvc_in_a_scored_week_scores_nan(tmp_path: Path) -> None:
    guess = osic_submission({"P1_5": np.nan}, {})
    assert math.isnan(graded(tmp_path, "osic-pulmonary-fibrosis-progression", guess,
                             osic_answers()))


OSIC_REFUSALS: list[tuple[Change, str]] = [
    (lambda f: f.drop(columns=["Confidence"]), "no column"),
    (lambda f: f.drop(columns=["FVC"]), "no column"),
    (lambda f: pd.concat([f, pd.DataFrame({"Patient_Week": ["P3_0"], "FVC": [1.0],
                                           "Confidence": [1.0]})]), "not one of the answers'"),
    (lambda f: f.assign(FVC=["2000x"] * len(f)), "numbers"),
]


@pytest.mark.parametrize(("change", "message"), OSIC_REFUSALS)
def test_osic_refuses(tmp_path: Path, change: Change,
                      message: str) -> None:
    with pytest.raises(GradingError, match=message):
        graded(tmp_path, "osic-pulmonary-fibrosis-progression",
               change(osic_submission({}, {})), osic_answers())


# --- smartphone-decimeter-2022 ------------------------------------------------------------------


def phone_answers() -> pd.DataFrame:
    # On the equator, so that a latitude offset of d / R radians is d metres away.
    return pd.DataFrame({
        "tripId": ["2021-04-22-US-SJC-1-Pixel4"] * 3 + ["2021-12-07-US-LAX-2-Pixel5"] * 2,
        "UnixTimeMillis": [1619121000000, 1619121001000, 1619121002000,
                           1638900000000, 1638900001000],
        "LatitudeDegrees": [0.0] * 5,
        "LongitudeDegrees": [10.0, 10.001, 10.002, -50.0, -50.001],
    })


def phone_guess(metres: list[float]) -> pd.DataFrame:
    return phone_answers().assign(LatitudeDegrees=np.rad2deg(np.array(metres) / R_EARTH))


def test_smartphone_is_the_mean_over_trips_of_p50_and_p95_distances(tmp_path: Path) -> None:
    # trip 1: 0, 10, 20 m -> P50 10, P95 19 -> 14.5; trip 2: 5, 5 m -> 5
    score = graded(tmp_path, "smartphone-decimeter-2022", phone_guess([0, 10, 20, 5, 5]),
                   phone_answers())
    assert score == pytest.approx((14.5 + 5) / 2, abs=TOLERANCE)


def test_smartphone_pairs_a_trips_rows_in_file_order(tmp_path: Path) -> None:
    guess = phone_guess([0, 10, 20, 5, 5]).iloc[[3, 0, 4, 1, 2]]  # trips interleaved: same
    assert graded(tmp_path, "smartphone-decimeter-2022", guess, phone_answers()) == \
        pytest.approx(9.75, abs=TOLERANCE)
    swapped = phone_guess([0, 0, 0, 0, 0]).iloc[[1, 0, 2, 3, 4]]  # two points exchanged
    step = R_EARTH * (np.deg2rad(10.001) - np.deg2rad(10.0))  # trip 1: step, step, 0
    assert graded(tmp_path, "smartphone-decimeter-2022", swapped, phone_answers()) == \
        pytest.approx((step + 0) / 2, abs=TOLERANCE)


PHONE_REFUSALS: list[tuple[Change, str]] = [
    (lambda f: f.drop(columns=["UnixTimeMillis"]), "no column"),
    (lambda f: f.drop(columns=["LongitudeDegrees"]), "no column"),
    (lambda f: f.iloc[1:], "rows"),
    (lambda f: f.assign(tripId=[f["tripId"].iloc[0]] * 4 + [f["tripId"].iloc[4]]),
     "rows in the submission"),
    (lambda f: f.assign(LatitudeDegrees=["north"] * len(f)), "numbers"),
]


@pytest.mark.parametrize(("change", "message"), PHONE_REFUSALS)
def test_smartphone_refuses(tmp_path: Path, change: Change,
                            message: str) -> None:
    with pytest.raises(GradingError, match=message):
        graded(tmp_path, "smartphone-decimeter-2022", change(phone_guess([1] * 5)),
               phone_answers())


# --- stanford-covid-vaccine ---------------------------------------------------------------------


def covid_answers() -> pd.DataFrame:
    """Two sequences of four positions, the first two scored (keep), the rest zeros, as
    prepare.py explodes them."""
    rows = []
    for seq, base in (("id_00073f8be", 0.1), ("id_000ae4237", 0.5)):
        for pos in range(4):
            keep = pos < 2
            rows.append({"id_seqpos": f"{seq}_{pos}",
                         **{c: (base + 0.1 * pos + 0.01 * k if keep else 0.0)
                            for k, c in enumerate(COVID_COLUMNS)}, "keep": keep})
    return pd.DataFrame(rows)


def covid_guess() -> pd.DataFrame:
    guess = covid_answers().drop(columns=["keep"])
    kept = covid_answers()["keep"].to_numpy()
    guess.loc[kept, "reactivity"] += [0.3, 0.0, -0.3, 0.0]  # RMSE sqrt(0.18 / 4) = 0.15*sqrt2
    guess.loc[kept, "deg_Mg_pH10"] += [0.2, 0.2, 0.2, 0.2]  # RMSE 0.2
    guess.loc[~kept, list(COVID_COLUMNS)] = 7.0  # unscored positions are never read
    guess["deg_pH10"] = np.nan  # required but not scored
    return guess


def test_stanford_covid_is_the_mean_rmse_of_three_columns_on_kept_positions(
        tmp_path: Path) -> None:
    expected = (math.sqrt(0.18 / 4) + 0.2 + 0.0) / 3
    assert graded(tmp_path, "stanford-covid-vaccine", covid_guess(), covid_answers()) == \
        pytest.approx(expected, abs=TOLERANCE)


def test_stanford_covid_applies_the_keep_mask_by_file_position_not_by_id(
        tmp_path: Path) -> None:
    # Reversed, the submission's kept rows are those at the answers' kept file positions
    # (0, 1, 4, 5), i.e. ids ..._3, ..._2 of both sequences, paired with the kept answers.
    guess = covid_answers().drop(columns=["keep"]).iloc[::-1].reset_index(drop=True)
    answers = covid_answers()
    truth = answers[answers["keep"]].sort_values("id_seqpos")
    order = guess.sort_values("id_seqpos")
    picked = order[answers["keep"].to_numpy()[order.index]]
    expected = np.mean([np.sqrt(np.mean((truth[c].to_numpy() - picked[c].to_numpy()) ** 2))
                        for c in ("reactivity", "deg_Mg_pH10", "deg_Mg_50C")])
    assert expected > 0.1
    assert graded(tmp_path, "stanford-covid-vaccine", guess, answers) == pytest.approx(
        expected, abs=TOLERANCE)


COVID_REFUSALS: list[tuple[Change, str]] = [
    (lambda f: f.drop(columns=["deg_50C"]), "no column"),
    (lambda f: f.iloc[1:], "rows"),
    (lambda f: f.assign(id_seqpos=f["id_seqpos"].str.replace("_3", "_9")), "not the answers"),
    (lambda f: f.assign(reactivity=np.nan), "missing"),
]


@pytest.mark.parametrize(("change", "message"), COVID_REFUSALS)
def test_stanford_covid_refuses(tmp_path: Path, change: Change,
                                message: str) -> None:
    with pytest.raises(GradingError, match=message):
        graded(tmp_path, "stanford-covid-vaccine", change(covid_guess()), covid_answers())


# --- us-patent-phrase-to-phrase-matching --------------------------------------------------------


def patent_answers() -> pd.DataFrame:
    return pd.DataFrame({"id": ["37d61fd2272659b1", "7b9652b17b68b7a4", "36d72442aefd8232",
                                "5296b0c19e1ce60e", "54c1e3b9184cb5b6"],
                         "anchor": "abatement", "target": ["abatement of pollution",
                                                           "act of abating", "active catalyst",
                                                           "eliminating process",
                                                           "forest region"],
                         "context": "A47", "score": [0.5, 0.75, 0.25, 0.5, 0.0]})


def test_us_patent_is_pearson_r_with_rows_paired_by_id(tmp_path: Path) -> None:
    answers = patent_answers()
    guess = pd.DataFrame({"id": answers["id"][::-1], "score": [0.1, 0.4, 0.2, 0.9, 0.6]})
    paired = answers.merge(guess, on="id")
    expected = np.corrcoef(paired["score_x"], paired["score_y"])[0, 1]
    assert graded(tmp_path, "us-patent-phrase-to-phrase-matching", guess, answers) == \
        pytest.approx(expected, abs=TOLERANCE)
    assert expected == pytest.approx(pearsonr(paired["score_x"], paired["score_y"])[0],
                                     abs=TOLERANCE)


def test_us_patent_constant_scores_give_nan(tmp_path: Path) -> None:
    guess = patent_answers()[["id"]].assign(score=0)
    assert math.isnan(graded(tmp_path, "us-patent-phrase-to-phrase-matching", guess,
                             patent_answers()))


PATENT_REFUSALS: list[tuple[Change, str]] = [
    (lambda f: f.drop(columns=["score"]), "id and score"),
    (lambda f: f.iloc[1:], "rows"),
    (lambda f: f.assign(id=["x", *f["id"].iloc[1:]]), "not the answers' ids"),
    (lambda f: f.assign(score=["high", "0.1", "0.2", "0.3", "0.4"]), "numbers"),
]


@pytest.mark.parametrize(("change", "message"), PATENT_REFUSALS)
def test_us_patent_refuses(tmp_path: Path, change: Change,
                           message: str) -> None:
    guess = patent_answers()[["id", "score"]]
    with pytest.raises(GradingError, match=message):
        graded(tmp_path, "us-patent-phrase-to-phrase-matching", change(guess), patent_answers())


# --- ventilator-pressure-prediction -------------------------------------------------------------


def ventilator_answers() -> pd.DataFrame:
    return pd.DataFrame({"id": [1, 2, 3, 4, 5, 6], "breath_id": [85] * 3 + [90] * 3,
                         "R": [20] * 6, "C": [50] * 6, "time_step": [0, 0.03, 0.06] * 2,
                         "u_in": [0.0, 15.2, 3.1, 0.0, 12.0, 0.0],
                         "u_out": [0, 0, 1, 0, 1, 1],
                         "pressure": [5.8, 6.1, 7.2, 6.0, 9.5, 8.8]})


def test_ventilator_is_the_mae_over_the_inspiratory_rows(tmp_path: Path) -> None:
    guess = pd.DataFrame({"id": [6, 5, 4, 3, 2, 1],
                          "pressure": [np.nan, np.nan, 6.5, 100.0, 6.1, 4.8]})
    # scored ids 1, 2, 4: errors 1.0, 0.0, 0.5; the blanks and 100 are in expiration
    assert graded(tmp_path, "ventilator-pressure-prediction", guess, ventilator_answers()) == \
        pytest.approx(0.5, abs=TOLERANCE)


VENTILATOR_REFUSALS: list[tuple[Change, str]] = [
    (lambda f: f.drop(columns=["pressure"]), "no column"),
    (lambda f: f.iloc[1:], "rows"),
    (lambda f: f.assign(id=[1, 2, 3, 4, 5, 7]), "not the answers' ids"),
    (lambda f: f.assign(pressure=[np.nan, 1, 1, 1, 1, 1]), "missing"),
    (lambda f: f.assign(pressure=["high", 1, 1, 1, 1, 1]), "numbers"),
]


@pytest.mark.parametrize(("change", "message"), VENTILATOR_REFUSALS)
def test_ventilator_refuses(tmp_path: Path, change: Change,
                            message: str) -> None:
    guess = ventilator_answers()[["id", "pressure"]]
    with pytest.raises(GradingError, match=message):
        graded(tmp_path, "ventilator-pressure-prediction", change(guess), ventilator_answers())


# --- side by side with mle-bench ----------------------------------------------------------------


# cid: (answers, the submission the damages start from, other submissions, refusals)
Case = tuple[Callable[[], pd.DataFrame], Callable[[], pd.DataFrame],
             dict[str, Callable[[], pd.DataFrame]], list[tuple[Change, str]]]
CASES: dict[str, Case] = {
    "champs-scalar-coupling": (
        champs_answers, champs_noisy,
        {"perfect": lambda: champs_answers()[["id", "scalar_coupling_constant"]]},
        CHAMPS_REFUSALS),
    "google-quest-challenge": (
        quest_answers, quest_noisy,
        {"perfect": quest_answers, "constant": lambda: quest_noisy().assign(answer_helpful=0.5),
         "renamed": lambda: quest_answers().assign(qa_id=quest_answers()["qa_id"] + 1000),
         "ids_repeated": lambda: quest_noisy().assign(qa_id=[39, 39, 46, 46, 70, 70])},
        QUEST_REFUSALS),
    "icecube-neutrinos-in-deep-ice": (
        icecube_answers, lambda: icecube_answers().assign(azimuth=[4.0, 1.3, 0.7, 5.0]),
        {"perfect": icecube_answers}, ICECUBE_REFUSALS),
    "osic-pulmonary-fibrosis-progression": (
        osic_answers, lambda: osic_submission({"P1_0": 2500.0, "P1_5": 4500.0},
                                              {"P1_3": 50.0, "P2_1": 200.0}),
        {"sample": lambda: osic_submission({}, {}),
         "blank_fvc": lambda: osic_submission({"P1_5": np.nan}, {}),
         "scored_only": lambda: osic_submission({}, {}).iloc[[3, 5, 8, 11, 14]]},
        OSIC_REFUSALS),
    "smartphone-decimeter-2022": (
        phone_answers, lambda: phone_guess([0, 10, 20, 5, 5]),
        {"interleaved": lambda: phone_guess([0, 10, 20, 5, 5]).iloc[[3, 0, 4, 1, 2]],
         "swapped": lambda: phone_guess([0, 0, 0, 0, 0]).iloc[[1, 0, 2, 3, 4]]},
        PHONE_REFUSALS),
    "stanford-covid-vaccine": (
        covid_answers, covid_guess,
        {"perfect": lambda: covid_answers().drop(columns=["keep"])}, COVID_REFUSALS),
    "us-patent-phrase-to-phrase-matching": (
        patent_answers,
        lambda: pd.DataFrame({"id": patent_answers()["id"][::-1],
                              "score": [0.1, 0.4, 0.2, 0.9, 0.6]}),
        {"constant": lambda: patent_answers()[["id"]].assign(score=0)}, PATENT_REFUSALS),
    "ventilator-pressure-prediction": (
        ventilator_answers,
        lambda: pd.DataFrame({"id": [6, 5, 4, 3, 2, 1],
                              "pressure": [np.nan, np.nan, 6.5, 100.0, 6.1, 4.8]}),
        {"perfect": lambda: ventilator_answers()[["id", "pressure"]]}, VENTILATOR_REFUSALS),
}


def damaged(cid: str) -> dict[str, Change]:
    id_column, targets = KEYS[cid]
    target = targets[0]

    def setting(value: Any) -> Change:
        def change(frame: pd.DataFrame) -> pd.DataFrame:
            frame = frame.astype({target: object})
            frame.loc[frame.index[1], target] = value
            return frame
        return change

    def swapped(frame: pd.DataFrame) -> pd.DataFrame:
        ids = frame[id_column].to_numpy().copy()
        ids[[0, 1]] = ids[[1, 0]]
        return frame.assign(**{id_column: ids})

    return {
        "row_repeated": lambda f: pd.concat([f, f.iloc[[2]]]),
        "row_repeated_for_last": lambda f: pd.concat([f.iloc[:-1], f.iloc[[0]]]),
        "rows_reversed": lambda f: f.iloc[::-1],
        "columns_reversed": lambda f: f[list(f.columns)[::-1]],
        "extra_column": lambda f: f.assign(zz=0.3),
        "blank_value": setting(np.nan),
        "text_value": setting("x"),
        "infinite_value": setting(np.inf),
        "ids_swapped": swapped,
        "ids_as_text": lambda f: f.assign(**{id_column: f[id_column].astype(str) + "x"}),
        "all_blank": lambda f: f.assign(**{target: np.nan}),
        "header_only": lambda f: f.iloc[:0],
        # pandas 3 reads these as Python ints, pandas 2 (mle-bench's) as their text
        "past_uint64": lambda f: f.assign(**{target: [10**25 + i for i in range(len(f))]}),
        "ids_past_uint64": lambda f: f.assign(**{id_column: [10**25 + i for i in range(len(f))]}),
    }


@needs_mlebench
def test_every_case_scores_as_mlebench_scores_it(tmp_path: Path) -> None:
    manifest: Manifest = {}
    ours: dict[str, float | None] = {}
    for cid, (answers, base, others, refusals) in CASES.items():
        folder = tmp_path / cid
        folder.mkdir()
        answers_path = folder / "answers.csv"
        answers().to_csv(answers_path, index=False)
        submissions = {"base": base, **others}
        changes = {**{f"refused_{i}": change for i, (change, _) in enumerate(refusals)},
                   **damaged(cid)}
        frames = {name: make() for name, make in submissions.items()}
        frames.update({name: change(base()) for name, change in changes.items()})
        for name, frame in frames.items():
            path = folder / f"{name}.csv"
            frame.to_csv(path, index=False)
            key = f"{cid}/{name}"
            manifest[key] = (cid, str(answers_path), str(path))
            id_column, targets = KEYS[cid]
            ours[key] = ours_or_none(mlebench_graders.grade, cid, pd.read_csv(path),
                                     pd.read_csv(answers_path), id_column, targets)
    theirs = mlebench_scores(manifest, tmp_path)
    assert not differing(ours, theirs)
    scored = sum(v is not None for v in theirs.values())
    assert len(manifest) > 170 and scored > 40, (len(manifest), scored)
