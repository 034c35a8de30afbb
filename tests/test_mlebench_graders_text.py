"""mle-bench's text graders (tasks/mlebench_graders_text.py): each competition's answers in the
shape its prepare.py leaves them, scored as its grade.py scores them (worked out by hand, or by
Levenshtein, scipy and scikit-learn directly), and refused where it refuses. The last test
grades the same files with the real mle-bench when MLEBENCH_SRC and MLEBENCH_PYTHON are set."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from Levenshtein import distance
from mlebench_reference import Manifest, differing, mlebench_scores, needs_mlebench, ours_or_none
from scipy.stats import kendalltau
from sklearn.metrics import f1_score

from mlmaster_daemon.errors import GradingError
from mlmaster_daemon.tasks import mlebench_graders

TOLERANCE = 1e-9
NAN = float("nan")


@dataclass(frozen=True)
class Case:
    """A competition's answers as prepare.py writes them and named submissions to grade."""

    competition: str
    answers: pd.DataFrame
    id_column: str
    targets: tuple[str, ...]
    submissions: dict[str, pd.DataFrame] = field(default_factory=dict)
    jsonl: bool = False  # answers written as JSON lines (tensorflow2-question-answering)


def through_csv(frame: pd.DataFrame, tmp_path: Path, name: str) -> pd.DataFrame:
    """The frame as pandas.read_csv reads it back, as the grader receives files."""
    path = tmp_path / f"{name}.csv"
    frame.to_csv(path, index=False)
    return pd.read_csv(path)


def answers_file(case: Case, folder: Path) -> Path:
    if case.jsonl:
        path = folder / "test.jsonl"
        records = case.answers.to_dict(orient="records")
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
        return path
    path = folder / "test.csv"
    case.answers.to_csv(path, index=False)
    return path


def read_answers(case: Case, path: Path) -> pd.DataFrame:
    if case.jsonl:
        return pd.read_json(path, lines=True, dtype=False)
    return pd.read_csv(path)


def score(case: Case, name: str, tmp_path: Path) -> float:
    folder = tmp_path / case.competition
    folder.mkdir(exist_ok=True)
    answers = read_answers(case, answers_file(case, folder))
    submission = through_csv(case.submissions[name], folder, name)
    return mlebench_graders.grade(case.competition, submission, answers, case.id_column,
                                  case.targets)


def replaced(frame: pd.DataFrame, column: str, row: int, value: object) -> pd.DataFrame:
    changed = frame.astype({column: object})
    changed.loc[changed.index[row], column] = value
    return changed


# --- billion-word-imputation ----------------------------------------------------------------


def billion_words() -> Case:
    sentences = ["The cat sat on the mat .", 'He said "" no "" .', "Prices rose 5 % today .",
                 "It was , in fact , fine ."]
    answers = pd.DataFrame({"id": [0, 1, 2, 3], "sentence": sentences})
    perfect = answers.iloc[::-1]
    noisy = answers.assign(sentence=["The cat on the mat .", sentences[1],
                                     "Prices rose 5 today .", "It was in fact , fine ."])
    return Case("billion-word-imputation", answers, "id", ("sentence",), {
        "perfect": perfect, "noisy": noisy,
        "blank_sentence": replaced(noisy, "sentence", 1, NAN),
        "numbers_only": answers.assign(sentence=[1, 2, 3, 4]),
        "wrong_id": answers.assign(id=[0, 1, 2, 9]),
        "missing_row": answers.iloc[:3],
        "no_sentence": answers[["id"]],
    })


def test_billion_word_is_the_mean_levenshtein_distance_on_rows_paired_by_id(
        tmp_path: Path) -> None:
    case = billion_words()
    assert score(case, "perfect", tmp_path) == 0.0
    # "sat " (4), "% " (2) and ", " (2) were dropped from three of the four sentences.
    assert score(case, "noisy", tmp_path) == pytest.approx((4 + 0 + 2 + 2) / 4, abs=TOLERANCE)


