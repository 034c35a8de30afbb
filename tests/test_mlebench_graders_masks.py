"""mle-bench's mask graders (tasks/mlebench_graders_masks.py): each competition's answers in the
shape its prepare.py leaves them, scored as its grade.py scores them (worked out by hand, or by
scikit-learn and scipy directly), and refused where it refuses. The last test grades the same
files, and damaged copies, with the real mle-bench when MLEBENCH_SRC and MLEBENCH_PYTHON are
set."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from mlebench_reference import Manifest, differing, mlebench_scores, needs_mlebench, ours_or_none
from scipy.spatial.distance import directed_hausdorff  # type: ignore[import-untyped]
from sklearn.metrics import fbeta_score

from mlmaster_daemon.errors import GradingError
from mlmaster_daemon.tasks import mlebench_graders
from mlmaster_daemon.tasks.mlebench_graders_masks import decode

TOLERANCE = 1e-9
NAN = float("nan")
TGS = "tgs-salt-identification-challenge"
HUBMAP = "hubmap-kidney-segmentation"
CONTRAILS = "google-research-identify-contrails-reduce-global-warming"
VESUVIUS = "vesuvius-challenge-ink-detection"
UW = "uw-madison-gi-tract-image-segmentation"


@dataclass(frozen=True)
class Case:
    """A competition's answers as prepare.py writes them and named submissions to grade."""

    competition: str
    answers: pd.DataFrame
    id_column: str
    targets: tuple[str, ...]
    submissions: dict[str, pd.DataFrame] = field(default_factory=dict)
    answers_name: str = "test.csv"
    answer_columns: tuple[str, ...] = ()  # the registry's, where not the id and targets


def through_csv(frame: pd.DataFrame, tmp_path: Path, name: str) -> pd.DataFrame:
    """The frame as pandas.read_csv reads it back, as the grader receives files."""
    path = tmp_path / f"{name}.csv"
    frame.to_csv(path, index=False)
    return pd.read_csv(path)


def score(case: Case, name: str, tmp_path: Path) -> float:
    return mlebench_graders.grade(case.competition,
                                  through_csv(case.submissions[name], tmp_path, name),
                                  through_csv(case.answers, tmp_path, "answers"),
                                  case.id_column, case.targets, case.answer_columns)


def replaced(frame: pd.DataFrame, column: str, row: int, value: Any) -> pd.DataFrame:
    frame = frame.astype({column: object}).reset_index(drop=True)
    frame.loc[row, column] = value
    return frame


def _tgs() -> Case:
    # test.csv: id and rle_mask, blank where there is no salt; 101 x 101 images (10201 pixels).
    answers = pd.DataFrame({"id": ["0a1b2c", "1d2e3f", "2a3b4c", "3d4e5f"],
                            "rle_mask": ["1 6000", NAN, "101 202", "1 10201"]})
    noisy = pd.DataFrame({"id": ["3d4e5f", "2a3b4c", "1d2e3f", "0a1b2c"],
                          "rle_mask": [NAN, "101 150", "1 1", NAN]})
    return Case(TGS, answers, "id", ("rle_mask",), {
        "perfect": answers.iloc[::-1],
        "noisy": noisy,
        "sample": answers.assign(rle_mask="1 1"),
        "odd_values": replaced(noisy, "rle_mask", 1, "101 150 50000"),
        "past_the_image": replaced(noisy, "rle_mask", 2, "50000 3"),
        "extra_column": noisy.assign(zz=1),
        "missing_row": noisy.iloc[1:],
        "unknown_id": replaced(noisy, "id", 0, "ffffff"),
        "unsorted_runs": replaced(noisy, "rle_mask", 1, "150 2 101 2"),
        "overlapping_runs": replaced(noisy, "rle_mask", 1, "101 3 102 3"),
        "zero_length": replaced(noisy, "rle_mask", 1, "101 0"),
        "decimal_value": replaced(noisy, "rle_mask", 1, "101.5 2"),
        "numbers_only": noisy.assign(rle_mask=[5, 6, 7, 8]),
    })


