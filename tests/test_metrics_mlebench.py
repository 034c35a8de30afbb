"""metrics.score for MLE-bench's metrics and scored-column shapes, against values worked out
by hand, and each way a submission can fail to grade."""

from __future__ import annotations

import math
import subprocess
import sys
from collections.abc import Sequence

import pandas as pd
import pytest

from mlmaster_daemon.errors import GradingError
from mlmaster_daemon.tasks.metrics import score
from mlmaster_daemon.tasks.spec import PROJECT_METRICS, Metric

E_MINUS_1 = math.e - 1  # log1p(e - 1) == 1


def frame(**columns: Sequence[object]) -> pd.DataFrame:
    return pd.DataFrame(columns)


# --- RMSLE ---------------------------------------------------------------------------------


def test_rmsle_matches_hand_computed_value() -> None:
    # log1p: answers (0, e-1) -> (0, 1); predictions (e-1, e-1) -> (1, 1); errors 1, 0
    answers = frame(id=[1, 2], y=[0.0, E_MINUS_1])
    submission = frame(id=[1, 2], y=[E_MINUS_1, E_MINUS_1])
    assert score(Metric.RMSLE, answers, submission, "id", "y") == pytest.approx(math.sqrt(0.5))


def test_rmsle_uses_log1p_of_both_sides() -> None:
    # log1p(0, 1, 3) = (0, ln 2, ln 4) vs log1p(0, 3, 1) = (0, ln 4, ln 2): errors 0, ±ln 2
    answers = frame(id=[1, 2, 3], y=[0, 1, 3])
    submission = frame(id=[1, 2, 3], y=[0, 3, 1])
    expected = math.log(2) * math.sqrt(2 / 3)
    assert score(Metric.RMSLE, answers, submission, "id", "y") == pytest.approx(expected)


def test_rmsle_on_several_columns_is_the_mean_of_column_rmsles() -> None:
    # nomad2018: column a is off by 1 in log1p on every row (RMSLE 1), column b exact (0)
    answers = frame(id=[1, 2], a=[0.0, 0.0], b=[1.0, 2.0])
    submission = frame(id=[1, 2], a=[E_MINUS_1, E_MINUS_1], b=[1.0, 2.0])
    assert score(Metric.RMSLE, answers, submission, "id", ["a", "b"]) == pytest.approx(0.5)


def test_rmsle_rejects_negative_predictions() -> None:
    answers = frame(id=[1, 2], y=[1.0, 2.0])
    with pytest.raises(GradingError, match=r"rmsle needs values >= 0 .*submission.*-0\.5"):
        score(Metric.RMSLE, answers, frame(id=[1, 2], y=[-0.5, 2.0]), "id", "y")


def test_rmsle_rejects_negative_answers() -> None:
    answers = frame(id=[1, 2], y=[-1.0, 2.0])
    with pytest.raises(GradingError, match=r"rmsle needs values >= 0 but answers column 'y'"):
        score(Metric.RMSLE, answers, frame(id=[1, 2], y=[1.0, 2.0]), "id", "y")


# --- QWK -----------------------------------------------------------------------------------


def test_qwk_matches_hand_computed_value_on_two_classes() -> None:
    # observed: (0,0)=1, (0,1)=1, (1,1)=2; weights (i-j)^2 -> sum w*O = 1
    # expected = outer(true counts (2,2), predicted counts (1,3)) / 4: E01=1.5, E10=0.5 -> 2
    # kappa = 1 - 1/2
    answers = frame(id=[1, 2, 3, 4], y=[0, 0, 1, 1])
    submission = frame(id=[1, 2, 3, 4], y=[0, 1, 1, 1])
    assert score(Metric.QWK, answers, submission, "id", "y") == pytest.approx(0.5)


def test_qwk_matches_hand_computed_value_on_three_classes() -> None:
    # observed off-diagonal (1,2) and (2,1), weight 1 each -> sum w*O = 2
    # expected: every cell 1/3, sum of weights (0+1+4)*2 + 1+1 = 12 -> sum w*E = 4
    # kappa = 1 - 2/4
    answers = frame(id=[1, 2, 3], y=[0, 1, 2])
    submission = frame(id=[1, 2, 3], y=[0, 2, 1])
    assert score(Metric.QWK, answers, submission, "id", "y") == pytest.approx(0.5)


