"""mle-bench's graders of the label and probability competitions (tasks/
mlebench_graders_labels.py): each scores as its grade.py does on answers shaped as its
prepare.py leaves them, worked out by hand or with scikit-learn/scipy directly, and refuses
what it refuses. The last test grades the same files with the real mle-bench when it is there
(MLEBENCH_SRC: a checkout of openai/mle-bench; MLEBENCH_PYTHON: a Python with its pins)."""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlebench_reference import Manifest, differing, mlebench_scores, needs_mlebench, ours_or_none
from scipy.special import rel_entr
from sklearn.metrics import (
    accuracy_score,
    f1_score,
    label_ranking_average_precision_score,
    matthews_corrcoef,
    roc_auc_score,
)
from sklearn.preprocessing import MultiLabelBinarizer

from mlmaster_daemon.errors import GradingError
from mlmaster_daemon.tasks import mlebench_graders
from mlmaster_daemon.tasks.mlebench_graders_labels import FREESOUND_CLASSES, JIGSAW_IDENTITIES
from mlmaster_daemon.tasks.mlebench_graders_probabilities import HMS_VOTES, SPINE_PARTS

TOLERANCE = 1e-9
IMET = "imet-2020-fgvc7"
PLANT = "plant-pathology-2021-fgvc8"
INAT = "inaturalist-2019-fgvc6"
FREESOUND = "freesound-audio-tagging-2019"
ALASKA = "alaska2-image-steganalysis"
JIGSAW = "jigsaw-unintended-bias-in-toxicity-classification"
BREAST = "rsna-breast-cancer-detection"
SPINE = "rsna-2022-cervical-spine-fracture-detection"
HMS = "hms-harmful-brain-activity-classification"
NFL = "nfl-player-contact-detection"
# id column and the answers' scored columns each grader is called with
COLUMNS: dict[str, tuple[str, tuple[str, ...]]] = {
    IMET: ("id", ("attribute_ids",)),
    PLANT: ("image", ("labels",)),
    INAT: ("id", ("predicted",)),
    FREESOUND: ("fname", FREESOUND_CLASSES),
    ALASKA: ("Id", ("Label",)),
    JIGSAW: ("id", ("toxicity",)),
    BREAST: ("prediction_id", ("cancer",)),
    SPINE: ("row_id", ("fractured",)),
    HMS: ("eeg_id", HMS_VOTES),
    NFL: ("contact_id", ("contact",)),
}


def as_read(frame: pd.DataFrame) -> pd.DataFrame:
    """The frame as `pandas.read_csv` gives it back from a CSV file."""
    return pd.read_csv(io.StringIO(frame.to_csv(index=False)))


def graded(competition: str, submission: pd.DataFrame, answers: pd.DataFrame) -> float:
    id_column, targets = COLUMNS[competition]
    return mlebench_graders.grade(competition, as_read(submission), as_read(answers),
                                  id_column, targets)


def refused(competition: str, submission: pd.DataFrame, answers: pd.DataFrame,
            match: str | None = None) -> None:
    with pytest.raises(GradingError, match=match):
        graded(competition, submission, answers)


def with_cell(frame: pd.DataFrame, column: str, row: int, value: object) -> pd.DataFrame:
    changed = frame.astype({column: object})
    changed.loc[changed.index[row], column] = value
    return changed


# --- answers as each prepare.py writes them ------------------------------------------------


def imet_answers() -> pd.DataFrame:
    return pd.DataFrame({"id": ["0a3f", "9b1c", "47de", "c2aa"],
                         "attribute_ids": ["1 2", "3", "2 4 13", "13"]})


def plant_answers() -> pd.DataFrame:
    return pd.DataFrame({"image": ["800113bb65efe69e.jpg", "8002cb321f8bfcdf.jpg",
                                   "80070f7fb5e2ccaa.jpg"],
                         "labels": ["healthy", "scab frog_eye_leaf_spot complex", "rust"]})