def test_tgs_is_the_mean_precision_over_iou_thresholds_per_image(tmp_path: Path) -> None:
    case = _tgs()
    assert score(case, "perfect", tmp_path) == pytest.approx(1.0, abs=TOLERANCE)
    # 0a1b2c: no salt predicted over 6000 of 10201 salt pixels counts as IoU 6000/10201 (0.59:
    #   2 of the 10 thresholds 0.5..0.95); 1d2e3f: salt predicted on an empty image, 0;
    # 2a3b4c: IoU 150/202 (0.74: 5 thresholds); 3d4e5f: nothing predicted on an image that
    #   is all salt counts as IoU 1.
    assert score(case, "noisy", tmp_path) == pytest.approx((0.2 + 0 + 0.5 + 1) / 4,
                                                           abs=TOLERANCE)
    # "1 1" everywhere: 0 where there is no salt; IoU 1/6000, 1/202, 1/10201 elsewhere.
    assert score(case, "sample", tmp_path) == pytest.approx(0.0, abs=TOLERANCE)


def test_tgs_shares_a_lone_length_and_ignores_runs_past_the_image(tmp_path: Path) -> None:
    case = _tgs()
    # "101 150 50000": two starts share the one length; the second run lies past the image.
    assert score(case, "odd_values", tmp_path) == score(case, "noisy", tmp_path)
    # "50000 3" on the empty image sets no pixel: it scores 1 there instead of 0.
    assert score(case, "past_the_image", tmp_path) == pytest.approx((0.2 + 1 + 0.5 + 1) / 4,
                                                                    abs=TOLERANCE)


@pytest.mark.parametrize("name", ["extra_column", "missing_row", "unknown_id", "unsorted_runs",
                                  "overlapping_runs", "zero_length", "decimal_value",
                                  "numbers_only"])
def test_tgs_refuses_what_mlebench_refuses(tmp_path: Path, name: str) -> None:
    with pytest.raises(GradingError):
        score(_tgs(), name, tmp_path)


HUBMAP_ANSWERS = ("id", "encoding", "width_pixels", "height_pixels")


def _hubmap() -> Case:
    # test.csv: id, encoding, width_pixels, height_pixels (the sizes kept for grading).
    answers = pd.DataFrame({"id": ["aaa", "bbb"], "encoding": ["1 4 9 2", "2 3"],
                            "width_pixels": [4, 3], "height_pixels": [5, 2]})
    noisy = pd.DataFrame({"id": ["bbb", "aaa"], "predicted": [NAN, "1 4"]})
    return Case(HUBMAP, answers, "id", ("predicted",), answer_columns=HUBMAP_ANSWERS,
                submissions={
        "perfect": pd.DataFrame({"id": ["aaa", "bbb"], "predicted": answers["encoding"]}),
        "noisy": noisy,
        "sample": pd.DataFrame({"id": ["aaa", "bbb"], "predicted": [NAN, NAN]}),
        "extra_column": noisy.assign(zz=1),
        "no_predicted": noisy.rename(columns={"predicted": "encoding"}),
        "missing_row": noisy.iloc[1:],
        "unknown_id": replaced(noisy, "id", 0, "ccc"),
        "overlapping_runs": replaced(noisy, "predicted", 1, "1 4 3 2"),
        "text_value": replaced(noisy, "predicted", 1, "1 four"),
    })


def test_hubmap_is_the_mean_dice_per_image_paired_by_id(tmp_path: Path) -> None:
    case = _hubmap()
    assert score(case, "perfect", tmp_path) == pytest.approx(1.0, abs=TOLERANCE)
    # aaa: 4 of its 6 pixels, Dice 8/10; bbb: nothing predicted, Dice 0.
    assert score(case, "noisy", tmp_path) == pytest.approx(0.4, abs=TOLERANCE)
    assert score(case, "sample", tmp_path) == pytest.approx(0.0, abs=TOLERANCE)
    assert score(case, "extra_column", tmp_path) == pytest.approx(0.4, abs=TOLERANCE)