@pytest.mark.parametrize("name", ["blank_sentence", "numbers_only", "wrong_id", "missing_row",
                                  "no_sentence"])
def test_billion_word_refuses_what_mlebench_refuses(tmp_path: Path, name: str) -> None:
    with pytest.raises(GradingError):
        score(billion_words(), name, tmp_path)


# --- bms-molecular-translation --------------------------------------------------------------


def molecules() -> Case:
    inchi = ["InChI=1S/H2O/h1H2", "InChI=1S/CH4/h1H4", "InChI=1S/C2H6/c1-2/h1-2H3"]
    answers = pd.DataFrame({"image_id": ["0a1b", "000c", "ff02"], "InChI": inchi})
    noisy = answers.assign(InChI=["InChI=1S/H2O/h1H3", NAN, "InChI=1S/C2H6/c1-2/h1-2H3"])
    return Case("bms-molecular-translation", answers, "image_id", ("InChI",), {
        "perfect": answers.sample(frac=1, random_state=1), "noisy": noisy,
        "sample": answers.assign(InChI="InChI=1S/H2O/h1H2"),
        "numbers": answers.assign(InChI=[1.5, 2.0, 3.0]),
        "ids_changed": answers.assign(image_id=["0a1b", "000c", "ff03"]),
        "extra_row": pd.concat([answers, answers.iloc[[0]]]),
        "no_inchi": answers.rename(columns={"InChI": "inchi"}),
    })


def test_bms_is_the_mean_levenshtein_distance_of_the_values_written_as_text(
        tmp_path: Path) -> None:
    case = molecules()
    assert score(case, "perfect", tmp_path) == 0.0
    # A blank prediction is the text "nan"; numbers keep their ".0".
    blank = distance("InChI=1S/CH4/h1H4", "nan")
    assert score(case, "noisy", tmp_path) == pytest.approx((1 + blank + 0) / 3, abs=TOLERANCE)
    numbers = [distance(t, p) for t, p in zip(case.answers["InChI"], ["1.5", "2.0", "3.0"],
                                               strict=True)]
    assert score(case, "numbers", tmp_path) == pytest.approx(np.mean(numbers), abs=TOLERANCE)


@pytest.mark.parametrize("name", ["ids_changed", "extra_row", "no_inchi"])
def test_bms_refuses_what_mlebench_refuses(tmp_path: Path, name: str) -> None:
    with pytest.raises(GradingError):
        score(molecules(), name, tmp_path)


# --- multi-modal-gesture-recognition --------------------------------------------------------


def gestures() -> Case:
    # prepare.py writes the ids as "0300", which read_csv reads back as 300.
    answers = pd.DataFrame({"Id": ["0300", "0301", "0302"],
                            "Sequence": ["1 2 3 4", "5 6", "7 8 9"]})
    noisy = answers.assign(Sequence=["1 3 4", "6 5", "7 8 9 10 11"])
    return Case("multi-modal-gesture-recognition", answers, "Id", ("Sequence",), {
        "perfect": answers.iloc[::-1], "noisy": noisy,
        "padded_numbers": answers.assign(Sequence=["+1 2 3 4", "5 06", "7 8 9"]),
        "not_numbers": answers.assign(Sequence=["1 2 x 4", "5 6", "7 8 9"]),
        "fractions": answers.assign(Sequence=["1 2 3 4", "5.0 6", "7 8 9"]),
        "blank": replaced(answers, "Sequence", 1, NAN),
        "wrong_id": answers.assign(Id=["0300", "0301", "0399"]),
    })


def test_gestures_sum_the_edit_distances_over_the_number_of_true_gestures(
        tmp_path: Path) -> None:
    case = gestures()
    assert score(case, "perfect", tmp_path) == 0.0
    assert score(case, "padded_numbers", tmp_path) == 0.0  # int("+1") == 1
    # One deletion, one swap (two substitutions), two insertions: 5 edits over 9 gestures.
    assert score(case, "noisy", tmp_path) == pytest.approx(5 / 9, abs=TOLERANCE)


