"""Top-k ensembling: the best nodes' submissions combined by mean, rank mean or vote, matched
by id, scored on the hidden holdout, and refused in words when they cannot be combined."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mlmaster_daemon.tasks import holdout
from mlmaster_daemon.tasks.competition import load_task
from mlmaster_daemon.tasks.ensemble import (
    Ensemble,
    Member,
    NoEnsemble,
    beats,
    combine,
    write_submission,
)
from mlmaster_daemon.tasks.examples import build_example
from mlmaster_daemon.tasks.holdout import HoldoutPlan
from mlmaster_daemon.tasks.spec import Metric, TaskSpec
from mlmaster_daemon.tasks.validation import validate_submission


def text(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def viewed(name: str, tmp_path: Path, fraction: float = 0.1) -> tuple[TaskSpec, TaskSpec]:
    """An example task and the holdout view its nodes would see."""
    spec = load_task(build_example(name, tmp_path / name))
    chosen = holdout.plan(spec, seed=5, fraction=fraction)
    assert isinstance(chosen, HoldoutPlan), chosen
    return spec, holdout.build_view(spec, chosen, tmp_path / "view", tmp_path / "hidden")


def truth(spec: TaskSpec, view_spec: TaskSpec) -> pd.DataFrame:
    """Every answer (real test and holdout) in the view's sample order, as text."""
    assert spec.private_dir is not None and view_spec.private_dir is not None
    answers = pd.concat([text(spec.private_dir / spec.test_file),
                         text(view_spec.private_dir / holdout.ANSWERS_FILE)], ignore_index=True)
    ids = text(view_spec.public_dir / spec.sample_submission_file)[spec.id_column]
    return answers.set_index(spec.id_column).loc[ids.tolist()].reset_index()


def member(spec: TaskSpec, view_spec: TaskSpec, node_id: int, submission: pd.DataFrame,
           tmp_path: Path) -> Member:
    """A node's submission to the view, split and scored as the daemon would."""
    assert view_spec.private_dir is not None
    folder = tmp_path / f"node{node_id}"
    folder.mkdir()
    submission.to_csv(folder / "submission.csv", index=False)
    rows = holdout.split_submission(view_spec, folder / "submission.csv", folder / "real.csv")
    rows.to_csv(folder / "holdout.csv", index=False)
    return Member(node_id, holdout.score_holdout(spec, rows, view_spec.private_dir),
                  folder, "real.csv", folder, "holdout.csv")


def ensembled(result: Ensemble | NoEnsemble) -> Ensemble:
    assert isinstance(result, Ensemble), result
    return result


def refused(result: Ensemble | NoEnsemble) -> str:
    assert isinstance(result, NoEnsemble), result
    return result.reason


def noisy_regression(tmp_path: Path) -> tuple[TaskSpec, TaskSpec, list[Member]]:
    """Three nodes on diabetes: the answers plus independent noise each."""
    spec, view_spec = viewed("diabetes", tmp_path)
    answers = truth(spec, view_spec)
    exact = answers[spec.target].astype(float).to_numpy()
    members = []
    for node_id, seed in ((4, 1), (7, 2), (9, 3)):
        noise = np.random.default_rng(seed).normal(0.0, 40.0, len(exact))
        frame = pd.DataFrame({spec.id_column: answers[spec.id_column],
                              spec.target: [repr(float(v)) for v in exact + noise]})
        members.append(member(spec, view_spec, node_id, frame, tmp_path))
    return spec, view_spec, members


def test_regression_members_are_averaged_and_beat_each_member(tmp_path: Path) -> None:
    spec, view_spec, members = noisy_regression(tmp_path)
    assert view_spec.private_dir is not None
    result = ensembled(combine(spec, members, view_spec.private_dir))
    assert result.method == "mean"
    best_first = sorted(members, key=lambda m: m.holdout_metric)
    assert result.members == tuple(m.node_id for m in best_first)
    # The ensemble's score is the score of the holdout rows averaged by hand.
    parts = [text(m.holdout_root / m.holdout_file) for m in members]
    by_hand = parts[0][[spec.id_column]].assign(**{spec.target: np.mean(
        [p[spec.target].astype(float).to_numpy() for p in parts], axis=0)})
    expected = holdout.score_holdout(spec, by_hand, view_spec.private_dir)
    assert result.holdout_metric == pytest.approx(expected, abs=1e-9)
    # Averaging independent noise beats the average member, and here the best one too.
    assert result.holdout_metric < np.mean([m.holdout_metric for m in members])
    assert beats(result.holdout_metric, best_first[0].holdout_metric, lower_is_better=True)