@pytest.mark.parametrize("name", ["no_predicted", "missing_row", "unknown_id",
                                  "overlapping_runs", "text_value"])
def test_hubmap_refuses_what_mlebench_refuses(tmp_path: Path, name: str) -> None:
    with pytest.raises(GradingError):
        score(_hubmap(), name, tmp_path)


def _contrails() -> Case:
    # answers.csv: record_id, encoded_pixels ("-" for no contrail), height, width.
    answers = pd.DataFrame({"record_id": [1000834164244036115, 1002653297254493116,
                                          1000603527582775543],
                            "encoded_pixels": ["1 4", "-", "5 2 11 2"],
                            "height": [4, 4, 4], "width": [4, 4, 4]})
    noisy = pd.DataFrame({"record_id": answers["record_id"][::-1].to_list(),
                          "encoded_pixels": ["-", "3 1", "1 2"]})
    return Case(CONTRAILS, answers, "record_id", ("encoded_pixels",), {
        "perfect": answers[["record_id", "encoded_pixels"]],
        "noisy": noisy,
        "extra_column": noisy.assign(height=4),
        "blank_cell": replaced(noisy, "encoded_pixels", 0, NAN),
        "missing_row": noisy.iloc[1:],
        "unknown_id": replaced(noisy, "record_id", 0, 5),
        "no_column": noisy.rename(columns={"encoded_pixels": "rle"}),
    }, answers_name="answers.csv")


def test_contrails_is_one_dice_over_every_pixel_of_every_image(tmp_path: Path) -> None:
    case = _contrails()
    assert score(case, "perfect", tmp_path) == pytest.approx(1.0, abs=TOLERANCE)
    # 3 pixels predicted, 8 true, 2 in common.
    assert score(case, "noisy", tmp_path) == pytest.approx(4 / 11, abs=TOLERANCE)
    assert score(case, "extra_column", tmp_path) == pytest.approx(4 / 11, abs=TOLERANCE)


def test_contrails_without_any_contrail_either_side_is_nan(tmp_path: Path) -> None:
    case = _contrails()
    empty = Case(CONTRAILS, case.answers.assign(encoded_pixels="-"), "record_id",
                 ("encoded_pixels",), {"none": case.answers[["record_id"]].assign(
                     encoded_pixels="-")})
    assert math.isnan(score(empty, "none", tmp_path))


@pytest.mark.parametrize("name", ["blank_cell", "missing_row", "unknown_id", "no_column"])
def test_contrails_refuses_what_mlebench_refuses(tmp_path: Path, name: str) -> None:
    with pytest.raises(GradingError):
        score(_contrails(), name, tmp_path)


def _vesuvius() -> Case:
    # inklabels_rle.csv: Id ("a"), Predicted, width, height of the one test fragment.
    answers = pd.DataFrame({"Id": ["a"], "Predicted": ["2 3 7 2"], "width": [4],
                            "height": [3]})
    noisy = pd.DataFrame({"Id": ["a"], "Predicted": ["2 3 12 1"]})
    return Case(VESUVIUS, answers, "Id", ("Predicted",), {
        "perfect": answers[["Id", "Predicted"]],
        "noisy": noisy,
        "sample": pd.DataFrame({"Id": ["a"], "Predicted": ["1 1 5 1"]}),
        "extra_column": noisy.assign(zz=1),
        "other_id": noisy.assign(Id="b"),
        "blank_cell": noisy.assign(Predicted=NAN),
        "two_rows": pd.concat([noisy, noisy]),
    }, answers_name="inklabels_rle.csv")


def _ink(rle: str) -> np.ndarray:
    flat = np.zeros(12, bool)
    values = [int(v) for v in rle.split()]
    for start, length in zip(values[0::2], values[1::2], strict=True):
        flat[start - 1:start - 1 + length] = True
    return flat