@pytest.mark.parametrize("name", ["not_numbers", "fractions", "blank", "wrong_id"])
def test_gestures_refuse_what_mlebench_refuses(tmp_path: Path, name: str) -> None:
    with pytest.raises(GradingError):
        score(gestures(), name, tmp_path)


# --- chaii-hindi-and-tamil-question-answering -----------------------------------------------


def chaii() -> Case:
    tamil = "\u0ba4\u0bae\u0bbf\u0bb4\u0bcd"
    answers = pd.DataFrame({"id": ["b1e", "a07", "c33"],
                            "PredictionString": ["\u0938\u0928 1857", tamil, "Delhi Sultanate"]})
    noisy = answers.assign(PredictionString=["\u0938\u0928 1857 \u092e\u0947\u0902", NAN,
                                             "delhi SULTANATE"])
    return Case("chaii-hindi-and-tamil-question-answering", answers, "id",
                ("PredictionString",), {
                    "perfect": answers.iloc[[2, 0, 1]], "noisy": noisy,
                    "sample": answers.assign(PredictionString="dummy text"),
                    "one_word_in_all": pd.DataFrame({"id": ["x"], "PredictionString": ["w"]}),
                    "numbers": answers.assign(PredictionString=[1, 2, 3]),
                    "wrong_id": answers.assign(id=["b1e", "a07", "zzz"]),
                    "missing_row": answers.iloc[:2],
                })


def test_chaii_averages_the_word_jaccard_over_the_rows(tmp_path: Path) -> None:
    case = chaii()
    assert score(case, "perfect", tmp_path) == pytest.approx(1.0, abs=TOLERANCE)
    # 2 of 3 words; a blank prediction shares nothing; case is ignored.
    assert score(case, "noisy", tmp_path) == pytest.approx((2 / 3 + 0 + 1) / 3, abs=TOLERANCE)
    assert score(case, "sample", tmp_path) == 0.0


def test_chaii_refuses_answers_and_submission_of_a_single_word(tmp_path: Path) -> None:
    case = chaii()
    single = Case(case.competition, pd.DataFrame({"id": ["x"], "PredictionString": ["w"]}),
                  "id", case.targets, {"same": case.submissions["one_word_in_all"]})
    with pytest.raises(GradingError, match="fewer than two distinct words"):
        score(single, "same", tmp_path)


@pytest.mark.parametrize("name", ["numbers", "wrong_id", "missing_row"])
def test_chaii_refuses_what_mlebench_refuses(tmp_path: Path, name: str) -> None:
    with pytest.raises(GradingError):
        score(chaii(), name, tmp_path)


# --- tweet-sentiment-extraction -------------------------------------------------------------


def tweets() -> Case:
    # prepare.py keeps every train column in the private test.csv.
    answers = pd.DataFrame({"textID": ["28b57f3990", "6e0c6d75b1", "ee9df322d1"],
                            "text": ["so sad today", "I love it, really", "meh ok"],
                            "selected_text": ["so sad", "I love it,", "meh ok"],
                            "sentiment": ["negative", "positive", "neutral"]})
    submission = answers[["textID", "selected_text"]]
    noisy = submission.assign(selected_text=["SO sad today", "love", "meh   ok"])
    return Case("tweet-sentiment-extraction", answers, "textID", ("selected_text",), {
        "perfect": submission.iloc[::-1], "noisy": noisy,
        "blank": replaced(noisy, "selected_text", 0, NAN),
        "blank_where_answer_is_blank": replaced(submission, "selected_text", 0, " "),
        "wrong_id": submission.assign(textID=["28b57f3990", "6e0c6d75b1", "x"]),
        "no_text_column": submission[["textID"]],
    })