def inat_answers() -> pd.DataFrame:
    return pd.DataFrame({"id": [268243, 12, 5077, 99], "predicted": [400, 7, 1009, 7]})


def freesound_answers() -> pd.DataFrame:
    truth = np.zeros((4, 80), dtype=int)
    truth[0, 3] = truth[1, [5, 70]] = truth[2, 79] = 1  # the last clip has no label
    frame = pd.DataFrame(truth, columns=list(FREESOUND_CLASSES))
    frame.insert(0, "fname", ["4260ebea.wav", "426eb1e0.wav", "428d70bb.wav", "4292b1c9.wav"])
    return frame


def alaska_answers() -> pd.DataFrame:
    return pd.DataFrame({"Id": ["0001.jpg", "0002.jpg", "0003.jpg", "0004.jpg", "0005.jpg"],
                         "Label": [1, 1, 0, 1, 0]})


def jigsaw_answers() -> pd.DataFrame:
    """test_private_expanded: toxicity and identities as fractions of raters, identities
    blank where nobody rated them."""
    rng = np.random.default_rng(11)
    n = 120
    frame = pd.DataFrame({"id": 7000000 + np.arange(n), "comment_text": "a comment",
                          "toxicity": rng.choice([0.0, 0.2, 0.5, 0.6, 1.0], n)})
    for identity in JIGSAW_IDENTITIES:
        rated = rng.choice([0.0, 0.1, 0.5, 0.8], n)
        frame[identity] = np.where(rng.random(n) < 0.1, np.nan, rated)
    return frame


def breast_answers() -> pd.DataFrame:
    return pd.DataFrame({"prediction_id": ["10006_L", "10006_R", "10011_L", "10011_R"],
                         "cancer": [1, 0, 0, 1]})


def spine_answers() -> pd.DataFrame:
    """Melted: one row per study and part, row_id `<study>_<part>`."""
    studies = {"1.2.826.0.1.3680043.10001": [1, 0, 1, 0, 0, 0, 0, 0],
               "1.2.826.0.1.3680043.10005": [0, 0, 0, 0, 0, 0, 0, 0]}
    rows = [{"StudyInstanceUID": study, "prediction_type": part, "fractured": flags[i]}
            for study, flags in studies.items() for i, part in enumerate(SPINE_PARTS)]
    frame = pd.DataFrame(rows)
    frame["row_id"] = frame["StudyInstanceUID"] + "_" + frame["prediction_type"]
    return frame


def hms_answers() -> pd.DataFrame:
    """train.csv's rows: several per eeg_id, votes as counts."""
    votes = np.array([[3, 0, 0, 0, 0, 1], [0, 2, 0, 0, 0, 0], [0, 0, 1, 1, 0, 0]])
    frame = pd.DataFrame({"eeg_id": [568657, 568657, 582999], "eeg_sub_id": [0, 1, 0],
                          "spectrogram_id": [789577333, 789577333, 1552638400],
                          "patient_id": [20654, 20654, 20230],
                          "expert_consensus": ["Seizure", "LPD", "GPD"]})
    for i, vote in enumerate(HMS_VOTES):
        frame[vote] = votes[:, i]
    return frame


def nfl_answers() -> pd.DataFrame:
    ids = [f"58168_003392_0_{player}" for player in
           ("38590_43854", "38590_41257", "38590_G", "43854_41257", "43854_G", "41257_G")]
    return pd.DataFrame({"contact_id": ids, "game_play": "58168_003392", "step": 0,
                         "contact": [0, 1, 0, 0, 1, 1]})


# --- multi-label micro F1 ------------------------------------------------------------------


@pytest.mark.parametrize(("competition", "answers", "label"), [
    (IMET, imet_answers(), "attribute_ids"), (PLANT, plant_answers(), "labels")])
def test_multilabel_f1_is_one_for_the_answers_in_another_order(
        competition: str, answers: pd.DataFrame, label: str) -> None:
    assert graded(competition, answers.iloc[::-1], answers) == 1.0