def test_the_real_part_keeps_the_best_member_s_rows_and_passes_validation(
        tmp_path: Path) -> None:
    spec, view_spec, members = noisy_regression(tmp_path)
    assert view_spec.private_dir is not None
    result = ensembled(combine(spec, members, view_spec.private_dir))
    best = min(members, key=lambda m: m.holdout_metric)
    first = text(best.real_root / best.real_file)
    assert list(result.real.columns) == list(first.columns)
    assert result.real[spec.id_column].tolist() == first[spec.id_column].tolist()
    reals = [text(m.real_root / m.real_file)[spec.target].astype(float) for m in members]
    assert result.real[spec.target].astype(float).to_numpy() == pytest.approx(
        np.mean(reals, axis=0), abs=1e-12)
    write_submission(result.real, tmp_path / "ensemble.csv")
    assert validate_submission(spec, tmp_path / "ensemble.csv") is None


def test_members_are_matched_by_id_whatever_their_order_and_id_text(tmp_path: Path) -> None:
    spec, view_spec, members = noisy_regression(tmp_path)
    assert view_spec.private_dir is not None
    before = ensembled(combine(spec, members, view_spec.private_dir))
    # One member's files rewritten shuffled, with ids as a float column writes them.
    last = members[-1]
    for root, name in ((last.real_root, last.real_file), (last.holdout_root, last.holdout_file)):
        frame = text(root / name).sample(frac=1.0, random_state=0)
        frame[spec.id_column] = frame[spec.id_column] + ".0"
        frame.to_csv(root / name, index=False)
    after = ensembled(combine(spec, members, view_spec.private_dir))
    assert after.holdout_metric == pytest.approx(before.holdout_metric, abs=1e-12)
    pd.testing.assert_frame_equal(after.real, before.real)


def test_roc_auc_members_are_rank_averaged_on_an_example(tmp_path: Path) -> None:
    spec, view_spec = viewed("breast_cancer", tmp_path)
    assert view_spec.private_dir is not None
    answers = truth(spec, view_spec)
    positive = answers[spec.target].astype(int).to_numpy()
    members = []
    for node_id, seed in ((1, 11), (2, 12), (3, 13)):
        noise = np.random.default_rng(seed).normal(0.0, 0.35, len(positive))
        frame = pd.DataFrame({spec.id_column: answers[spec.id_column], spec.target: [
            repr(float(v)) for v in np.clip(0.3 + 0.4 * positive + noise, 0.0, 1.0)]})
        members.append(member(spec, view_spec, node_id, frame, tmp_path))
    result = ensembled(combine(spec, members, view_spec.private_dir))
    assert result.method == "rank-mean"
    assert result.holdout_metric > np.mean([m.holdout_metric for m in members])
    ranks = result.real[spec.target].astype(float)
    assert ranks.between(0.0, 1.0, inclusive="right").all()
    write_submission(result.real, tmp_path / "ensemble.csv")
    assert validate_submission(spec, tmp_path / "ensemble.csv") is None


def tiny(tmp_path: Path, metric: Metric, answers: list[str], *,
         lower: bool = False) -> TaskSpec:
    """A task whose holdout answers are `answers` for ids h0, h1, ... (no view is needed to
    score holdout rows, only the answers in the private folder)."""
    private = tmp_path / "hidden"
    private.mkdir()
    pd.DataFrame({"id": [f"h{i}" for i in range(len(answers))], "y": answers}).to_csv(
        private / holdout.ANSWERS_FILE, index=False)
    return TaskSpec(name="tiny", root=tmp_path, public_dir=tmp_path, private_dir=private,
                    description="", metric=metric, lower_is_better=lower, target="y",
                    id_column="id")