def test_tweets_average_the_word_jaccard_and_a_blank_prediction_scores_zero(
        tmp_path: Path) -> None:
    case = tweets()
    assert score(case, "perfect", tmp_path) == pytest.approx(1.0, abs=TOLERANCE)
    assert score(case, "noisy", tmp_path) == pytest.approx((2 / 3 + 1 / 3 + 1) / 3,
                                                           abs=TOLERANCE)
    assert score(case, "blank", tmp_path) == pytest.approx((0 + 1 / 3 + 1) / 3, abs=TOLERANCE)


def test_tweets_refuse_a_row_without_words_on_either_side(tmp_path: Path) -> None:
    case = tweets()
    blank_answer = Case(case.competition, replaced(case.answers, "selected_text", 0, NAN),
                        case.id_column, case.targets, case.submissions)
    with pytest.raises(GradingError, match="divides by zero"):
        score(blank_answer, "blank_where_answer_is_blank", tmp_path)


@pytest.mark.parametrize("name", ["wrong_id", "no_text_column"])
def test_tweets_refuse_what_mlebench_refuses(tmp_path: Path, name: str) -> None:
    with pytest.raises(GradingError):
        score(tweets(), name, tmp_path)


# --- AI4Code --------------------------------------------------------------------------------


def notebooks() -> Case:
    answers = pd.DataFrame({"id": ["00001756c60be8", "0001daf4c2c76d", "00015c83e2717b"],
                            "cell_order": ["1862f0a6 448eb224 2a9e43d6 7e2f170a",
                                           "3e551fb7 45049ad8",
                                           "aa11 bb22 cc33"]})
    noisy = answers.assign(cell_order=["448eb224 1862f0a6 2a9e43d6 7e2f170a",
                                       "45049ad8 3e551fb7", "aa11 bb22 cc33"])
    return Case("AI4Code", answers, "id", ("cell_order",), {
        "perfect": answers.iloc[::-1], "noisy": noisy,
        "cell_missing": answers.assign(cell_order=["1862f0a6 448eb224 2a9e43d6 ffff0000",
                                                   "3e551fb7 45049ad8", "aa11 bb22 cc33"]),
        "cell_dropped": answers.assign(cell_order=["1862f0a6 448eb224 2a9e43d6",
                                                   "3e551fb7 45049ad8", "aa11 bb22 cc33"]),
        "wrong_id": answers.assign(id=["00001756c60be8", "0001daf4c2c76d", "x"]),
        "extra_row": pd.concat([answers, answers.iloc[[0]]]),
    })


def test_ai4code_is_kendall_tau_with_inversions_summed_over_the_notebooks(
        tmp_path: Path) -> None:
    case = notebooks()
    assert score(case, "perfect", tmp_path) == 1.0
    # One swapped pair in the first notebook (of 4 * 3 ordered pairs), the whole second one
    # reversed (of 2 * 1), none in the third (of 3 * 2): 1 - 4 * 2 / 20.
    assert score(case, "noisy", tmp_path) == pytest.approx(1 - 4 * 2 / 20, abs=TOLERANCE)
    single = Case(case.competition, case.answers.iloc[:1], "id", case.targets,
                  {"noisy": case.submissions["noisy"].iloc[:1]})
    want = kendalltau([0, 1, 2, 3], [1, 0, 2, 3]).statistic
    assert score(single, "noisy", tmp_path) == pytest.approx(want, abs=TOLERANCE)


@pytest.mark.parametrize("name", ["cell_missing", "cell_dropped", "wrong_id", "extra_row"])
def test_ai4code_refuses_what_mlebench_refuses(tmp_path: Path, name: str) -> None:
    with pytest.raises(GradingError):
        score(notebooks(), name, tmp_path)


# --- tensorflow2-question-answering ---------------------------------------------------------