def test_qwk_accepts_whole_numbers_written_as_floats() -> None:
    answers = frame(id=[1, 2, 3], y=[0, 1, 2])
    submission = frame(id=[1, 2, 3], y=["0.0", 1.0, "2"])
    assert score(Metric.QWK, answers, submission, "id", "y") == pytest.approx(1.0)


def test_qwk_rejects_non_integer_predictions() -> None:
    answers = frame(id=[1, 2], y=[0, 1])
    with pytest.raises(GradingError, match=r"qwk needs integer labels .* such as 1\.5"):
        score(Metric.QWK, answers, frame(id=[1, 2], y=[0, 1.5]), "id", "y")


def test_qwk_rejects_non_numeric_predictions() -> None:
    answers = frame(id=[1, 2], y=[0, 1])
    with pytest.raises(GradingError, match="non-numeric values such as 'mild'"):
        score(Metric.QWK, answers, frame(id=[1, 2], y=[0, "mild"]), "id", "y")


# --- MAP@k ---------------------------------------------------------------------------------


def test_map_at_5_with_hits_at_rank_1_rank_2_and_none() -> None:
    # average precisions 1/1, 1/2, 0 -> mean 0.5
    answers = frame(id=[1, 2, 3], y=["a", "b", "c"])
    submission = frame(id=[1, 2, 3], y=["a x y", "x b", "x y z w v"])
    assert score(Metric.MAP_AT_K, answers, submission, "id", "y") == pytest.approx(0.5)


def test_map_at_k_with_several_true_labels() -> None:
    # hits at rank 1 (precision 1/1) and rank 3 (2/3), over min(2 true labels, k) = 2
    answers = frame(id=[1], y=["a b"])
    submission = frame(id=[1], y=["a c b"])
    assert score(Metric.MAP_AT_K, answers, submission, "id", "y") == pytest.approx(5 / 6)


def test_map_at_k_counts_a_repeated_guess_once_but_keeps_its_rank() -> None:
    # row 1: "a a" is one hit at rank 1 -> 1; row 2: "x x a" hits at rank 3 -> 1/3
    answers = frame(id=[1, 2], y=["a", "a"])
    submission = frame(id=[1, 2], y=["a a", "x x a"])
    expected = (1 + 1 / 3) / 2
    assert score(Metric.MAP_AT_K, answers, submission, "id", "y") == pytest.approx(expected)


def test_map_at_k_ignores_guesses_beyond_k() -> None:
    # the hit is the 3rd guess: 1/3 at k=3, nothing at k=2 (truncated, not an error)
    answers = frame(id=[1], y=["c"])
    submission = frame(id=[1], y=["a b c"])
    assert score(Metric.MAP_AT_K, answers, submission, "id", "y", k=3) == pytest.approx(1 / 3)
    assert score(Metric.MAP_AT_K, answers, submission, "id", "y", k=2) == 0.0


def test_map_at_k_compares_numeric_labels_in_normalised_form() -> None:
    # the true label 7 is the second guess "7.0" -> 1/2
    answers = frame(id=[1], y=[7])
    submission = frame(id=[1], y=["3 7.0"])
    assert score(Metric.MAP_AT_K, answers, submission, "id", "y") == pytest.approx(0.5)


def test_map_at_k_rejects_missing_predictions() -> None:
    answers = frame(id=[1, 2], y=["a", "b"])
    with pytest.raises(GradingError, match=r"'y' has 1 missing prediction"):
        score(Metric.MAP_AT_K, answers, frame(id=[1, 2], y=["a", None]), "id", "y")


def test_map_at_k_needs_k_of_at_least_1() -> None:
    answers = frame(id=[1], y=["a"])
    with pytest.raises(GradingError, match="k >= 1"):
        score(Metric.MAP_AT_K, answers, frame(id=[1], y=["a"]), "id", "y", k=0)


# --- F1 ------------------------------------------------------------------------------------


def test_binary_f1_matches_hand_computed_value() -> None:
    # positive 1: tp = 2 (ids 3, 5), fp = 1 (id 2), fn = 1 (id 4) -> 2*2 / (2*2 + 1 + 1)
    answers = frame(id=[1, 2, 3, 4, 5], y=[0, 0, 1, 1, 1])
    submission = frame(id=[1, 2, 3, 4, 5], y=[0, 1, 1, 0, 1])
    assert score(Metric.F1, answers, submission, "id", "y") == pytest.approx(2 / 3)


