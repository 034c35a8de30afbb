"""metrics.score against hand-computed values, and its errors."""

from __future__ import annotations

import math
from collections.abc import Sequence

import pandas as pd
import pytest

from mlmaster_daemon.errors import GradingError
from mlmaster_daemon.tasks.metrics import normalise_label, score, sort_labels
from mlmaster_daemon.tasks.spec import Metric


def frame(**columns: Sequence[object]) -> pd.DataFrame:
    return pd.DataFrame(columns)


def test_labels_normalise_across_int_float_and_text() -> None:
    assert normalise_label(1) == normalise_label(1.0) == normalise_label(" 1 ") == "1"
    assert normalise_label("1.50") == "1.5"
    assert normalise_label("cat") == "cat"
    assert normalise_label(float("nan")) == ""
    assert normalise_label(None) == "" and normalise_label(pd.NA) == ""


def test_large_integer_ids_stay_distinct() -> None:
    big = 2**53 + 1
    assert normalise_label(big) != normalise_label(big - 1)
    assert normalise_label(str(big)) == normalise_label(big)


def test_labels_sort_numerically_when_all_are_numbers() -> None:
    assert sort_labels(["10", "2", "2"]) == ["2", "10"]
    assert sort_labels(["yes", "no"]) == ["no", "yes"]


def test_accuracy_treats_1_and_1_0_and_text_1_alike() -> None:
    answers = frame(id=[1, 2, 3, 4], y=[1, 0, 1, 0])
    submission = frame(id=[1, 2, 3, 4], y=["1.0", "0", "0", 0])
    assert score(Metric.ACCURACY, answers, submission, "id", "y") == 0.75


def test_rows_are_matched_by_id_not_position() -> None:
    answers = frame(id=[1, 2, 3], y=["a", "b", "c"])
    submission = frame(id=[3, 1, 2], y=["c", "a", "b"])
    assert score(Metric.ACCURACY, answers, submission, "id", "y") == 1.0


def test_roc_auc_matches_hand_computed_value() -> None:
    # positive/negative pairs ranked correctly: (.35>.1), (.8>.1), (.8>.4) of 4 -> 0.75
    answers = frame(id=[1, 2, 3, 4], y=[0, 0, 1, 1])
    submission = frame(id=[1, 2, 3, 4], y=[0.1, 0.4, 0.35, 0.8])
    assert score(Metric.ROC_AUC, answers, submission, "id", "y") == pytest.approx(0.75)


def test_roc_auc_positive_class_is_the_larger_label() -> None:
    answers = frame(id=[1, 2, 3], y=["yes", "no", "yes"])
    submission = frame(id=[1, 2, 3], y=[0.9, 0.2, 0.6])
    assert score(Metric.ROC_AUC, answers, submission, "id", "y") == 1.0


def test_roc_auc_uses_the_positive_class_column_of_per_class_submissions() -> None:
    answers = frame(id=[1, 2, 3, 4], y=[0, 1, 1, 0])
    submission = frame(id=[1, 2, 3, 4], **{"0": [0.9, 0.2, 0.3, 0.6], "1": [0.1, 0.8, 0.7, 0.4]})
    assert score(Metric.ROC_AUC, answers, submission, "id", "y") == 1.0


def test_binary_log_loss_matches_hand_computed_value() -> None:
    answers = frame(id=[1, 2], y=[1, 0])
    submission = frame(id=[1, 2], y=[0.8, 0.3])
    expected = -(math.log(0.8) + math.log(0.7)) / 2
    assert score(Metric.LOG_LOSS, answers, submission, "id", "y") == pytest.approx(expected)


def test_multiclass_log_loss_refuses_rows_that_do_not_sum_to_1() -> None:
    # MLE-bench refuses, scikit-learn >= 1.5 would not renormalise: row 1 sums to 0.8
    answers = frame(id=[1, 2], y=["a", "c"])
    submission = frame(id=[1, 2], a=[0.4, 0.2], b=[0.2, 0.3], c=[0.2, 0.5])
    with pytest.raises(GradingError, match=r"must sum to 1.*row 1 .*0\.8"):
        score(Metric.LOG_LOSS, answers, submission, "id", "y")