def annotated(long: tuple[int, int], shorts: list[tuple[int, int]], yes_no: str) -> list[object]:
    return [{"annotation_id": 1, "yes_no_answer": yes_no,
             "long_answer": {"start_token": long[0], "end_token": long[1], "candidate_index": 0},
             "short_answers": [{"start_token": s, "end_token": e} for s, e in shorts]}]


def questions() -> Case:
    # prepare.py writes test.jsonl with example_id as text; the grader reads the annotations.
    answers = pd.DataFrame({
        "example_id": ["-7181568939624180239", "5655493461695504401", "8143963340734397410"],
        "question_text": ["who wrote it", "is it blue", "when did it end"],
        "annotations": [annotated((10, 50), [(12, 14), (20, 22)], "NONE"),
                        annotated((3, 40), [], "YES"),
                        annotated((-1, -1), [], "NONE")]})
    ids = answers["example_id"]
    rows = [(f"{ids[0]}_long", "10:50"), (f"{ids[0]}_short", "12:14"),
            (f"{ids[1]}_long", "3:40"), (f"{ids[1]}_short", "YES"),
            (f"{ids[2]}_long", ""), (f"{ids[2]}_short", "")]
    gold = pd.DataFrame(rows, columns=["example_id", "PredictionString"])
    # _long right, _short a second valid span, YES given as a long answer (wrong), blank where
    # YES is right (missed), a span where there is nothing (wrong), blank where nothing (right).
    noisy = gold.assign(PredictionString=["10:50", " 20:22 ", "YES", "", "1:2", ""])
    return Case("tensorflow2-question-answering", answers, "example_id", ("annotations",), {
        "perfect": gold.iloc[::-1], "noisy": noisy, "sample": gold.assign(PredictionString=""),
        "not_a_span": replaced(noisy, "PredictionString", 0, "10-50"),
        "three_parts": replaced(noisy, "PredictionString", 0, "1:2:3"),
        "words_for_tokens": replaced(noisy, "PredictionString", 0, "a:b"),
        "short_missing": replaced(gold, "example_id", 1, f"{ids[0]}_long"),
        "one_row_per_example": gold.iloc[::2],
    }, jsonl=True)


def test_tensorflow2_scores_micro_f1_of_predictions_found_among_the_annotations(
        tmp_path: Path) -> None:
    case = questions()
    assert score(case, "perfect", tmp_path) == 1.0
    truth_noisy, predicted_noisy = [1, 1, 0, 1, 0, 0], [1, 1, 1, 0, 1, 0]
    assert score(case, "noisy", tmp_path) == pytest.approx(
        f1_score(truth_noisy, predicted_noisy, average="micro"), abs=TOLERANCE)
    # Blank everywhere: right only where the example has no answer of that kind.
    assert score(case, "sample", tmp_path) == pytest.approx(2 / 6, abs=TOLERANCE)


def test_tensorflow2_reads_annotations_given_as_json_text(tmp_path: Path) -> None:
    case = questions()
    as_text = case.answers.assign(annotations=[json.dumps(a) for a in case.answers.annotations])
    answers = through_csv(as_text, tmp_path, "answers")
    noisy = through_csv(case.submissions["noisy"], tmp_path, "noisy")
    assert mlebench_graders.grade(case.competition, noisy, answers, "example_id",
                                  ("annotations",)) == pytest.approx(3 / 6, abs=TOLERANCE)


@pytest.mark.parametrize("name", ["not_a_span", "three_parts", "words_for_tokens",
                                  "short_missing", "one_row_per_example"])
def test_tensorflow2_refuses_what_mlebench_refuses(tmp_path: Path, name: str) -> None:
    with pytest.raises(GradingError):
        score(questions(), name, tmp_path)


# --- facebook-recruiting-iii-keyword-extraction ---------------------------------------------


