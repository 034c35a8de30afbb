"""The "competition" metric: a known MLE-bench competition scored by its own metric (the
reproduction of mle-bench's grader), with the competition's direction, through the strict
check, the prompts and the coders."""

from __future__ import annotations

from pathlib import Path

import pytest
from sklearn.metrics import roc_auc_score

from mlmaster_daemon.coders.llm.prompts import task_metric_name
from mlmaster_daemon.coders.offline.coder import OfflineCoder
from mlmaster_daemon.coders.protocol import CodeRequest
from mlmaster_daemon.errors import GradingError, InvalidTaskDir
from mlmaster_daemon.models import Operator
from mlmaster_daemon.tasks.competition import load_task
from mlmaster_daemon.tasks.grading import grade, grade_report
from mlmaster_daemon.tasks.spec import Metric, TaskOverrides, TaskSpec
from mlmaster_daemon.tasks.validation import validate_submission


def _cactus(tmp_path: Path) -> Path:
    """aerial-cactus-identification (AUC) with three hidden answers."""
    root = tmp_path / "aerial-cactus-identification"
    (root / "prepared" / "public").mkdir(parents=True)
    (root / "prepared" / "private").mkdir(parents=True)
    (root / "prepared" / "public" / "sample_submission.csv").write_text(
        "id,has_cactus\na,0.5\nb,0.5\nc,0.5\n")
    (root / "prepared" / "private" / "test.csv").write_text("id,has_cactus\na,1\nb,0\nc,0\n")
    return root


def _ai4code(tmp_path: Path) -> TaskSpec:
    public = tmp_path / "AI4Code" / "prepared" / "public"
    public.mkdir(parents=True)
    (public / "train_orders.csv").write_text("id,cell_order\na,x y\n")
    (public / "sample_submission.csv").write_text("id,cell_order\nb,x y\nc,y x\n")
    return load_task(tmp_path / "AI4Code")


def test_the_strict_score_of_the_competition_metric_is_its_graders_on_a_valid_file(
        tmp_path: Path) -> None:
    spec = load_task(_cactus(tmp_path), TaskOverrides(metric="competition"))
    assert spec.metric is Metric.COMPETITION and spec.lower_is_better is False
    path = tmp_path / "submission.csv"
    path.write_text("id,has_cactus\nc,0.6\na,0.9\nb,0.2\n")
    assert grade(spec, path) == pytest.approx(roc_auc_score([1, 0, 0], [0.9, 0.2, 0.6]))
    # the strict check still holds it to the sample's ids
    path.write_text("id,has_cactus\nc,0.6\na,0.9\nz,0.2\n")
    with pytest.raises(GradingError, match="not in the test set"):
        grade(spec, path)
    assert grade_report(spec, path).score is None


def test_blank_cells_are_left_to_the_competitions_grader(tmp_path: Path) -> None:
    # An empty prediction (no mask, no box, no answer) is a value some graders score.
    spec = _ai4code(tmp_path)
    path = tmp_path / "submission.csv"
    path.write_text("id,cell_order\nb,\nc,y x\n")
    assert validate_submission(spec, path) is None
    path.write_text("id,cell_order\nb,x y\n")
    assert "1 id(s) of the test set have no row" in (validate_submission(spec, path) or "")


def test_the_prompts_name_what_the_competitions_grader_computes(tmp_path: Path) -> None:
    spec = _ai4code(tmp_path)
    assert task_metric_name(spec) == ("Kendall tau (cell order) (the competition's own metric, "
                                      "as MLE-bench grades it)")
    assert task_metric_name(load_task(_cactus(tmp_path))) == "ROC AUC"


async def test_the_offline_coder_says_it_cannot_write_for_a_competitions_own_metric(
        tmp_path: Path) -> None:
    spec = _ai4code(tmp_path)
    with pytest.raises(InvalidTaskDir, match=r"\[llm\.code\]") as refused:
        await OfflineCoder().generate(CodeRequest(Operator.DRAFT, spec, 1, ""))
    assert "Kendall tau" in refused.value.message


def test_the_competition_metric_has_no_direction_of_its_own() -> None:
    with pytest.raises(ValueError, match=r"TaskSpec\.lower_is_better"):
        _ = Metric.COMPETITION.lower_is_better