def test_binary_f1_positive_class_is_the_larger_label() -> None:
    # positive "yes": tp = 1, fn = 1, fp = 0 -> 2 / 3; were it "no", tp = 2, fp = 1 -> 4 / 5
    answers = frame(id=[1, 2, 3, 4], y=["yes", "yes", "no", "no"])
    submission = frame(id=[1, 2, 3, 4], y=["yes", "no", "no", "no"])
    assert score(Metric.F1, answers, submission, "id", "y") == pytest.approx(2 / 3)


def test_binary_f1_needs_two_classes() -> None:
    answers = frame(id=[1, 2, 3], y=["a", "b", "c"])
    with pytest.raises(GradingError, match="exactly 2 classes"):
        score(Metric.F1, answers, frame(id=[1, 2, 3], y=["a", "b", "c"]), "id", "y")


def test_f1_micro_and_macro_match_hand_computed_values() -> None:
    # a: tp 1, fp 1 (id 4), fn 1 (id 2) -> 2/4;  b: tp 1, fp 1 (id 2), fn 0 -> 2/3
    # c: tp 0, fp 0, fn 1 -> 0.  macro = (1/2 + 2/3 + 0) / 3;  micro = 2*2 / (2*2 + 2 + 2)
    answers = frame(id=[1, 2, 3, 4], y=["a", "a", "b", "c"])
    submission = frame(id=[1, 2, 3, 4], y=["a", "b", "b", "a"])
    macro = score(Metric.F1_MACRO, answers, submission, "id", "y")
    assert macro == pytest.approx((1 / 2 + 2 / 3) / 3)
    assert score(Metric.F1_MICRO, answers, submission, "id", "y") == pytest.approx(0.5)


def test_f1_counts_predicted_labels_absent_from_the_answers_as_scikit_learn_does() -> None:
    # the guess "z" is no answer label but a label all the same (labels = union of both):
    # a: tp 1, fn 1 -> 2/3; b: tp 1 -> 1; z: fp 1 -> 0. macro = (2/3 + 1 + 0) / 3
    # micro: tp 2, fp 1, fn 1 -> 4/6, which for one label per row is the accuracy
    answers = frame(id=[1, 2, 3], y=["a", "a", "b"])
    submission = frame(id=[1, 2, 3], y=["a", "z", "b"])
    assert score(Metric.F1_MACRO, answers, submission, "id", "y") == pytest.approx(5 / 9)
    assert score(Metric.F1_MICRO, answers, submission, "id", "y") == pytest.approx(2 / 3)


def test_f1_micro_is_the_accuracy_on_plant_seedlings_like_labels() -> None:
    from sklearn.metrics import f1_score

    truth = ["Maize", "Maize", "Cleavers", "Charlock", "Maize", "Cleavers", "Charlock", "Maize"]
    guess = ["Maize", "Sugar beet", "Cleavers", "Maize", "Maize", "Loose Silky-bent",
             "Charlock", "Maize"]
    ids = list(range(len(truth)))
    expected = f1_score(truth, guess, average="micro")
    assert expected == pytest.approx(5 / 8, abs=1e-12)
    result = score(Metric.F1_MICRO, frame(id=ids, y=truth), frame(id=ids, y=guess), "id", "y")
    assert result == pytest.approx(expected, abs=1e-12)


# --- several columns: mean column-wise ROC AUC, one-hot log loss ---------------------------


def test_roc_auc_on_several_columns_is_the_mean_of_column_aucs() -> None:
    # toxic: 3 of 4 positive/negative pairs ranked right -> 0.75; insult: all 4 -> 1.0
    answers = frame(id=[1, 2, 3, 4], toxic=[0, 0, 1, 1], insult=[1, 0, 0, 1])
    submission = frame(id=[1, 2, 3, 4], toxic=[0.1, 0.4, 0.35, 0.8], insult=[0.9, 0.2, 0.3, 0.6])
    result = score(Metric.ROC_AUC, answers, submission, "id", ("toxic", "insult"))
    assert result == pytest.approx(0.875)