def keywords() -> Case:
    answers = pd.DataFrame({"Id": [6034196, 6034197, 6034198, 6034199],
                            "Title": ["a", "b", "c", "d"], "Body": ["x", "y", "z", "w"],
                            "Tags": ["php mysql", "c# .net", "javascript", "php"]})
    submission = answers[["Id", "Tags"]]
    noisy = submission.assign(Tags=["php sql", "c# .net asp.net", NAN, "php php"])
    return Case("facebook-recruiting-iii-keyword-extraction", answers, "Id", ("Tags",), {
        "perfect": submission.iloc[::-1], "noisy": noisy,
        "sample": submission.assign(Tags="javascript c# python php java"),
        "numbers": submission.assign(Tags=[1, 2, 3, 4]),
        "wrong_id": submission.assign(Id=[6034196, 6034197, 6034198, 1]),
        "missing_row": submission.iloc[1:],
        "no_tags": submission[["Id"]],
    })


def test_facebook_is_micro_f1_over_the_tags_the_answers_use(tmp_path: Path) -> None:
    case = keywords()
    assert score(case, "perfect", tmp_path) == 1.0
    # True tags: 6. Predicted tags the answers know (sql, asp.net dropped; php once): 4,
    # of which 4 are right. F1 = 2 * 4 / (6 + 4).
    assert score(case, "noisy", tmp_path) == pytest.approx(8 / 10, abs=TOLERANCE)
    # Each row predicts php, c# and javascript of the known tags: 12 predicted, 4 right.
    assert score(case, "sample", tmp_path) == pytest.approx(2 * 4 / (6 + 12), abs=TOLERANCE)


@pytest.mark.parametrize("name", ["numbers", "wrong_id", "missing_row", "no_tags"])
def test_facebook_refuses_what_mlebench_refuses(tmp_path: Path, name: str) -> None:
    with pytest.raises(GradingError):
        score(keywords(), name, tmp_path)


# --- the real mle-bench ---------------------------------------------------------------------

CASES: list[Callable[[], Case]] = [billion_words, molecules, gestures, chaii, tweets, notebooks,
                                   questions, keywords]



def damaged(case: Case) -> dict[str, pd.DataFrame]:
    """Copies of the noisy submission as an agent might damage it."""
    noisy, target, ident = case.submissions["noisy"], case.submissions["noisy"].columns[1], \
        case.id_column
    return {
        "row_repeated": pd.concat([noisy, noisy.iloc[[1]]]),
        "columns_reversed": noisy[list(noisy.columns)[::-1]],
        "extra_column": noisy.assign(zz=0.3),
        "blank_value": replaced(noisy, target, 1, NAN),
        "all_blank": noisy.assign(**{target: NAN}),
        "number_value": replaced(noisy, target, 0, 1.5),
        "id_blank": replaced(noisy, ident, 0, NAN),
        "ids_as_text": noisy.assign(**{ident: noisy[ident].astype(str) + " "}),
        "rows_reversed": noisy.iloc[::-1],
    }


@needs_mlebench
def test_every_submission_scores_as_the_real_mlebench_scores_it(tmp_path: Path) -> None:
    manifest: Manifest = {}
    ours: dict[str, float | None] = {}
    for make in CASES:
        case = make()
        folder = tmp_path / case.competition
        folder.mkdir()
        answers_path = answers_file(case, folder)
        answers = read_answers(case, answers_path)
        for name, frame in {**case.submissions, **damaged(case)}.items():
            path = folder / f"{name}.csv"
            frame.to_csv(path, index=False)
            key = f"{case.competition}/{name}"
            manifest[key] = (case.competition, str(answers_path), str(path))
            ours[key] = ours_or_none(mlebench_graders.grade, case.competition,
                                     pd.read_csv(path), answers, case.id_column, case.targets)
    theirs = mlebench_scores(manifest, tmp_path)
    assert not differing(ours, theirs)
    assert sum(v is None for v in ours.values()) > 20  # refusals were exercised
    assert sum(v is not None for v in ours.values()) > 20
