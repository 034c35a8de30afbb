"""mle-bench's graders of competitions beyond Lite (tasks/mlebench_graders_full.py): each
scores as scikit-learn (or mle-bench's MAP@k, worked out by hand) on the rows its grade.py
pairs, and refuses what it refuses."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import cohen_kappa_score, f1_score, log_loss

from mlmaster_daemon.errors import GradingError
from mlmaster_daemon.tasks.competition import load_task
from mlmaster_daemon.tasks.grading import grade_like_mlebench
from mlmaster_daemon.tasks.registry import lookup
from mlmaster_daemon.tasks.spec import TaskSpec

TOLERANCE = 1e-9


def folder(tmp_path: Path, competition: str, answers: pd.DataFrame) -> TaskSpec:
    known = lookup(competition)
    assert known is not None and known.grader is not None
    root = tmp_path / competition
    (root / "prepared" / "public").mkdir(parents=True)
    (root / "prepared" / "private").mkdir(parents=True)
    answers.to_csv(root / "prepared" / "private" / (known.answers or "test.csv"), index=False)
    answers.head(2).to_csv(root / "prepared" / "public" / "sample_submission.csv", index=False)
    return load_task(root)


def graded(tmp_path: Path, spec: TaskSpec, frame: pd.DataFrame) -> float:
    path = tmp_path / "submission.csv"
    frame.to_csv(path, index=False)
    return grade_like_mlebench(spec, path)


def test_petfinder_scores_rmse_by_id_and_refuses_a_score_outside_1_to_100(
        tmp_path: Path) -> None:
    answers = pd.DataFrame({"Id": ["c", "a", "b"], "Pawpularity": [30, 10, 20]})
    spec = folder(tmp_path, "petfinder-pawpularity-score", answers)
    guess = pd.DataFrame({"Id": ["a", "b", "c"], "Pawpularity": [12.0, 20.0, 27.0]})
    assert graded(tmp_path, spec, guess) == pytest.approx(np.sqrt((4 + 0 + 9) / 3), abs=TOLERANCE)
    with pytest.raises(GradingError, match="from 1 to 100"):
        graded(tmp_path, spec, guess.assign(Pawpularity=[0.5, 20.0, 27.0]))


def test_volcanic_eruptions_round_the_mean_absolute_error_to_a_whole_number(
        tmp_path: Path) -> None:
    answers = pd.DataFrame({"segment_id": [1, 2], "time_to_eruption": [1000, 2000]})
    spec = folder(tmp_path, "predict-volcanic-eruptions-ingv-oe", answers)
    guess = pd.DataFrame({"segment_id": [2, 1], "time_to_eruption": [2001.0, 1000.6]})
    assert graded(tmp_path, spec, guess) == 1.0  # MAE 0.8, rounded
    with pytest.raises(GradingError, match="not the answers' ids"):
        graded(tmp_path, spec, guess.assign(segment_id=[2, 3]))


def test_essay_scoring_is_quadratic_kappa_on_rows_paired_by_id(tmp_path: Path) -> None:
    answers = pd.DataFrame({"essay_id": list("abcdef"), "score": [1, 2, 3, 4, 5, 6]})
    spec = folder(tmp_path, "learning-agency-lab-automated-essay-scoring-2", answers)
    guess = pd.DataFrame({"essay_id": list("fedcba"), "score": [6, 4, 4, 3, 2, 2]})
    want = cohen_kappa_score([2, 2, 3, 4, 4, 6], [1, 2, 3, 4, 5, 6], weights="quadratic")
    assert graded(tmp_path, spec, guess) == pytest.approx(want, abs=TOLERANCE)
    with pytest.raises(GradingError):
        graded(tmp_path, spec, guess.iloc[1:])


@pytest.mark.parametrize(("competition", "target"), [
    ("herbarium-2020-fgvc7", "Predicted"), ("herbarium-2021-fgvc8", "Predicted"),
    ("herbarium-2022-fgvc9", "Predicted"), ("iwildcam-2019-fgvc6", "Category")])
def test_macro_f1_over_every_label_with_labels_read_as_whole_numbers(
        tmp_path: Path, competition: str, target: str) -> None:
    answers = pd.DataFrame({"Id": [1, 2, 3, 4], target: [0, 0, 1, 2]})
    spec = folder(tmp_path, competition, answers)
    guess = pd.DataFrame({"Id": [4, 3, 2, 1], target: ["2", "9", "0", "1"]})
    want = f1_score([0, 0, 1, 2], [1, 0, 9, 2], average="macro", zero_division=0)
    assert graded(tmp_path, spec, guess) == pytest.approx(want, abs=TOLERANCE)
    with pytest.raises(GradingError, match="whole numbers"):
        graded(tmp_path, spec, guess.assign(**{target: ["2", "x", "0", "1"]}))


def test_hotel_and_whale_score_map_at_5_as_mlebench_counts_it(tmp_path: Path) -> None:
    # AP@5: hit at rank 2 -> 1/2; no hit -> 0; a repeated right guess counts once -> 1
    answers = pd.DataFrame({"Image": ["a.jpg", "b.jpg", "c.jpg"], "Id": ["w1", "w2", "w3"]})
    spec = folder(tmp_path, "whale-categorization-playground", answers)
    guess = pd.DataFrame({"Image": ["c.jpg", "a.jpg", "b.jpg"],
                          "Id": ["w3 w3", "new_whale w1", "w9 w8 w7 w6 w5 w2"]})
    assert graded(tmp_path, spec, guess) == pytest.approx((1 + 0.5 + 0) / 3, abs=TOLERANCE)
    with pytest.raises(GradingError, match="exactly Image and Id"):
        graded(tmp_path, spec, guess.assign(note=1))
    hotels = folder(tmp_path, "hotel-id-2021-fgvc8",
                    pd.DataFrame({"image": ["a.jpg", "b.jpg"], "hotel_id": [7, 70]}))
    assert graded(tmp_path, hotels, pd.DataFrame(
        {"image": ["a.jpg", "b.jpg"], "hotel_id": ["1 7", "70"]})) == pytest.approx(0.75)


def test_h_and_m_scores_map_at_12_over_the_answered_customers_only(tmp_path: Path) -> None:
    # customer x bought 2 articles: hits at ranks 1 and 3 -> (1 + 2/3) / 2; y: none -> 0
    answers = pd.DataFrame({"customer_id": ["x", "y"], "prediction": ["0101 0202", "0303"]})
    spec = folder(tmp_path, "h-and-m-personalized-fashion-recommendations", answers)
    guess = pd.DataFrame({"customer_id": ["z", "y", "x"],
                          "prediction": ["0303", "0404", "0101 0505 0202"]})
    assert graded(tmp_path, spec, guess) == pytest.approx((1 + 2 / 3) / 2 / 2, abs=TOLERANCE)
    with pytest.raises(GradingError, match="needs a row"):
        graded(tmp_path, spec, guess.iloc[:2])


def test_lmsys_log_loss_needs_rows_summing_to_1_at_6_decimals(tmp_path: Path) -> None:
    classes = ["winner_model_a", "winner_model_b", "winner_tie"]
    answers = pd.DataFrame({"id": [5, 6], "winner_model_a": [1, 0], "winner_model_b": [0, 0],
                            "winner_tie": [0, 1]})
    spec = folder(tmp_path, "lmsys-chatbot-arena", answers)
    probabilities = np.array([[0.2, 0.3, 0.5], [0.7, 0.2, 0.1]])
    guess = pd.DataFrame({"id": [6, 5], **dict(zip(classes, probabilities.T, strict=True))})
    want = log_loss(answers[classes].to_numpy(), probabilities[::-1])
    assert graded(tmp_path, spec, guess) == pytest.approx(want, abs=TOLERANCE)
    with pytest.raises(GradingError, match="to 6 decimals"):
        graded(tmp_path, spec, guess.assign(winner_tie=[0.500002, 0.1]))