def test_column_wise_roc_auc_leaves_out_rows_whose_answers_are_all_minus_1() -> None:
    # jigsaw's unscored test rows; without id 5 the columns score 0.75 and 1.0 as above
    answers = frame(id=[1, 2, 3, 4, 5], toxic=[0, 0, 1, 1, -1], insult=[1, 0, 0, 1, -1])
    submission = frame(id=[1, 2, 3, 4, 5], toxic=[0.1, 0.4, 0.35, 0.8, 0.9],
                       insult=[0.9, 0.2, 0.3, 0.6, 0.0])
    result = score(Metric.ROC_AUC, answers, submission, "id", ("toxic", "insult"))
    assert result == pytest.approx(0.875)


def test_column_wise_roc_auc_needs_every_column_in_the_submission() -> None:
    answers = frame(id=[1, 2], toxic=[0, 1], insult=[1, 0])
    submission = frame(id=[1, 2], toxic=[0.1, 0.9])
    with pytest.raises(GradingError, match="no column 'insult'"):
        score(Metric.ROC_AUC, answers, submission, "id", ["toxic", "insult"])


@pytest.mark.parametrize("target", ["y", ("y",)])
def test_roc_auc_rejects_values_outside_0_1(target: str | tuple[str, ...]) -> None:
    answers = frame(id=[1, 2], y=[0, 1])
    with pytest.raises(GradingError, match=r"probabilities in \[0, 1\] .* such as 1\.2"):
        score(Metric.ROC_AUC, answers, frame(id=[1, 2], y=[0.3, 1.2]), "id", target)


def test_log_loss_reads_one_hot_answers() -> None:
    # id 1 is a dog (p = 0.5), id 2 a cat (p = 0.25): -(ln 0.5 + ln 0.25) / 2 = 1.5 ln 2
    answers = frame(id=[1, 2], cat=[0, 1], dog=[1, 0], fox=[0, 0])
    submission = frame(id=[1, 2], cat=[0.2, 0.25], dog=[0.5, 0.25], fox=[0.3, 0.5])
    result = score(Metric.LOG_LOSS, answers, submission, "id", ["cat", "dog", "fox"])
    assert result == pytest.approx(1.5 * math.log(2))


def test_one_hot_and_label_column_answers_give_the_same_log_loss() -> None:
    one_hot = frame(id=[1, 2, 3], cat=[0, 1, 0], dog=[1, 0, 0], fox=[0, 0, 1])
    labels = frame(id=[1, 2, 3], animal=["dog", "cat", "fox"])
    submission = frame(id=[3, 1, 2], cat=[0.1, 0.3, 0.6], dog=[0.2, 0.6, 0.3], fox=[0.7, 0.1, 0.1])
    from_one_hot = score(Metric.LOG_LOSS, one_hot, submission, "id", ["cat", "dog", "fox"])
    from_labels = score(Metric.LOG_LOSS, labels, submission, "id", "animal")
    assert from_one_hot == pytest.approx(from_labels)
    assert from_one_hot == pytest.approx(-(math.log(0.6) * 2 + math.log(0.7)) / 3)


def test_one_hot_answers_must_have_a_single_1_per_row() -> None:
    answers = frame(id=[1, 2], cat=[1, 1], dog=[1, 0])
    submission = frame(id=[1, 2], cat=[0.5, 0.5], dog=[0.5, 0.5])
    with pytest.raises(GradingError, match=r"must be one-hot .* id '1'"):
        score(Metric.LOG_LOSS, answers, submission, "id", ["cat", "dog"])


def test_a_one_element_target_list_scores_like_the_column_name() -> None:
    answers = frame(id=[1, 2, 3], y=[1.0, 2.0, 3.0])
    submission = frame(id=[1, 2, 3], y=[2.0, 2.0, 5.0])
    assert score(Metric.RMSE, answers, submission, "id", ["y"]) == score(
        Metric.RMSE, answers, submission, "id", "y"
    )


def test_an_empty_target_list_is_an_error() -> None:
    with pytest.raises(GradingError, match="no target column"):
        score(Metric.RMSE, frame(id=[1], y=[1.0]), frame(id=[1], y=[1.0]), "id", [])


# --- every metric: id order, missing and extra ids, missing predictions --------------------