def test_answers_kept_as_json_lines_are_graded_from_the_prepared_folder(
        tmp_path: Path) -> None:
    from test_mlebench_graders_text import questions

    # tensorflow2-question-answering: prepare.py leaves the answers as private/test.jsonl,
    # holding `annotations` rather than the submission's PredictionString.
    case = questions()
    root = tmp_path / "tensorflow2-question-answering"
    public, private = root / "prepared" / "public", root / "prepared" / "private"
    public.mkdir(parents=True)
    private.mkdir(parents=True)
    case.answers.to_json(private / "test.jsonl", orient="records", lines=True)
    for name in ("simplified-nq-train.jsonl", "simplified-nq-test.jsonl"):
        case.answers.head(1).to_json(public / name, orient="records", lines=True)
    case.submissions["sample"].to_csv(public / "sample_submission.csv", index=False)
    spec = load_task(root)
    assert (spec.train_file, spec.test_file) == ("simplified-nq-train.jsonl",
                                                 "simplified-nq-test.jsonl")
    perfect, noisy = tmp_path / "perfect.csv", tmp_path / "noisy.csv"
    case.submissions["perfect"].to_csv(perfect, index=False)
    case.submissions["noisy"].to_csv(noisy, index=False)
    assert grade(spec, perfect) == 1.0
    assert grade_report(spec, noisy).score == round(3 / 6, 5)
    (private / "test.jsonl").write_text("{not json\n")
    with pytest.raises(GradingError, match="as JSON lines"):
        grade(spec, perfect)


def test_a_scored_column_that_is_not_the_training_label_keeps_both(tmp_path: Path) -> None:
    # jigsaw-unintended-bias trains on train.csv's `target` and scores the submission's
    # `prediction` against the answers' `toxicity`.
    public = tmp_path / "jigsaw-unintended-bias-in-toxicity-classification" / "prepared" / "public"
    public.mkdir(parents=True)
    (public / "train.csv").write_text("id,comment_text,target\n1,hi,0.1\n")
    (public / "test.csv").write_text("id,comment_text\n2,yo\n")
    (public / "sample_submission.csv").write_text("id,prediction\n2,0.5\n")
    spec = load_task(public.parent.parent)
    assert (spec.target, spec.scored_columns) == ("target", ("prediction",))


@pytest.mark.parametrize("competition", ["hubmap-kidney-segmentation",
                                         "vinbigdata-chest-xray-abnormalities-detection"])
def test_answers_that_hold_other_columns_than_the_submission_grade_from_the_folder(
        tmp_path: Path, competition: str) -> None:
    # hubmap's answers hold `encoding` and image sizes, vinbigdata's one box per row; the
    # submission has `predicted` / `PredictionString` (the registry's answer_columns).
    import pandas as pd
    from test_mlebench_graders_detection import vinbig_answers, vinbig_submission
    from test_mlebench_graders_masks import _hubmap

    from mlmaster_daemon.tasks import mlebench_graders
    from mlmaster_daemon.tasks.grading import grade_like_mlebench
    from mlmaster_daemon.tasks.registry import lookup

    if competition.startswith("hubmap"):
        case = _hubmap()
        answers, submission = case.answers, case.submissions["noisy"]
    else:
        answers, submission = vinbig_answers(), vinbig_submission(0.9, 0.4)
    known = lookup(competition)
    assert known is not None and known.grader is not None
    root = tmp_path / competition
    (root / "prepared" / "public").mkdir(parents=True)
    (root / "prepared" / "private").mkdir(parents=True)
    answers.to_csv(root / "prepared" / "private" / (known.answers or "test.csv"), index=False)
    submission.to_csv(root / "prepared" / "public" / (known.sample or "sample_submission.csv"),
                      index=False)
    path = tmp_path / "submission.csv"
    submission.to_csv(path, index=False)
    spec = load_task(root)
    direct = mlebench_graders.grade(known.grader, pd.read_csv(path),
                                    pd.read_csv(root / "prepared" / "private"
                                                / (known.answers or "test.csv")),
                                    spec.id_column, known.targets, known.answer_columns)
    assert grade_like_mlebench(spec, path) == pytest.approx(direct, abs=1e-12)
    assert grade(spec, path) == pytest.approx(direct, abs=1e-12)