def test_multiclass_log_loss_accepts_row_sums_within_mlebench_tolerance_unnormalised() -> None:
    # |sum - 1| <= 1e-6 + 1e-5 passes np.isclose; the probabilities are used as they are
    answers = frame(id=[1], y=["a"])
    submission = frame(id=[1], a=[0.500005], b=[0.5])
    expected = -math.log(0.500005)
    assert score(Metric.LOG_LOSS, answers, submission, "id", "y") == pytest.approx(
        expected, abs=1e-12)
    with pytest.raises(GradingError, match="must sum to 1"):
        score(Metric.LOG_LOSS, answers, frame(id=[1], a=[0.50002], b=[0.5]), "id", "y")


def test_log_loss_matches_numeric_labels_to_text_column_names() -> None:
    answers = frame(id=[1, 2], y=[0, 2])
    submission = frame(id=[1, 2], **{"0": [0.5, 0.1], "1": [0.25, 0.1], "2": [0.25, 0.8]})
    expected = -(math.log(0.5) + math.log(0.8)) / 2
    assert score(Metric.LOG_LOSS, answers, submission, "id", "y") == pytest.approx(expected)


def test_log_loss_clips_zero_probabilities_at_float64_epsilon() -> None:
    # scikit-learn >= 1.5 (MLE-bench pins 1.5.1): eps = np.finfo(float64).eps, not 1e-15
    answers = frame(id=[1], y=["a"])
    submission = frame(id=[1], a=[0.0], b=[1.0])
    expected = -math.log(2.220446049250313e-16)
    assert score(Metric.LOG_LOSS, answers, submission, "id", "y") == pytest.approx(expected)


def test_rmse_and_mae_match_hand_computed_values() -> None:
    answers = frame(id=[1, 2, 3], y=[1.0, 2.0, 3.0])
    submission = frame(id=[1, 2, 3], y=[2.0, 2.0, 5.0])
    assert score(Metric.RMSE, answers, submission, "id", "y") == pytest.approx(math.sqrt(5 / 3))
    assert score(Metric.MAE, answers, submission, "id", "y") == pytest.approx(1.0)


def test_ids_that_do_not_match_are_reported() -> None:
    answers = frame(id=[1, 2], y=[1.0, 2.0])
    submission = frame(id=[1, 3], y=[1.0, 2.0])
    with pytest.raises(GradingError, match=r"1 id\(s\) have no prediction: '2'.*not in the test"):
        score(Metric.RMSE, answers, submission, "id", "y")


def test_repeated_ids_are_reported() -> None:
    answers = frame(id=[1, 2], y=[1.0, 2.0])
    submission = frame(id=[1, 1, 2], y=[1.0, 1.0, 2.0])
    with pytest.raises(GradingError, match="repeat ids"):
        score(Metric.RMSE, answers, submission, "id", "y")


def test_missing_prediction_column_is_reported() -> None:
    answers = frame(id=[1], y=[1.0])
    with pytest.raises(GradingError, match="no column 'y'"):
        score(Metric.MAE, answers, frame(id=[1], z=[1.0]), "id", "y")


def test_missing_id_column_is_reported() -> None:
    with pytest.raises(GradingError, match="no id column 'id'"):
        score(Metric.MAE, frame(id=[1], y=[1.0]), frame(key=[1], y=[1.0]), "id", "y")


def test_non_numeric_predictions_are_reported() -> None:
    answers = frame(id=[1, 2], y=[1.0, 2.0])
    with pytest.raises(GradingError, match="non-numeric values such as 'high'"):
        score(Metric.RMSE, answers, frame(id=[1, 2], y=["high", 2]), "id", "y")


def test_missing_predictions_are_reported() -> None:
    answers = frame(id=[1, 2], y=[0, 1])
    with pytest.raises(GradingError, match="missing value"):
        score(Metric.ROC_AUC, answers, frame(id=[1, 2], y=[0.5, None]), "id", "y")


def test_roc_auc_needs_two_classes() -> None:
    answers = frame(id=[1, 2], y=[1, 1])
    with pytest.raises(GradingError, match="exactly 2 classes"):
        score(Metric.ROC_AUC, answers, frame(id=[1, 2], y=[0.5, 0.5]), "id", "y")


def test_log_loss_reports_classes_without_a_column() -> None:
    answers = frame(id=[1, 2], y=["a", "d"])
    submission = frame(id=[1, 2], a=[0.5, 0.5], b=[0.5, 0.5])
    with pytest.raises(GradingError, match=r"no probability column for class.*'d'"):
        score(Metric.LOG_LOSS, answers, submission, "id", "y")
