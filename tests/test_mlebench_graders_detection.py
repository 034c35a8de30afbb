"""mle-bench's detection graders (tasks/mlebench_graders_detection.py): kuzushiji's point F1,
SIIM's VOC mAP, VinBigData's COCO AP at IoU 0.4 and Lyft's 3D mAP score answers shaped as each
prepare.py leaves them as worked out by hand (or by scikit-learn, as mle-bench calls it), and
refuse what each grade.py refuses. The last test grades the same files with mle-bench itself
where MLEBENCH_SRC and MLEBENCH_PYTHON say where it is."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlebench_reference import Manifest, differing, mlebench_scores, needs_mlebench, ours_or_none
from sklearn.metrics import average_precision_score

from mlmaster_daemon.errors import GradingError
from mlmaster_daemon.tasks import mlebench_graders

TOLERANCE = 1e-9
KUZUSHIJI = "kuzushiji-recognition"
SIIM = "siim-covid19-detection"
VINBIG = "vinbigdata-chest-xray-abnormalities-detection"
LYFT = "3d-object-detection-for-autonomous-vehicles"
COLUMNS = {KUZUSHIJI: ("image_id", ("labels",)),
           SIIM: ("id", ("PredictionString",)),
           VINBIG: ("image_id", ("class_id", "x_min", "y_min", "x_max", "y_max")),
           LYFT: ("Id", ("PredictionString",))}


def graded(competition: str, submission: pd.DataFrame, answers: pd.DataFrame) -> float:
    id_column, targets = COLUMNS[competition]
    return mlebench_graders.grade(competition, submission, answers, id_column, targets)


# kuzushiji-recognition


def kuzushiji_answers() -> pd.DataFrame:
    """prepare.py's test.csv: image_id and "label x y width height" boxes; a page with no
    character is blank."""
    return pd.DataFrame({"image_id": ["p2", "p1", "p3"],
                         "labels": [np.nan, "U+3042 10 10 5 5 U+3044 20 20 4 4",
                                    "U+3042 0 0 10 10"]})


def kuzushiji_gold() -> pd.DataFrame:
    """prepare.py's gold submission: each box's x + 1, y + 1."""
    return pd.DataFrame({"image_id": ["p1", "p2", "p3"],
                         "labels": ["U+3044 21 21 U+3042 11 11", np.nan, "U+3042 1 1"]})


def kuzushiji_noisy() -> pd.DataFrame:
    return pd.DataFrame({"image_id": ["p1", "p2", "p3"],
                         "labels": ["U+3042 12 12 U+3042 13 13", "U+3046 1 1", "U+3042 10 5"]})


def test_kuzushiji_gold_points_one_inside_each_box_score_1() -> None:
    assert graded(KUZUSHIJI, kuzushiji_gold(), kuzushiji_answers()) == 1.0


def test_kuzushiji_counts_points_strictly_inside_a_box_of_their_label_once() -> None:
    # p1: one U+3042 found, its second point spare (fp), U+3044 missed (fn); p2 has no
    # characters (fp); p3's point sits on the box's right edge (fp, and the box is an fn).
    tp, fp, fn = 1, 3, 2
    precision, recall = tp / (tp + fp), tp / (tp + fn)
    expected = 2 * precision * recall / (precision + recall)
    assert graded(KUZUSHIJI, kuzushiji_noisy(), kuzushiji_answers()) == pytest.approx(
        expected, abs=TOLERANCE)


def test_kuzushiji_with_no_hit_scores_0() -> None:
    blank = pd.DataFrame({"image_id": ["p1", "p2", "p3"], "labels": [np.nan] * 3})
    assert graded(KUZUSHIJI, blank, kuzushiji_answers()) == 0.0


KUZUSHIJI_REFUSALS: list[tuple[Callable[[pd.DataFrame], pd.DataFrame], str]] = [
    (lambda f: f.iloc[1:], "rows"),
    (lambda f: f.rename(columns={"labels": "label"}), "no column"),
    (lambda f: f.assign(image_id=["p1", "p2", "p9"]), "not the answers' ids"),
    (lambda f: f.assign(labels=["U+3042 1", np.nan, np.nan]), "triples"),
    (lambda f: f.assign(labels=["U+3042 one 1", np.nan, np.nan]), "not a number"),
    (lambda f: f.assign(labels=[1.5, 2.5, 3.5]), "must be text"),
]


@pytest.mark.parametrize("damage, message", KUZUSHIJI_REFUSALS)
def test_kuzushiji_refuses_what_mlebench_refuses(
        damage: Callable[[pd.DataFrame], pd.DataFrame], message: str) -> None:
    with pytest.raises(GradingError, match=message):
        graded(KUZUSHIJI, damage(kuzushiji_noisy()), kuzushiji_answers())


# siim-covid19-detection


def siim_answers() -> pd.DataFrame:
    """prepare.py's test.csv: study rows "{label} 1 0 0 1 1", image rows "none 1 0 0 1 1" or
    their opacity boxes."""
    return pd.DataFrame({"id": ["c_image", "a_study", "d_image", "b_study"],
                         "PredictionString": ["opacity 1 0 0 10 10", "typical 1 0 0 1 1",
                                              "none 1 0 0 1 1", "negative 1 0 0 1 1"]})


def siim_noisy() -> pd.DataFrame:
    return pd.DataFrame({"id": ["a_study", "b_study", "c_image", "d_image"], "PredictionString": [
        "typical 0.6 0 0 1 1 negative 0.4 0 0 1 1", "typical 0.7 0 0 1 1",
        "opacity 0.9 0 0 10 5 opacity 0.8 0 0 10 10", "none 0.5 0 0 1 1 opacity 0.3 2 2 4 4"]})


def test_siim_the_answers_themselves_score_1() -> None:
    assert graded(SIIM, siim_answers(), siim_answers()) == 1.0


def test_siim_is_the_mean_over_classes_of_average_precision_on_matched_pairs() -> None:
    # (is a true box, confidence) per class over the images in id order a, b, c, d: a guess
    # matching a free box at IoU > 0.5 is (1, conf), any other guess (0, conf), a missed box
    # (1, 0), an image with neither (0, 0). c's 0.9 box overlaps by exactly 0.5: a miss.
    pairs = {"negative": ([0, 1, 0, 0], [0.4, 0, 0, 0]),
             "none": ([0, 0, 0, 1], [0, 0, 0, 0.5]),
             "opacity": ([0, 0, 0, 1, 0], [0, 0, 0.9, 0.8, 0.3]),
             "typical": ([1, 0, 0, 0], [0.6, 0.7, 0, 0])}
    expected = np.mean([average_precision_score(t, s) for t, s in pairs.values()])
    assert graded(SIIM, siim_noisy(), siim_answers()) == pytest.approx(expected, abs=TOLERANCE)


def test_siim_refuses_a_class_whose_pairs_are_all_true() -> None:
    answers = pd.DataFrame({"id": ["x_image"], "PredictionString": ["opacity 1 0 0 10 10"]})
    with pytest.raises(GradingError, match="no negative pair"):
        graded(SIIM, answers, answers)


SIIM_REFUSALS: list[tuple[Callable[[pd.DataFrame], pd.DataFrame], str]] = [
    (lambda f: f.iloc[1:], "rows"),
    (lambda f: f.drop(columns=["id"]), "no column"),
    (lambda f: f.assign(id=["a_study", "b_study", "c_image", "e_image"]), "not the answers"),
    (lambda f: f.assign(PredictionString=["none 1 0 0 1"] * 4), "groups"),
    (lambda f: f.assign(PredictionString=["none x 0 0 1 1"] * 4), "not a number"),
    (lambda f: f.assign(PredictionString=[np.nan, "none 1 0 0 1 1", "none 1 0 0 1 1",
                                          "none 1 0 0 1 1"]), "must be text"),
    (lambda f: f.assign(PredictionString=["typical nan 0 0 1 1"] * 4), "NaN"),
]


@pytest.mark.parametrize("damage, message", SIIM_REFUSALS)
def test_siim_refuses_what_mlebench_refuses(
        damage: Callable[[pd.DataFrame], pd.DataFrame], message: str) -> None:
    with pytest.raises(GradingError, match=message):
        graded(SIIM, damage(siim_noisy()), siim_answers())


# vinbigdata-chest-xray-abnormalities-detection


def vinbig_answers() -> pd.DataFrame:
    """prepare.py's answers.csv: one row per (image, class) with its box, 'No finding' (14)
    as the box 0 0 1 1."""
    return pd.DataFrame({
        "image_id": ["A", "B", "C"], "class_id": [0, 0, 14],
        "class_name": ["Aortic enlargement", "Aortic enlargement", "No finding"],
        "rad_id": ["R8", "R9", "R10"], "x_min": [10.0, 20.0, 0.0], "y_min": [10.0, 20.0, 0.0],
        "x_max": [50.0, 60.0, 1.0], "y_max": [50.0, 60.0, 1.0]})


def vinbig_submission(score_a: float, score_b: float) -> pd.DataFrame:
    return pd.DataFrame({"image_id": ["C", "B", "A"], "PredictionString": [
        "14 1 0 0 1 1", f"0 {score_b} 20 20 60 60", f"0 {score_a} 10 10 50 50"]})


def test_vinbig_the_first_answer_box_never_counts_as_found() -> None:
    # pycocotools marks a match with the matched box's id, and the answers' first box (A's)
    # has id 0, read as no match: found exactly, A's guess is still a false positive.
    # Class 14 (C's box, id 2) is found: AP 1. Class 0 with A and B both at score 1 (A
    # first): precision 0, then 0.5 at recall 0.5, so 0.5 at the 51 of COCO's 101 recall
    # points up to 0.5.
    both_sure = graded(VINBIG, vinbig_submission(1.0, 1.0), vinbig_answers())
    assert both_sure == pytest.approx((51 * 0.5 / 101 + 1.0) / 2, abs=TOLERANCE)
    # B ranked first: precision 1 at recall 0.5, so 1 at those 51 points.
    b_first = graded(VINBIG, vinbig_submission(0.5, 1.0), vinbig_answers())
    assert b_first == pytest.approx((51 / 101 + 1.0) / 2, abs=TOLERANCE)


def test_vinbig_reads_x_max_and_y_max_as_width_and_height() -> None:
    # COCO's boxes are x y w h: B's guess 20 20 60 40 is a 60 x 40 box inside the 60 x 60
    # answer box, IoU 2/3 > 0.4, so it is found exactly as the true box would be.
    moved = vinbig_submission(0.5, 1.0).assign(PredictionString=[
        "14 1 0 0 1 1", "0 1.0 20 20 60 40", "0 0.5 10 10 50 50"])
    assert graded(VINBIG, moved, vinbig_answers()) == pytest.approx(
        (51 / 101 + 1.0) / 2, abs=TOLERANCE)


def test_vinbig_takes_repeated_image_rows_as_more_boxes() -> None:
    extra = pd.concat([vinbig_submission(0.5, 1.0), pd.DataFrame(
        {"image_id": ["B"], "PredictionString": ["0 0.9 400 400 10 10"]})])
    # B (TP), the stray box (FP), A (FP): precision 1 at recall 0.5 still.
    assert graded(VINBIG, extra, vinbig_answers()) == pytest.approx(
        (51 / 101 + 1.0) / 2, abs=TOLERANCE)


VINBIG_REFUSALS: list[tuple[Callable[[pd.DataFrame], pd.DataFrame], str]] = [
    (lambda f: f.drop(columns=["PredictionString"]), "no column"),
    (lambda f: f.iloc[1:], "image ids"),
    (lambda f: f.assign(image_id=["C", "B", "Z"]), "image ids"),
    (lambda f: f.assign(PredictionString=["14 1 0 0 1"] * 3), "groups"),
    (lambda f: f.assign(PredictionString=[np.nan, "14 1 0 0 1 1", "14 1 0 0 1 1"]), "text"),
    (lambda f: f.assign(PredictionString=["inf 1 0 0 1 1"] * 3), "finite"),
    (lambda f: f.assign(PredictionString=["14 1 0 0 one 1"] * 3), "not a number"),
]


@pytest.mark.parametrize("damage, message", VINBIG_REFUSALS)
def test_vinbig_refuses_what_mlebench_refuses(
        damage: Callable[[pd.DataFrame], pd.DataFrame], message: str) -> None:
    with pytest.raises(GradingError, match=message):
        graded(VINBIG, damage(vinbig_submission(0.5, 1.0)), vinbig_answers())


# 3d-object-detection-for-autonomous-vehicles


def lyft_box(x: float, name: str, score: float = 1.0, size: str = "2 4 2") -> str:
    """confidence x y z width length height yaw class; at yaw 0 the length runs along x."""
    return f"{score} {x} 0 0 {size} 0 {name}"


def lyft_answers() -> pd.DataFrame:
    """prepare.py's test.csv: each object's string with a confidence of 1.0 put first."""
    return pd.DataFrame({"Id": ["s2", "s1"], "PredictionString": [
        lyft_box(0, "bus"), f"{lyft_box(0, 'car')} {lyft_box(50, 'pedestrian')}"]})


def test_lyft_exact_boxes_score_1() -> None:
    assert graded(LYFT, lyft_answers(), lyft_answers()) == 1.0


def test_lyft_averages_each_samples_class_mean_over_thresholds_and_samples() -> None:
    # s1: the car moved 0.8 along its length overlaps 3.2 x 2 x 2 of 16 + 16 - 12.8: IoU 2/3,
    # found at 0.5 to 0.65 (4 of 10 thresholds); the pedestrian is missed. s2: the bus is
    # guessed as a truck, a class s2 does not have, so it is never scored.
    guess = pd.DataFrame({"Id": ["s1", "s2"],
                          "PredictionString": [lyft_box(0.8, "car"), lyft_box(0, "truck")]})
    s1 = (4 / 10 + 0) / 2
    assert graded(LYFT, guess, lyft_answers()) == pytest.approx((s1 + 0) / 2, abs=TOLERANCE)


def test_lyft_guesses_claim_boxes_by_score_and_a_taken_box_makes_a_false_positive() -> None:
    answers = pd.DataFrame({"Id": ["s"], "PredictionString": [lyft_box(0, "car")]})
    guess = pd.DataFrame({"Id": ["s"], "PredictionString": [
        f"{lyft_box(0, 'car', 0.4)} {lyft_box(0.8, 'car', 0.9)}"]})
    # to 0.65 the 0.9 guess (IoU 2/3) takes the box and the exact one is a false positive
    # (AP 1); above, the 0.9 guess misses and the exact one is found second (AP 0.5).
    assert graded(LYFT, guess, answers) == pytest.approx((4 * 1 + 6 * 0.5) / 10, abs=TOLERANCE)


def test_lyft_blank_strings_are_no_boxes_and_unscored_classes_are_not_checked() -> None:
    sample = pd.DataFrame({"Id": ["s1", "s2"], "PredictionString": [np.nan, np.nan]})
    assert graded(LYFT, sample, lyft_answers()) == 0.0
    odd = pd.DataFrame({"Id": ["s1", "s2"], "PredictionString": [
        lyft_box(0, "car"), lyft_box(0, "truck", size="-1 nan 2")]})
    assert graded(LYFT, odd, lyft_answers()) == pytest.approx(0.25, abs=TOLERANCE)


LYFT_REFUSALS: list[tuple[Callable[[pd.DataFrame], pd.DataFrame], str]] = [
    (lambda f: f.iloc[1:], "rows"),
    (lambda f: f.drop(columns=["Id"]), "no column"),
    (lambda f: f.assign(Id=["s1", "s9"]), "not the answers"),
    (lambda f: f.assign(PredictionString=["1 0 0 0 2 4 2 0", np.nan]), "groups of 9"),
    (lambda f: f.assign(PredictionString=["1 0 0 0 2 4 2 zero car", np.nan]), "not a number"),
    (lambda f: f.assign(PredictionString=["1 0 0 0 2 4 2 inf truck", np.nan]), "no rotation"),
    (lambda f: f.assign(PredictionString=[lyft_box(0, "car", size="2 nan 2"), np.nan]), "NaN"),
    (lambda f: f.assign(PredictionString=[lyft_box(0, "car", size="2 0 2"), np.nan]),
     "not positive"),
    (lambda f: f.assign(PredictionString=["1 1e9 0 0 1e5 1e5 2 0.3 car", np.nan]), "rectangle"),
]


@pytest.mark.parametrize("damage, message", LYFT_REFUSALS)
def test_lyft_refuses_what_mlebench_refuses(
        damage: Callable[[pd.DataFrame], pd.DataFrame], message: str) -> None:
    guess = pd.DataFrame({"Id": ["s1", "s2"], "PredictionString": [lyft_box(0, "car"), np.nan]})
    with pytest.raises(GradingError, match=message):
        graded(LYFT, damage(guess.astype(object)), lyft_answers())


# side by side with mle-bench



def _reference_cases() -> dict[str, tuple[str, pd.DataFrame, pd.DataFrame]]:
    lyft_guess = pd.DataFrame({"Id": ["s1", "s2"], "PredictionString": [
        f"{lyft_box(0.8, 'car', 0.9)} {lyft_box(0, 'car', 0.4)} {lyft_box(49.5, 'pedestrian')}",
        lyft_box(0.3, "bus", 0.7)]})
    base = {
        KUZUSHIJI: (kuzushiji_answers(), kuzushiji_gold(), kuzushiji_noisy()),
        SIIM: (siim_answers(), siim_answers(), siim_noisy()),
        VINBIG: (vinbig_answers(), vinbig_submission(1.0, 1.0), vinbig_submission(0.5, 1.0)),
        LYFT: (lyft_answers(), lyft_answers(), lyft_guess),
    }
    cases: dict[str, tuple[str, pd.DataFrame, pd.DataFrame]] = {}
    for competition, (answers, perfect, guess) in base.items():
        target = "labels" if competition == KUZUSHIJI else "PredictionString"
        id_column = COLUMNS[competition][0]
        damaged: dict[str, pd.DataFrame] = {
            "perfect": perfect,
            "noisy": guess,
            "row_dropped": guess.iloc[1:],
            "row_repeated": pd.concat([guess, guess.iloc[[0]]]),
            "columns_reversed": guess[list(guess.columns)[::-1]],
            "extra_column": guess.assign(zz=0.3),
            "ids_swapped": guess.assign(**{id_column: guess[id_column].to_numpy()[::-1]}),
            "blank": guess.astype(object).assign(**{target: np.nan}),
            "garbage": guess.astype(object).assign(**{target: "x"}),
            "short": guess.astype(object).assign(**{target: "1 2"}),
            "one_blank": guess.astype(object).assign(**{target: [np.nan, *guess[target][1:]]}),
        }
        for name, frame in damaged.items():
            cases[f"{competition}/{name}"] = (competition, answers, frame)
    refusals = {KUZUSHIJI: (KUZUSHIJI_REFUSALS, kuzushiji_noisy()),
                SIIM: (SIIM_REFUSALS, siim_noisy()),
                VINBIG: (VINBIG_REFUSALS, vinbig_submission(0.5, 1.0)),
                LYFT: (LYFT_REFUSALS, pd.DataFrame({"Id": ["s1", "s2"], "PredictionString": [
                    lyft_box(0, "car"), np.nan]}).astype(object))}
    for competition, (damages, guess) in refusals.items():
        for i, (damage, _) in enumerate(damages):
            cases[f"{competition}/refused_{i}"] = (competition, base[competition][0],
                                                   damage(guess))
    return cases


@needs_mlebench
def test_mlebench_itself_gives_the_same_scores_and_refusals(tmp_path: Path) -> None:
    manifest: Manifest = {}
    ours: dict[str, float | None] = {}
    for i, (key, (competition, answers, submission)) in enumerate(_reference_cases().items()):
        answers_path, submission_path = tmp_path / f"{i}_answers.csv", tmp_path / f"{i}_sub.csv"
        answers.to_csv(answers_path, index=False)
        submission.to_csv(submission_path, index=False)
        manifest[key] = (competition, str(answers_path), str(submission_path))
        ours[key] = ours_or_none(graded, competition, pd.read_csv(submission_path),
                                 pd.read_csv(answers_path))
    theirs = mlebench_scores(manifest, tmp_path)
    assert not differing(ours, theirs)
    refused = sum(v is None for v in theirs.values())
    assert 0 < refused < len(manifest)