def test_imet_counts_right_labels_once_and_drops_labels_the_answers_never_use() -> None:
    answers = imet_answers()
    guess = answers.assign(attribute_ids=["1", "3 99 3", "2 4 13 7", ""])
    # classes {1, 2, 3, 4, 13}; right 1 + 1 + 3 + 0 = 5 of 7 true, 5 predicted: 10 / 12
    assert graded(IMET, guess, answers) == pytest.approx(10 / 12, abs=TOLERANCE)
    binarizer = MultiLabelBinarizer(classes=["1", "13", "2", "3", "4"])
    truth = binarizer.fit_transform([s.split() for s in answers["attribute_ids"]])
    with pytest.warns(UserWarning):
        predicted = binarizer.transform([s.split() for s in guess["attribute_ids"]])
    assert graded(IMET, guess, answers) == pytest.approx(
        f1_score(truth, predicted, average="micro"), abs=TOLERANCE)


def test_plant_pathology_scores_a_blank_prediction_as_no_labels() -> None:
    answers = plant_answers()
    guess = answers.assign(labels=["healthy", "", "rust scab"])
    # right 1 + 0 + 1 of 5 true, 3 predicted: 4 / 8
    assert graded(PLANT, guess, answers) == pytest.approx(0.5, abs=TOLERANCE)


@pytest.mark.parametrize("competition", [IMET, PLANT])
def test_multilabel_f1_refuses_what_mlebench_refuses(competition: str) -> None:
    answers = imet_answers() if competition == IMET else plant_answers()
    id_column, (label,) = COLUMNS[competition]
    refused(competition, answers.drop(columns=label), answers, "no column")
    refused(competition, answers.iloc[1:], answers, "rows")
    refused(competition, with_cell(answers, id_column, 0, "other"), answers, "ids")
    # a column of single numbers is read as numbers, which pandas' .str refuses
    refused(competition, answers.assign(**{label: 1}), answers, "space-separated text")
    refused(competition, answers, with_cell(answers, label, 0, np.nan), "without labels")
    refused(competition, answers, answers.assign(**{label: "a"}), "two distinct labels")


# --- top-1 error ---------------------------------------------------------------------------


def test_inaturalist_scores_the_first_label_of_each_row_as_top_1_error() -> None:
    answers = inat_answers()
    assert graded(INAT, answers.iloc[::-1], answers) == 0.0
    guess = answers.assign(predicted=["400 3 2", "8 7", "1009", " 7"])
    want = 1 - accuracy_score([400, 7, 1009, 7], [400, 8, 1009, 7])
    assert graded(INAT, guess, answers) == pytest.approx(want, abs=TOLERANCE)
    assert want == 0.25


def test_inaturalist_refuses_blank_fractional_or_wordy_labels() -> None:
    answers = inat_answers()
    refused(INAT, with_cell(answers, "predicted", 1, np.nan), answers)
    refused(INAT, answers.assign(predicted=[400.0, 7.5, 1009.0, 7.0]), answers)
    refused(INAT, answers.assign(predicted=["400", "seven", "1009", "7"]), answers,
            "not a whole number")
    refused(INAT, answers.iloc[:3], answers, "rows")
    refused(INAT, answers.rename(columns={"predicted": "category_id"}), answers, "no column")


# --- lwlrap --------------------------------------------------------------------------------


def test_freesound_is_label_weighted_lrap_over_the_clips_with_labels() -> None:
    answers = freesound_answers()
    classes = list(FREESOUND_CLASSES)
    assert graded(FREESOUND, answers.iloc[::-1], answers) == pytest.approx(1.0)
    scores = np.random.default_rng(3).random((4, 80)).round(4)
    guess = answers.copy()
    guess[classes] = scores
    truth = answers[classes].to_numpy()[:3] > 0
    want = label_ranking_average_precision_score(truth, scores[:3],
                                                 sample_weight=truth.sum(axis=1))
    assert graded(FREESOUND, guess, answers) == pytest.approx(want, abs=TOLERANCE)
    # the clip without a label is left out, blank scores and all
    assert graded(FREESOUND, with_cell(guess, "Bark", 3, np.nan), answers) == pytest.approx(
        want, abs=TOLERANCE)