def test_vesuvius_is_the_f05_score_of_the_ink_pixels(tmp_path: Path) -> None:
    case = _vesuvius()
    truth = _ink("2 3 7 2")
    assert score(case, "perfect", tmp_path) == pytest.approx(1.0, abs=TOLERANCE)
    for name, rle in (("noisy", "2 3 12 1"), ("sample", "1 1 5 1")):
        expected = fbeta_score(truth, _ink(rle), beta=0.5)
        assert score(case, name, tmp_path) == pytest.approx(expected, abs=TOLERANCE)


@pytest.mark.parametrize("name", ["extra_column", "other_id", "blank_cell", "two_rows"])
def test_vesuvius_refuses_what_mlebench_refuses(tmp_path: Path, name: str) -> None:
    with pytest.raises(GradingError):
        score(_vesuvius(), name, tmp_path)


UW_SLICES = ["case1_day1_slice_0001", "case1_day1_slice_0002", "case1_day2_slice_0001"]
UW_CLASSES = ["large_bowel", "small_bowel", "stomach"]


def _uw_frame(masks: list[object]) -> pd.DataFrame:
    return pd.DataFrame({"id": [s for s in UW_SLICES for _ in UW_CLASSES],
                         "class": UW_CLASSES * len(UW_SLICES), "predicted": masks})


def _uw() -> Case:
    # test.csv: id, class, predicted (blank for none), image_width, image_height (floats, as
    # prepare.py sets them row by row); 3 x 4 images.
    truth = ["1 2", NAN, "6 1", NAN, NAN, NAN, NAN, "4 3", NAN]
    answers = _uw_frame(truth).assign(image_width=4.0, image_height=3.0)
    noisy = _uw_frame(["1 1", NAN, NAN, "12 1", NAN, NAN, NAN, "4 3", NAN])
    return Case(UW, answers, "id", ("predicted",), {
        "perfect": _uw_frame(truth),
        "noisy": noisy,
        "sample": _uw_frame(["1 1 5 2"] * 9),
        "extra_rows": pd.concat([noisy, noisy.iloc[:2]]),
        "no_class": noisy.drop(columns=["class"]),
        "number_ids": noisy.assign(id=range(9)),
        "zero_length": replaced(noisy, "predicted", 0, "1 0"),
    })


def test_uw_weighs_dice_per_row_and_hausdorff_per_case_day(tmp_path: Path) -> None:
    case = _uw()
    assert score(case, "perfect", tmp_path) == pytest.approx(1.0, abs=TOLERANCE)
    # Dice over the rows not empty on both sides: 2/3, 0, 0, 1.
    dice = (2 / 3 + 0 + 0 + 1) / 4
    # case1_day1 as (slice, row, column) scaled by its shape (2, 3, 4): true pixels (0,0,0),
    # (0,1,0), (0,2,1); predicted (0,0,0), (1,2,3). The farthest nearest point is sqrt(0.5)
    # away both ways; case1_day2 matches exactly.
    hausdorff = (math.sqrt(0.5) / math.sqrt(3) + 0) / 2
    expected = 0.4 * dice + 0.6 * (1 - hausdorff)
    assert score(case, "noisy", tmp_path) == pytest.approx(expected, abs=TOLERANCE)
    # Extra rows past the answers' are ignored.
    assert score(case, "extra_rows", tmp_path) == pytest.approx(expected, abs=TOLERANCE)


def test_uw_hausdorff_is_scipys_on_the_scaled_coordinates(tmp_path: Path) -> None:
    true = np.array([[0, 0, 0], [0, 1, 0], [0, 2, 1]]) / (2, 3, 4)
    guessed = np.array([[0, 0, 0], [1, 2, 3]]) / (2, 3, 4)
    distance = max(directed_hausdorff(true, guessed)[0], directed_hausdorff(guessed, true)[0])
    assert distance == pytest.approx(math.sqrt(0.5), abs=TOLERANCE)