def written(tmp_path: Path, node_id: int, metric: float, real: list[str],
            held: list[str]) -> Member:
    """A member whose files hold `real` for ids r0, r1, ... and `held` for h0, h1, ..."""
    folder = tmp_path / f"node{node_id}"
    folder.mkdir()
    pd.DataFrame({"id": [f"r{i}" for i in range(len(real))], "y": real}).to_csv(
        folder / "real.csv", index=False)
    pd.DataFrame({"id": [f"h{i}" for i in range(len(held))], "y": held}).to_csv(
        folder / "holdout.csv", index=False)
    return Member(node_id, metric, folder, "real.csv", folder, "holdout.csv")


def test_rank_mean_averages_normalised_ranks_in_each_part(tmp_path: Path) -> None:
    spec = tiny(tmp_path, Metric.ROC_AUC, ["0", "0", "1", "1"])
    members = [written(tmp_path, 1, 0.75, ["0.2", "0.6", "0.9"], ["0.1", "0.4", "0.4", "0.9"]),
               written(tmp_path, 2, 0.5, ["0.9", "0.1", "0.5"], ["0.3", "0.2", "0.8", "0.5"])]
    result = ensembled(combine(spec, members, tmp_path / "hidden"))
    # Real ranks (1, 2, 3) / 3 and (3, 1, 2) / 3, averaged.
    assert result.real["y"].astype(float).tolist() == pytest.approx([2 / 3, 1 / 2, 5 / 6],
                                                                     abs=1e-15)
    assert result.real["id"].tolist() == ["r0", "r1", "r2"]
    # Holdout ranks (1, 2.5, 2.5, 4) / 4 and (2, 1, 4, 3) / 4 average to
    # (0.375, 0.4375, 0.8125, 0.875): the positives on top.
    assert result.holdout_metric == 1.0


def test_ranks_not_probabilities_decide_the_order(tmp_path: Path) -> None:
    spec = tiny(tmp_path, Metric.ROC_AUC, ["0", "0", "1"])
    members = [written(tmp_path, 1, 0.9, ["0.5"], ["0.0", "0.1", "0.11"]),
               written(tmp_path, 2, 0.8, ["0.5"], ["0.5", "0.99", "0.6"])]
    result = ensembled(combine(spec, members, tmp_path / "hidden"))
    # Mean ranks (1, 2.5, 2.5) tie h1 with the positive h2: AUC 0.75. The mean of the
    # probabilities (0.25, 0.545, 0.355) would put h1 above it: AUC 0.5.
    assert result.holdout_metric == 0.75
    assert result.real["y"].tolist() == ["1.0"]


def test_labels_are_voted_with_ties_to_the_best_member(tmp_path: Path) -> None:
    voted = ["dog", "cat", "dog", "emu"]
    spec = tiny(tmp_path, Metric.ACCURACY, voted)
    cells = {5: ["cat", "cat", "cat", "emu"], 2: ["dog", "dog", "dog", "cat"],
             8: ["dog", "emu", "dog", "dog"], 3: ["emu", "cat", "dog", "cat"],
             6: ["emu", "dog", "emu", "emu"]}
    scores = {5: 0.9, 2: 0.7, 8: 0.6, 3: 0.5, 6: 0.5}
    # Handed over in any order; best holdout first, the tied 3 and 6 by node id.
    members = [written(tmp_path, n, scores[n], cells[n], cells[n]) for n in (8, 5, 3, 2, 6)]
    result = ensembled(combine(spec, members, tmp_path / "hidden"))
    assert result.members == (5, 2, 8, 3, 6)
    assert result.method == "vote"
    # Row 0: dog 2, emu 2 -> dog, node 2's, the best member among the tied (node 5 wrote
    # cat). Row 1: cat 2, dog 2 -> cat, node 5's. Row 2: dog 3. Row 3: emu 2, cat 2 -> emu.
    assert result.real["y"].tolist() == voted
    assert result.holdout_metric == 1.0


def test_numeric_labels_are_one_label_whatever_their_text(tmp_path: Path) -> None:
    spec = tiny(tmp_path, Metric.QWK, ["1", "2", "3"])
    members = [written(tmp_path, 1, 0.9, ["3"], ["1", "2", "3"]),
               written(tmp_path, 2, 0.8, ["2.0"], ["1", "2.0", "3"]),
               written(tmp_path, 3, 0.7, ["2"], ["3", "3", "1"])]
    result = ensembled(combine(spec, members, tmp_path / "hidden"))
    assert result.method == "vote"
    # "2.0" and "2" are one label with two votes, written as its first member wrote it.
    assert result.real["y"].tolist() == ["2.0"]
    assert result.holdout_metric == 1.0