def test_freesound_needs_fname_first_then_the_80_classes_in_order() -> None:
    answers = freesound_answers()
    classes = list(FREESOUND_CLASSES)
    refused(FREESOUND, answers[[*classes, "fname"]], answers, "first column")
    refused(FREESOUND, answers[["fname", *classes[::-1]]], answers, "80 classes")
    refused(FREESOUND, answers.assign(note=0), answers, "80 classes")
    refused(FREESOUND, with_cell(answers, "Bark", 0, "high"), answers, "numbers")
    refused(FREESOUND, with_cell(answers, "Bark", 0, np.nan), answers, "missing")
    refused(FREESOUND, answers.iloc[1:], answers, "rows")


# --- weighted AUC --------------------------------------------------------------------------


def test_alaska2_weights_the_roc_area_below_tpr_0_4_twice() -> None:
    answers = alaska_answers()
    assert graded(ALASKA, answers.assign(Label=[0.9, 0.8, 0.1, 0.7, 0.2]), answers) == 1.0
    # ROC: FPR 0 up to TPR 2/3, then 1/2. Area right of the curve: 0.4 below TPR 0.4
    # (weight 2); (2/3 - 0.4) + (1/3)(1/2) above it; (0.8 + 4/15 + 1/6) / 1.4 = 37/42.
    guess = answers.assign(Label=[0.9, 0.8, 0.7, 0.3, 0.2])
    assert graded(ALASKA, guess, answers) == pytest.approx(37 / 42, abs=TOLERANCE)


def test_alaska2_refuses_missing_text_or_infinite_labels() -> None:
    answers = alaska_answers()
    refused(ALASKA, with_cell(answers, "Label", 2, np.nan), answers, "missing")
    refused(ALASKA, with_cell(answers, "Label", 2, "stego"), answers, "numbers")
    refused(ALASKA, with_cell(answers, "Label", 2, np.inf), answers, "infinite")
    refused(ALASKA, answers.iloc[1:], answers, "rows")
    refused(ALASKA, answers.rename(columns={"Id": "id"}), answers, "no column")


# --- bias-weighted AUC ---------------------------------------------------------------------


def jigsaw_by_hand(answers: pd.DataFrame, predictions: np.ndarray) -> float:
    toxic = (answers["toxicity"].to_numpy() >= 0.5).astype(int)
    guess = (np.nan_to_num(predictions, nan=0.0) >= 0.5).astype(int)
    per_kind: list[list[float]] = [[], [], []]
    for identity in JIGSAW_IDENTITIES:
        mentioned = np.nan_to_num(answers[identity].to_numpy(), nan=0.0) >= 0.5
        for kind, rows in enumerate((mentioned,
                                     (mentioned & (toxic == 0)) | (~mentioned & (toxic == 1)),
                                     (mentioned & (toxic == 1)) | (~mentioned & (toxic == 0)))):
            per_kind[kind].append(roc_auc_score(toxic[rows], guess[rows]))
    means = [(sum(a ** -5 for a in aucs) / len(aucs)) ** (-1 / 5) for aucs in per_kind]
    return 0.25 * roc_auc_score(toxic, guess) + 0.25 * sum(means)


def test_jigsaw_cuts_predictions_at_one_half_and_mixes_overall_and_identity_aucs() -> None:
    answers = jigsaw_answers()
    exact = pd.DataFrame({"id": answers["id"], "prediction": answers["toxicity"]})
    assert graded(JIGSAW, exact.iloc[::-1], answers) == pytest.approx(1.0)
    noisy = np.clip(answers["toxicity"].to_numpy()
                    + np.random.default_rng(5).normal(0, 0.35, len(answers)), 0, 1).round(3)
    noisy[7] = np.nan  # a blank prediction is below one half
    guess = exact.assign(prediction=noisy)
    assert graded(JIGSAW, guess, answers) == pytest.approx(jigsaw_by_hand(answers, noisy),
                                                           abs=TOLERANCE)
    # the answers file itself (toxicity, no prediction) is a valid submission
    assert graded(JIGSAW, answers, answers) == pytest.approx(1.0)