# (answers, submission values in the same id order, targets): several targets where the
# metric reads several columns, and one-hot classes for log loss
CASES: dict[Metric, tuple[dict[str, list[object]], dict[str, list[object]], list[str]]] = {
    Metric.ACCURACY: ({"y": ["a", "b", "a", "c"]}, {"y": ["a", "a", "a", "c"]}, ["y"]),
    Metric.ROC_AUC: (
        {"y": [0, 1, 0, 1], "z": [1, 1, 0, 0]},
        {"y": [0.2, 0.7, 0.9, 0.4], "z": [0.6, 0.8, 0.1, 0.7]},
        ["y", "z"],
    ),
    Metric.LOG_LOSS: (
        {"y": [0, 1, 1, 0], "z": [1, 0, 0, 1]},
        {"y": [0.2, 0.7, 0.4, 0.1], "z": [0.8, 0.3, 0.6, 0.9]},
        ["y", "z"],
    ),
    Metric.RMSE: ({"y": [1.0, 2.0, 3.0, 4.0]}, {"y": [1.5, 2.0, 2.0, 7.0]}, ["y"]),
    Metric.MAE: ({"y": [1.0, 2.0, 3.0, 4.0]}, {"y": [1.5, 2.0, 2.0, 7.0]}, ["y"]),
    Metric.RMSLE: (
        {"y": [1.0, 2.0, 3.0, 4.0], "z": [0.0, 1.0, 0.0, 1.0]},
        {"y": [1.5, 2.0, 2.0, 7.0], "z": [0.5, 0.5, 0.0, 2.0]},
        ["y", "z"],
    ),
    Metric.QWK: ({"y": [0, 1, 2, 2]}, {"y": [0, 2, 2, 1]}, ["y"]),
    Metric.MAP_AT_K: ({"y": ["a", "b", "c", "d"]}, {"y": ["a b", "c b", "d", "a d"]}, ["y"]),
    Metric.F1: ({"y": [0, 1, 1, 0]}, {"y": [1, 1, 0, 0]}, ["y"]),
    Metric.F1_MICRO: ({"y": ["a", "b", "c", "c"]}, {"y": ["a", "c", "c", "b"]}, ["y"]),
    Metric.F1_MACRO: ({"y": ["a", "b", "c", "c"]}, {"y": ["a", "c", "c", "b"]}, ["y"]),
}
IDS = [10, 11, 12, 13]


def _case(metric: Metric) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    truth, predicted, targets = CASES[metric]
    return frame(id=IDS, **truth), frame(id=IDS, **predicted), targets


def test_every_metric_has_a_case() -> None:
    assert set(CASES) == set(PROJECT_METRICS)


@pytest.mark.parametrize("metric", list(PROJECT_METRICS))
def test_every_metric_matches_rows_by_id_not_position(metric: Metric) -> None:
    answers, submission, targets = _case(metric)
    shuffled = submission.iloc[[2, 0, 3, 1]].reset_index(drop=True)
    in_order = score(metric, answers, submission, "id", targets)
    assert math.isfinite(in_order)
    assert score(metric, answers, shuffled, "id", targets) == pytest.approx(in_order)


@pytest.mark.parametrize("metric", list(PROJECT_METRICS))
def test_every_metric_reports_a_missing_id(metric: Metric) -> None:
    answers, submission, targets = _case(metric)
    with pytest.raises(GradingError, match=r"1 id\(s\) have no prediction: '13'"):
        score(metric, answers, submission.iloc[:3], "id", targets)


@pytest.mark.parametrize("metric", list(PROJECT_METRICS))
def test_every_metric_reports_an_extra_id(metric: Metric) -> None:
    answers, submission, targets = _case(metric)
    with pytest.raises(GradingError, match=r"1 id\(s\) are not in the test set: '13'"):
        score(metric, answers.iloc[:3], submission, "id", targets)


@pytest.mark.parametrize("metric", list(PROJECT_METRICS))
def test_every_metric_reports_a_missing_prediction(metric: Metric) -> None:
    answers, submission, targets = _case(metric)
    submission.loc[1, targets[-1]] = None
    with pytest.raises(GradingError, match="missing"):
        score(metric, answers, submission, "id", targets)


@pytest.mark.parametrize("metric", list(PROJECT_METRICS))
def test_every_metric_reports_a_missing_prediction_column(metric: Metric) -> None:
    answers, submission, targets = _case(metric)
    renamed = submission.rename(columns={targets[-1]: "other"})
    with pytest.raises(GradingError, match=f"no column '{targets[-1]}'"):
        score(metric, answers, renamed, "id", targets)


def test_importing_the_metrics_module_does_not_load_scikit_learn() -> None:
    code = (
        "import sys, mlmaster_daemon.tasks.metrics; sys.exit(1 if 'sklearn' in sys.modules else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