def test_class_probabilities_are_averaged_and_still_sum_to_one(tmp_path: Path) -> None:
    spec, view_spec = viewed("wine", tmp_path, fraction=0.25)
    assert view_spec.private_dir is not None
    answers = truth(spec, view_spec)
    classes = [c for c in text(spec.public_dir / spec.sample_submission_file).columns
               if c != spec.id_column]
    one_hot = np.column_stack([(answers[spec.target] == c).to_numpy(float) for c in classes])
    members = []
    for node_id in (1, 2, 3):
        rng = np.random.default_rng(node_id)
        weights = 2.0 * one_hot + rng.random(one_hot.shape)
        probabilities = weights / weights.sum(axis=1, keepdims=True)
        frame = pd.DataFrame({spec.id_column: answers[spec.id_column], **{
            c: [repr(float(v)) for v in probabilities[:, i]] for i, c in enumerate(classes)}})
        members.append(member(spec, view_spec, node_id, frame, tmp_path))
    result = ensembled(combine(spec, members, view_spec.private_dir))
    assert result.method == "mean"
    sums = result.real[classes].astype(float).sum(axis=1)
    assert np.allclose(sums, 1.0, rtol=0.0, atol=1e-12)
    assert result.holdout_metric < np.mean([m.holdout_metric for m in members])
    write_submission(result.real, tmp_path / "ensemble.csv")
    assert validate_submission(spec, tmp_path / "ensemble.csv") is None


def test_a_column_with_labels_among_its_numbers_is_voted(tmp_path: Path) -> None:
    spec = tiny(tmp_path, Metric.RMSE, ["1", "2"], lower=True)
    members = [written(tmp_path, 1, 0.5, ["high"], ["1", "2"]),
               written(tmp_path, 2, 0.6, ["3.5"], ["2", "3"]),
               written(tmp_path, 3, 0.7, ["3.5"], ["3", "4"])]
    result = ensembled(combine(spec, members, tmp_path / "hidden"))
    assert result.real["y"].tolist() == ["3.5"]
    # The holdout part is all numbers, so it is averaged: (2, 3) against (1, 2).
    assert result.holdout_metric == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("metrics", [[0.5], [0.5, float("nan")], []])
def test_fewer_than_two_scored_members_make_no_ensemble(metrics: list[float],
                                                        tmp_path: Path) -> None:
    spec = tiny(tmp_path, Metric.RMSE, ["1"], lower=True)
    members = [written(tmp_path, i, m, ["1"], ["1"]) for i, m in enumerate(metrics)]
    assert refused(combine(spec, members, tmp_path / "hidden")) == (
        "fewer than 2 working nodes have a holdout score")


@pytest.mark.parametrize(("metric", "words"), [(Metric.MAP_AT_K, "map@k"),
                                               (Metric.COMPETITION, "grader")])
def test_metrics_whose_predictions_cannot_be_combined_make_no_ensemble(
        metric: Metric, words: str, tmp_path: Path) -> None:
    spec = tiny(tmp_path, metric, ["a b"])
    members = [written(tmp_path, i, 0.5, ["a b"], ["a b"]) for i in (1, 2)]
    reason = refused(combine(spec, members, tmp_path / "hidden"))
    assert words in reason and "no ensemble" in reason


def test_a_member_with_other_ids_is_refused_by_name(tmp_path: Path) -> None:
    spec = tiny(tmp_path, Metric.RMSE, ["1", "2"], lower=True)
    good = written(tmp_path, 1, 0.5, ["1", "2"], ["1", "2"])
    short = written(tmp_path, 2, 0.6, ["1"], ["1", "2"])
    reason = refused(combine(spec, [good, short], tmp_path / "hidden"))
    assert reason == "node 2's real test ids are not node 1's"


def test_a_member_with_other_columns_is_refused_by_name(tmp_path: Path) -> None:
    spec = tiny(tmp_path, Metric.RMSE, ["1", "2"], lower=True)
    good = written(tmp_path, 1, 0.5, ["1"], ["1", "2"])
    other = written(tmp_path, 2, 0.6, ["1"], ["1", "2"])
    text(other.holdout_root / other.holdout_file).rename(columns={"y": "z"}).to_csv(
        other.holdout_root / other.holdout_file, index=False)
    reason = refused(combine(spec, [good, other], tmp_path / "hidden"))
    assert reason.startswith("node 2's holdout columns ['id', 'z'] are not node 1's")