def test_jigsaw_refuses_text_both_prediction_columns_or_other_ids() -> None:
    answers = jigsaw_answers()
    exact = pd.DataFrame({"id": answers["id"], "prediction": answers["toxicity"]})
    refused(JIGSAW, with_cell(exact, "prediction", 3, "toxic"), answers, "numbers")
    refused(JIGSAW, exact.assign(toxicity=0.5), answers, "both")
    refused(JIGSAW, exact.drop(columns="prediction"), answers, "'prediction'")
    refused(JIGSAW, exact.iloc[1:], answers, "ids")
    # mentioned only in toxic comments: that subgroup's AUC has one class
    only_toxic = answers.assign(male=np.where(answers["toxicity"] >= 0.5, 1.0, 0.0))
    refused(JIGSAW, exact, only_toxic, "only toxic or only non-toxic")


# --- probabilistic F1 ----------------------------------------------------------------------


def test_rsna_breast_cancer_probabilistic_f1_clips_predictions_to_0_1() -> None:
    answers = breast_answers()
    assert graded(BREAST, answers.iloc[::-1], answers) == 1.0
    # true positives 0.8 + 0.4, false positives 0.2 + 1 (1.5 clipped): precision 1/2,
    # recall 0.6, F1 = 2 * 0.3 / 1.1
    guess = answers.assign(cancer=[0.8, 0.2, 1.5, 0.4])
    assert graded(BREAST, guess, answers) == pytest.approx(6 / 11, abs=TOLERANCE)
    assert graded(BREAST, answers.assign(cancer=0.0), answers) == 0.0
    assert graded(BREAST, with_cell(guess, "cancer", 1, np.nan), answers) == 0.0


def test_rsna_breast_cancer_refuses_text_other_ids_or_answers_without_cancer() -> None:
    answers = breast_answers()
    refused(BREAST, with_cell(answers, "cancer", 0, "yes"), answers, "numbers")
    refused(BREAST, with_cell(answers, "prediction_id", 0, "10006_X"), answers, "ids")
    refused(BREAST, answers.iloc[:3], answers, "rows")
    refused(BREAST, answers, answers.assign(cancer=0), "no positive")


# --- weighted multi-label log loss ---------------------------------------------------------


def spine_by_hand(truth: np.ndarray, predicted: np.ndarray) -> float:
    per_study = []
    for flags, guess in zip(truth, predicted, strict=True):
        weights = np.where(flags == 1, 2.0, 1.0) * np.array([7] + [1] * 7)
        loss = [-math.log(p) if y else -math.log(1 - p) for y, p in zip(flags, guess,
                                                                        strict=True)]
        per_study.append(float(np.dot(weights, loss) / weights.sum()))
    return float(np.mean(per_study))


def test_rsna_cervical_spine_weights_the_patient_and_the_fractured_parts() -> None:
    answers = spine_answers()
    sample = answers[["row_id", "fractured"]]
    assert graded(SPINE, sample.iloc[::-1], answers) == pytest.approx(0, abs=1e-12)
    assert graded(SPINE, sample.assign(fractured=0.5), answers) == pytest.approx(math.log(2))
    guess = np.random.default_rng(2).uniform(0.05, 0.95, 16).round(3)
    truth = answers["fractured"].to_numpy().reshape(2, 8)
    assert graded(SPINE, sample.assign(fractured=guess), answers) == pytest.approx(
        spine_by_hand(truth, guess.reshape(2, 8)), abs=TOLERANCE)


