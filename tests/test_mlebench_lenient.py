"""Where mle-bench's grader is more lenient than the project's strict check (the search's own
validation), `mlmaster grade` gives mle-bench's score and says that the strict check differs;
where both agree, it says nothing. Expected scores: scikit-learn on the rows as mle-bench
pairs them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import accuracy_score, roc_auc_score, root_mean_squared_error
from test_mlebench_conformance import (
    BY_ID,
    TOLERANCE,
    Built,
    build,
    expected,
    noisy,
    perfect,
    write_submission,
)

from mlmaster_daemon.tasks.grading import grade, grade_like_mlebench, grade_report
from mlmaster_daemon.tasks.report import CompetitionReport
from mlmaster_daemon.tasks.validation import validate_submission


def _disagreements(report: CompetitionReport) -> list[str]:
    """The notes about the file (not about the missing leaderboard)."""
    return [note for note in report.notes if not note.startswith("medals are null")]


def _graded(built: Built, path: Path, want: float, strict_says: str) -> None:
    got = grade_like_mlebench(built.spec, path)
    assert abs(got - want) <= TOLERANCE, (got, want)
    report = grade_report(built.spec, path)
    assert report.valid_submission and report.score == round(want, 5)
    assert any(strict_says in note for note in _disagreements(report)), report.notes


def test_an_extra_column_is_accepted_where_mlebench_reads_only_its_columns(
        tmp_path: Path) -> None:
    built = build(tmp_path, BY_ID["aerial-cactus-identification"])
    guess = noisy(built)
    path = write_submission(tmp_path, built, guess.assign(model="lgbm"), "extra")
    _graded(built, path, expected(built.shape, built.truth, guess),
            "strict check (the search's own validation) refuses it")
    assert "unexpected column(s) model" in (validate_submission(built.spec, path) or "")


def test_nomad2018_pairs_rows_by_position_not_by_id(tmp_path: Path) -> None:
    built = build(tmp_path, BY_ID["nomad2018-predict-transparent-conductors"])
    answer = perfect(built)
    path = write_submission(tmp_path, built, answer, "in-order", shuffle=False)
    reversed_rows = pd.read_csv(path).iloc[::-1]
    reversed_rows.to_csv(path, index=False)
    paired = reversed_rows[list(built.shape.targets)].reset_index(drop=True)
    _graded(built, path, expected(built.shape, built.truth, paired), "strict check")
    assert grade(built.spec, path) == 0.0, "matched by id the file is right"


def test_jigsaw_scores_probabilities_above_1_and_reads_columns_by_position(
        tmp_path: Path) -> None:
    built = build(tmp_path, BY_ID["jigsaw-toxic-comment-classification-challenge"])
    guess = noisy(built)
    guess.iloc[1, 0] = 1.5
    path = write_submission(tmp_path, built, guess, "above-1")
    _graded(built, path, expected(built.shape, built.truth, guess), "refuses it")

    swapped = noisy(built)
    columns = list(swapped.columns)
    path = write_submission(tmp_path, built, swapped[[columns[1], columns[0], *columns[2:]]],
                            "swapped")
    by_position = swapped[[columns[1], columns[0], *columns[2:]]].set_axis(columns, axis=1)
    keep = built.truth.sum(axis=1).to_numpy() >= 0
    want = roc_auc_score(built.truth.to_numpy()[keep], by_position.to_numpy()[keep],
                         average="macro")
    _graded(built, path, float(want), "strict check")


def test_paddy_blank_labels_count_as_wrong(tmp_path: Path) -> None:
    built = build(tmp_path, BY_ID["paddy-disease-classification"])
    answer = perfect(built).astype(object)
    answer.loc[:5, "label"] = np.nan
    path = write_submission(tmp_path, built, answer, "six-blank")
    _graded(built, path, (len(answer) - 6) / len(answer), "missing value")


def test_text_normalization_compares_exact_text_in_both_checks(tmp_path: Path) -> None:
    built = build(tmp_path, BY_ID["text-normalization-challenge-english-language"])
    answer = perfect(built)
    texts = answer["after"].astype(str)
    ones = texts.index[texts == "1"]
    assert len(ones), "the seeded answers hold the label 1"
    answer.loc[ones, "after"] = "1.0"
    path = write_submission(tmp_path, built, answer, "one-point-zero")
    want = expected(built.shape, built.truth, answer)
    assert want == pytest.approx(1 - len(ones) / len(answer), abs=TOLERANCE)
    assert grade_like_mlebench(built.spec, path) == pytest.approx(want, abs=TOLERANCE)
    assert grade(built.spec, path) == pytest.approx(want, abs=TOLERANCE)


def test_words_pandas_reads_as_missing_are_labels_to_the_strict_check(tmp_path: Path) -> None:
    # text-normalization's answers hold "None" and "NA": a perfect file is valid and right
    built = build(tmp_path, BY_ID["text-normalization-challenge-english-language"])
    assert {"None", "NA"} <= set(built.truth["after"])
    path = write_submission(tmp_path, built, perfect(built), "perfect")
    assert validate_submission(built.spec, path) is None
    assert grade(built.spec, path) == 1.0 == grade_like_mlebench(built.spec, path)
    assert _disagreements(grade_report(built.spec, path)) == []


def test_the_new_york_taxi_key_is_not_checked_rows_pair_in_key_order(tmp_path: Path) -> None:
    built = build(tmp_path, BY_ID["new-york-city-taxi-fare-prediction"])
    guess = noisy(built)
    path = write_submission(tmp_path, built, guess, "wrong-key", shuffle=False)
    frame = pd.read_csv(path)
    frame.loc[0, "key"] = "0000-00-00 wrong key"
    frame.to_csv(path, index=False)
    sub = frame.sort_values("key")["fare_amount"].to_numpy()
    truth = pd.DataFrame({"key": built.ids, "y": built.truth["fare_amount"]}).sort_values("key")
    want = float(root_mean_squared_error(truth["y"].to_numpy(), sub))
    _graded(built, path, want, "strict check")


def test_detecting_insults_needs_no_date_column(tmp_path: Path) -> None:
    built = build(tmp_path, BY_ID["detecting-insults-in-social-commentary"])
    guess = noisy(built)
    path = write_submission(tmp_path, built, guess, "no-date")
    pd.read_csv(path).drop(columns=["Date"]).to_csv(path, index=False)
    _graded(built, path, expected(built.shape, built.truth, guess), "missing column(s) Date")


def test_a_blank_date_is_not_a_missing_prediction_in_the_strict_check(tmp_path: Path) -> None:
    built = build(tmp_path, BY_ID["detecting-insults-in-social-commentary"])
    guess = noisy(built)
    path = write_submission(tmp_path, built, guess, "blank-dates")
    assert validate_submission(built.spec, path) is None
    assert grade(built.spec, path) == pytest.approx(
        expected(built.shape, built.truth, guess), abs=TOLERANCE)
    assert _disagreements(grade_report(built.spec, path)) == []


@pytest.mark.parametrize("written", ["1/0", "1.0/0.0", "true/false"])
def test_spaceship_titanic_booleans_written_as_numbers_or_lowercase_are_right(
        tmp_path: Path, written: str) -> None:
    built = build(tmp_path, BY_ID["spaceship-titanic"])
    truth = built.truth["Transported"].to_numpy()
    yes, no = written.split("/")
    answer = pd.DataFrame({"Transported": np.where(truth, yes, no)})
    path = write_submission(tmp_path, built, answer, "booleans")
    assert grade_like_mlebench(built.spec, path) == 1.0
    assert grade(built.spec, path) == 1.0
    assert _disagreements(grade_report(built.spec, path)) == []


def test_dog_breed_accepts_extra_columns_leaf_does_not(tmp_path: Path) -> None:
    dogs = build(tmp_path / "d", BY_ID["dog-breed-identification"])
    guess = noisy(dogs)
    path = write_submission(tmp_path, dogs, guess.assign(note=0.0), "dogs-extra")
    _graded(dogs, path, expected(dogs.shape, dogs.truth, guess), "unexpected column(s) note")
    leaf = build(tmp_path / "l", BY_ID["leaf-classification"])
    path = write_submission(tmp_path, leaf, noisy(leaf).assign(note=0.0), "leaf-extra")
    report = grade_report(leaf.spec, path)
    assert report.score is None
    assert any("columns must be exactly id and the 99 class" in note
               for note in _disagreements(report))


def test_hard_wrong_probabilities_cost_minus_log_float64_epsilon(tmp_path: Path) -> None:
    # dogs-vs-cats with 4 of 40 rows hard wrong: mle-bench 3.60437 (eps 1e-15 gave 3.45388)
    built = build(tmp_path, BY_ID["dogs-vs-cats-redux-kernels-edition"])
    answer = perfect(built)
    answer.iloc[:4] = 1.0 - answer.iloc[:4]
    path = write_submission(tmp_path, built, answer, "hard")
    want = -4 * np.log(np.finfo(np.float64).eps) / 40
    assert grade_like_mlebench(built.spec, path) == pytest.approx(want, abs=TOLERANCE)
    assert grade_report(built.spec, path).score == 3.60437
    assert grade(built.spec, path) == pytest.approx(want, abs=TOLERANCE)


def test_plant_seedlings_counts_an_unknown_species_as_a_false_positive(tmp_path: Path) -> None:
    built = build(tmp_path, BY_ID["plant-seedlings-classification"])
    answer = perfect(built)
    answer.loc[:5, "species"] = "Common wheat"
    path = write_submission(tmp_path, built, answer, "unknown")
    want = float(accuracy_score(built.truth["species"], answer["species"]))
    assert want == pytest.approx(34 / 40)
    assert grade_like_mlebench(built.spec, path) == pytest.approx(want, abs=TOLERANCE)
    assert grade(built.spec, path) == pytest.approx(want, abs=TOLERANCE)


def test_a_known_competition_run_with_another_metric_is_reported_by_its_own(
        tmp_path: Path) -> None:
    from mlmaster_daemon.tasks.competition import load_task

    # task.toml runs aerial-cactus's AUC task on log loss; the report is still mle-bench's
    # AUC, ranked higher-is-better, and says what the search's own metric made of the file
    root = tmp_path / "aerial-cactus-identification"
    (root / "prepared" / "public").mkdir(parents=True)
    (root / "prepared" / "private").mkdir(parents=True)
    (root / "task.toml").write_text('metric = "log_loss"\n')
    sample = root / "prepared" / "public" / "sample_submission.csv"
    sample.write_text("id,has_cactus\na,0.9\nb,0.2\nc,0.6\n")
    (root / "prepared" / "private" / "test.csv").write_text("id,has_cactus\na,1\nb,0\nc,0\n")
    spec = load_task(root)
    assert spec.lower_is_better
    report = grade_report(spec, sample)
    assert report.score == pytest.approx(roc_auc_score([1, 0, 0], [0.9, 0.2, 0.6]))
    assert report.is_lower_better is False
    assert any("strict check" in note for note in _disagreements(report))


@pytest.mark.parametrize("competition", ["plant-pathology-2020-fgvc7", "playground-series-s3e18"])
def test_column_wise_auc_graders_without_a_range_check_score_a_probability_above_1(
        tmp_path: Path, competition: str) -> None:
    built = build(tmp_path, BY_ID[competition])
    guess = noisy(built)
    guess.iloc[0, 0] = 1.5
    path = write_submission(tmp_path, built, guess, "above-1")
    _graded(built, path, expected(built.shape, built.truth, guess), "probabilities in [0, 1]")


def test_jigsaw_rows_of_minus_1_are_left_out_by_the_strict_check_too(tmp_path: Path) -> None:
    built = build(tmp_path, BY_ID["jigsaw-toxic-comment-classification-challenge"])
    assert (built.truth == -1).all(axis=1).any(), "the answers hold unscored rows"
    guess = noisy(built)
    path = write_submission(tmp_path, built, guess, "noisy")
    want = expected(built.shape, built.truth, guess)
    assert validate_submission(built.spec, path) is None
    assert grade(built.spec, path) == pytest.approx(want, abs=TOLERANCE)
    assert _disagreements(grade_report(built.spec, path)) == []


def test_a_submission_that_is_a_link_is_not_followed(tmp_path: Path) -> None:
    built = build(tmp_path, BY_ID["spaceship-titanic"])
    real = write_submission(tmp_path, built, perfect(built), "real")
    link = tmp_path / "link.csv"
    link.symlink_to(real)
    report = grade_report(built.spec, link)
    assert report.score is None and report.submission_exists
    assert any("not a link" in note for note in _disagreements(report))