def test_a_linked_member_file_is_refused_by_name(tmp_path: Path) -> None:
    spec = tiny(tmp_path, Metric.RMSE, ["1", "2"], lower=True)
    good = written(tmp_path, 1, 0.5, ["1"], ["1", "2"])
    linked = written(tmp_path, 2, 0.6, ["1"], ["1", "2"])
    target = linked.real_root / linked.real_file
    target.rename(tmp_path / "elsewhere.csv")
    os.symlink(tmp_path / "elsewhere.csv", target)
    reason = refused(combine(spec, [good, linked], tmp_path / "hidden"))
    assert reason.startswith("node 2's submission cannot be used:") and "safely" in reason


def test_a_missing_member_file_is_refused_by_name(tmp_path: Path) -> None:
    spec = tiny(tmp_path, Metric.RMSE, ["1", "2"], lower=True)
    good = written(tmp_path, 1, 0.5, ["1"], ["1", "2"])
    gone = written(tmp_path, 2, 0.6, ["1"], ["1", "2"])
    (gone.holdout_root / gone.holdout_file).unlink()
    reason = refused(combine(spec, [good, gone], tmp_path / "hidden"))
    assert reason.startswith("node 2's submission cannot be used:")


def test_beats_is_strict_in_either_direction() -> None:
    assert not beats(0.5, 0.5, lower_is_better=True)
    assert not beats(0.5, 0.5, lower_is_better=False)
    assert beats(0.4, 0.5, lower_is_better=True) and not beats(0.6, 0.5, lower_is_better=True)
    assert beats(0.6, 0.5, lower_is_better=False) and not beats(0.4, 0.5, lower_is_better=False)
    assert not beats(float("nan"), 0.5, lower_is_better=True)
    assert not beats(float("-inf"), 0.5, lower_is_better=True)


def test_write_submission_writes_exact_bytes_and_replaces_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "out" / "submission.csv"
    path.parent.mkdir()
    path.write_text("old\n", encoding="utf-8")
    write_submission(pd.DataFrame({"id": ["1", "2"], "y": ["0.1", "0.30000000000000004"]}),
                     path)
    assert path.read_bytes() == b"id,y\n1,0.1\n2,0.30000000000000004\n"
    assert [p.name for p in path.parent.iterdir()] == ["submission.csv"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    class Unwritable:
        def __str__(self) -> str:
            raise ValueError("no text")

    path = tmp_path / "submission.csv"
    path.write_text("id,y\n1,0.5\n", encoding="utf-8")
    with pytest.raises(ValueError, match="no text"):
        write_submission(pd.DataFrame({"id": [Unwritable()]}), path)
    assert path.read_text(encoding="utf-8") == "id,y\n1,0.5\n"
    assert [p.name for p in tmp_path.iterdir()] == ["submission.csv"]


def test_a_column_the_metric_does_not_read_is_carried_from_the_best_member(
        tmp_path: Path) -> None:
    spec = tiny(tmp_path, Metric.ROC_AUC, ["0", "1"])
    members = [written(tmp_path, 1, 0.9, ["0.2", "0.7"], ["0.1", "0.9"]),
               written(tmp_path, 2, 0.8, ["0.4", "0.3"], ["0.2", "0.8"])]
    for number, m in enumerate(members):
        path = m.real_root / m.real_file
        text(path).assign(date=[f"2012{number}1", f"2012{number}2"]).to_csv(path, index=False)
    result = ensembled(combine(spec, members, tmp_path / "hidden"))
    assert result.real["date"].tolist() == ["201201", "201202"]
    assert result.real["y"].astype(float).tolist() == pytest.approx([0.75, 0.75], abs=1e-15)


def test_a_score_equal_up_to_float_rounding_does_not_beat() -> None:
    # Seen in a demo: a rank-mean AUC of 0.990741 "better" than a node's 0.990741.
    assert not beats(0.9907407407407408, 0.9907407407407407, lower_is_better=False)
    assert beats(0.9907407407407408 + 1e-9, 0.9907407407407407, lower_is_better=False)