def test_uw_without_any_mask_either_side_is_nan(tmp_path: Path) -> None:
    case = _uw()
    empty = Case(UW, case.answers.assign(predicted=NAN), "id", ("predicted",),
                 {"none": _uw_frame([NAN] * 9)})
    assert math.isnan(score(empty, "none", tmp_path))


@pytest.mark.parametrize("name", ["no_class", "number_ids", "zero_length"])
def test_uw_refuses_what_mlebench_refuses(tmp_path: Path, name: str) -> None:
    with pytest.raises(GradingError):
        score(_uw(), name, tmp_path)


@pytest.mark.parametrize(("rle", "pixels"), [
    ("", []), ("  ", []), ("3 2", [2, 3]), ("7", []), ("1 2 5", [0, 1, 4, 5]),
    ("11 5", [10, 11]), ("13 2", []), ("2 9223372036854775807", []),
    ("2 2 18446744073709551616 1", [1, 2]),
])
def test_decode_keeps_rle_decodes_leniencies(rle: str, pixels: list[int]) -> None:
    runs = decode(rle, 3, 4, "x")
    assert [p for s, e in zip(runs.starts, runs.ends, strict=True) for p in range(s, e)] == \
        pixels


@pytest.mark.parametrize("rle", ["0 2", "1 0", "3 1 1 1", "1 3 2 2", "1 2 3 4 5", "1.0 2", "a b",
                                 "1 9223372036854775808", "9223372036854775809 1 1 1"])
def test_decode_refuses_what_rle_decode_refuses(rle: str) -> None:
    with pytest.raises(GradingError):
        decode(rle, 3, 4, "x")


CASES = [_tgs, _hubmap, _contrails, _vesuvius, _uw]



def damaged(case: Case) -> dict[str, pd.DataFrame]:
    """Copies of the noisy submission as an agent might damage it."""
    noisy = case.submissions["noisy"].reset_index(drop=True)
    ident, target = case.id_column, noisy.columns[-1]
    return {
        "row_repeated": pd.concat([noisy, noisy.iloc[[0]]]),
        "row_dropped": noisy.iloc[:-1],
        "columns_reversed": noisy[list(noisy.columns)[::-1]],
        "blank_value": replaced(noisy, target, 0, NAN),
        "all_blank": noisy.assign(**{target: NAN}),
        "number_value": replaced(noisy, target, 0, 1.5),
        "id_blank": replaced(noisy, ident, 0, NAN),
        "ids_as_text": noisy.assign(**{ident: noisy[ident].astype(str) + " "}),
        "rows_reversed": noisy.iloc[::-1],
        "huge_values": replaced(noisy, target, 0, "1 2 18446744073709551616 5"),
    }


@needs_mlebench
def test_every_submission_scores_as_the_real_mlebench_scores_it(tmp_path: Path) -> None:
    manifest: Manifest = {}
    ours: dict[str, float | None] = {}
    for make in CASES:
        case = make()
        folder = tmp_path / case.competition
        folder.mkdir()
        answers_path = folder / case.answers_name
        case.answers.to_csv(answers_path, index=False)
        answers = pd.read_csv(answers_path)
        for name, frame in {**case.submissions, **damaged(case)}.items():
            path = folder / f"{name}.csv"
            frame.to_csv(path, index=False)
            key = f"{case.competition}/{name}"
            manifest[key] = (case.competition, str(answers_path), str(path))
            ours[key] = ours_or_none(mlebench_graders.grade, case.competition,
                                     pd.read_csv(path), answers, case.id_column, case.targets,
                                     case.answer_columns)
    theirs = mlebench_scores(manifest, tmp_path)
    assert not differing(ours, theirs)
    assert sum(v is None for v in ours.values()) > 30  # refusals were exercised
    assert sum(v is not None for v in ours.values()) > 30