def test_rsna_cervical_spine_refuses_probabilities_outside_0_1_or_missing() -> None:
    answers = spine_answers()
    sample = answers[["row_id", "fractured"]].assign(fractured=0.5)
    refused(SPINE, with_cell(sample, "fractured", 4, 1.2), answers, r"\[0, 1\]")
    refused(SPINE, with_cell(sample, "fractured", 4, np.nan), answers, r"\[0, 1\]")
    refused(SPINE, with_cell(sample, "fractured", 4, "high"), answers, "numbers")
    refused(SPINE, sample.iloc[1:], answers, "ids")


# --- KL divergence -------------------------------------------------------------------------


def test_hms_is_kl_divergence_from_the_vote_shares_row_by_row() -> None:
    answers = hms_answers()
    votes = list(HMS_VOTES)
    counts = answers[votes].to_numpy(dtype=float)
    shares = counts / counts.sum(axis=1, keepdims=True)
    gold = answers[["eeg_id"]].assign(**dict(zip(votes, shares.T, strict=True)))
    assert graded(HMS, gold, answers) == pytest.approx(0, abs=1e-12)
    uniform = gold.assign(**{v: 1 / 6 for v in votes})
    assert graded(HMS, uniform, answers) == pytest.approx(
        np.mean(rel_entr(shares, 1 / 6).sum(axis=1)), abs=TOLERANCE)
    guess = np.array([[0.5, 0.1, 0.1, 0.1, 0.1, 0.1], [0.1, 0.5, 0.1, 0.1, 0.1, 0.1],
                      [0.0, 0.0, 0.6, 0.4, 0.0, 0.0]])
    noisy = gold.assign(**dict(zip(votes, guess.T, strict=True)))
    clipped = np.clip(guess, 1e-15, 1 - 1e-15)
    assert graded(HMS, noisy, answers) == pytest.approx(
        np.mean(rel_entr(shares, clipped).sum(axis=1)), abs=TOLERANCE)


def test_hms_refuses_rows_not_summing_to_1_and_extra_columns_out_of_range() -> None:
    answers = hms_answers()
    uniform = answers[["eeg_id"]].assign(**{v: 1 / 6 for v in HMS_VOTES})
    refused(HMS, with_cell(uniform, "lpd_vote", 0, 0.3), answers, "sum to 1")
    refused(HMS, uniform.assign(spectrogram_id=789577333), answers, r"\[0, 1\]")
    refused(HMS, uniform.assign(note="x"), answers, "numbers")
    refused(HMS, with_cell(uniform, "eeg_id", 0, 1), answers, "ids")
    refused(HMS, uniform.iloc[1:], answers, "rows")
    one_hot = answers[["eeg_id"]].assign(**{v: v == "gpd_vote" for v in HMS_VOTES})
    refused(HMS, one_hot, answers, "numbers")


# --- Matthews correlation ------------------------------------------------------------------


def test_nfl_contact_is_matthews_correlation_by_contact_id() -> None:
    answers = nfl_answers()
    sample = answers[["contact_id", "contact"]]
    assert graded(NFL, sample.iloc[::-1], answers) == 1.0
    guess = sample.assign(contact=[0, 1, 1, 0, 0, 1])
    want = matthews_corrcoef([0, 1, 0, 0, 1, 1], [0, 1, 1, 0, 0, 1])
    assert graded(NFL, guess, answers) == pytest.approx(want, abs=TOLERANCE)
    assert want == pytest.approx(1 / 3)
    assert graded(NFL, sample.assign(contact=0), answers) == 0.0


def test_nfl_contact_refuses_probabilities_or_other_ids() -> None:
    answers = nfl_answers()
    sample = answers[["contact_id", "contact"]]
    refused(NFL, sample.assign(contact=[0.1, 0.9, 0.2, 0.4, 0.7, 0.8]), answers)
    refused(NFL, with_cell(sample, "contact_id", 0, "x"), answers, "ids")
    refused(NFL, pd.concat([sample, sample.iloc[[0]]]), answers, "rows")
    refused(NFL, sample.drop(columns="contact"), answers, "no column")


# --- against the real mle-bench ------------------------------------------------------------



def reference_cases() -> list[tuple[str, pd.DataFrame, pd.DataFrame]]:
    """(competition, answers, submission): the submissions above and damaged copies."""
    rng = np.random.default_rng(0)
    jigsaw = jigsaw_answers()
    hms = hms_answers()
    shares = hms[list(HMS_VOTES)].to_numpy(dtype=float)
    shares /= shares.sum(axis=1, keepdims=True)
    hms_gold = hms[["eeg_id"]].assign(**dict(zip(HMS_VOTES, shares.T, strict=True)))
    freesound = freesound_answers()
    scored = freesound.copy()
    scored[list(FREESOUND_CLASSES)] = rng.random((4, 80)).round(3)
    spine = spine_answers()
    base = [
        (IMET, imet_answers(), imet_answers().assign(attribute_ids=["1", "3 3", "2 13 7", ""])),
        (PLANT, plant_answers(), plant_answers().assign(labels=["healthy", "", "rust scab"])),
        (INAT, inat_answers(), inat_answers().assign(predicted=["400 3", "8 7", "1009", "7"])),
        (FREESOUND, freesound, scored),
        (ALASKA, alaska_answers(), alaska_answers().assign(Label=[0.9, 0.8, 0.7, 0.3, 0.2])),
        (JIGSAW, jigsaw, pd.DataFrame({"id": jigsaw["id"], "prediction": rng.random(120)})),
        (BREAST, breast_answers(), breast_answers().assign(cancer=[0.8, 0.2, 1.5, 0.4])),
        (SPINE, spine, spine[["row_id"]].assign(fractured=rng.random(16).round(3))),
        (HMS, hms, hms_gold),
        (NFL, nfl_answers(), nfl_answers()[["contact_id"]].assign(contact=[0, 1, 1, 0, 0, 1])),
    ]
    cases = []
    for competition, answers, submission in base:
        id_column, targets = COLUMNS[competition]
        target = "prediction" if competition == JIGSAW else targets[0]
        damaged: list[Callable[[pd.DataFrame], pd.DataFrame]] = [
            lambda f: f,
            lambda f: f.iloc[::-1],
            lambda f: f.iloc[1:],
            lambda f: pd.concat([f, f.iloc[[0]]]),
            lambda f: f[list(f.columns)[::-1]],
            lambda f: f.assign(extra=0.0),
            lambda f, t=target: with_cell(f, t, 1, np.nan),
            lambda f, t=target: with_cell(f, t, 1, "x"),
            lambda f, t=target: with_cell(f, t, 0, 1.5),
            lambda f, t=target: with_cell(f, t, 0, -1),
            lambda f, t=target: with_cell(f, t, 0, True),
            lambda f, i=id_column: with_cell(f, i, 0, f[i].iloc[1]),
        ]
        cases += [(competition, answers, change(submission)) for change in damaged]
    return cases


@needs_mlebench
def test_scores_and_refusals_agree_with_mlebench(tmp_path: Path) -> None:
    manifest: Manifest = {}
    ours: dict[str, float | None] = {}
    for n, (competition, answers, submission) in enumerate(reference_cases()):
        answers_path, submission_path = tmp_path / f"{n}-answers.csv", tmp_path / f"{n}.csv"
        answers.to_csv(answers_path, index=False)
        submission.to_csv(submission_path, index=False)
        key = f"{competition}#{n}"
        manifest[key] = (competition, str(answers_path), str(submission_path))
        id_column, targets = COLUMNS[competition]
        ours[key] = ours_or_none(mlebench_graders.grade, competition,
                                 pd.read_csv(submission_path), pd.read_csv(answers_path),
                                 id_column, targets)
    theirs = mlebench_scores(manifest, tmp_path)
    assert not differing(ours, theirs)
    assert sum(v is not None for v in theirs.values()) > 40
