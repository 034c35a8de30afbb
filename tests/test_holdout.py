"""The hidden holdout: planned from the train table, hidden in the nodes' view under fresh ids,
split back out of a submission and scored with the task's metric."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from mlmaster_daemon.tasks import holdout
from mlmaster_daemon.tasks.competition import load_task
from mlmaster_daemon.tasks.examples import build_example
from mlmaster_daemon.tasks.grading import grade
from mlmaster_daemon.tasks.holdout import HoldoutError, HoldoutPlan, Refusal
from mlmaster_daemon.tasks.spec import Metric, TaskSpec
from mlmaster_daemon.tasks.validation import validate_submission


def text(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def example(name: str, tmp_path: Path) -> TaskSpec:
    return load_task(build_example(name, tmp_path / name))


def planned(spec: TaskSpec, seed: int = 3, **options: object) -> HoldoutPlan:
    result = holdout.plan(spec, seed=seed, **options)  # type: ignore[arg-type]
    assert isinstance(result, HoldoutPlan), result
    return result


def view(spec: TaskSpec, tmp_path: Path, seed: int = 3,
         **options: object) -> tuple[HoldoutPlan, TaskSpec]:
    chosen = planned(spec, seed, **options)
    return chosen, holdout.build_view(spec, chosen, tmp_path / "view", tmp_path / "hidden")


def perfect(spec: TaskSpec, view_spec: TaskSpec, sample_columns: list[str]) -> pd.DataFrame:
    """A submission to the view whose every row is the answer, in the view's sample order."""
    assert spec.private_dir is not None and view_spec.private_dir is not None
    answers = pd.concat([text(spec.private_dir / "test.csv"),
                         text(view_spec.private_dir / holdout.ANSWERS_FILE)], ignore_index=True)
    by_id = answers.set_index(spec.id_column)
    ids = text(view_spec.public_dir / spec.sample_submission_file)[spec.id_column]
    rows = by_id.loc[ids.tolist()].reset_index()
    target = spec.target
    columns = [c for c in sample_columns if c != spec.id_column]
    if columns == list(spec.scored_columns):
        out = rows[[spec.id_column, *columns]]
        if spec.metric is Metric.ROC_AUC:
            positive = sorted(answers[target].unique())[-1]
            out = out.assign(**{target: (rows[target] == positive).map({True: "1.0",
                                                                         False: "0.0"})})
        return out
    # One probability column per class, named by the class.
    out = rows[[spec.id_column]].copy()
    for column in columns:
        out[column] = (rows[target] == column).map({True: "1.0", False: "0.0"})
    return out


def round_trip(spec: TaskSpec, tmp_path: Path, fraction: float = 0.1) -> tuple[TaskSpec, float]:
    """The holdout score of a perfect submission, after checking its real part is exactly the
    competition's: the original sample's ids in order."""
    _, view_spec = view(spec, tmp_path, fraction=fraction)
    columns = list(text(spec.public_dir / spec.sample_submission_file).columns)
    submission = tmp_path / "node" / "submission.csv"
    submission.parent.mkdir()
    perfect(spec, view_spec, columns).to_csv(submission, index=False)
    # The node's own check against the view's sample passes.
    assert validate_submission(view_spec, submission) is None
    real = tmp_path / "real.csv"
    rows = holdout.split_submission(view_spec, submission, real)
    original = text(spec.public_dir / spec.sample_submission_file)
    assert list(text(real).columns) == columns
    assert text(real)[spec.id_column].tolist() == original[spec.id_column].tolist()
    assert view_spec.private_dir is not None
    return view_spec, holdout.score_holdout(spec, rows, view_spec.private_dir)


def hand_made(tmp_path: Path, train: pd.DataFrame, test: pd.DataFrame, sample: pd.DataFrame,
              answers: pd.DataFrame, metric: Metric, target: str, *, id_column: str = "id",
              targets: tuple[str, ...] = (), lower: bool = False) -> TaskSpec:
    public, private = tmp_path / "comp" / "public", tmp_path / "comp" / "private"
    public.mkdir(parents=True)
    private.mkdir(parents=True)
    for frame, path in ((train, public / "train.csv"), (test, public / "test.csv"),
                        (sample, public / "sample_submission.csv"),
                        (answers, private / "test.csv")):
        frame.to_csv(path, index=False)
    (public / "description.md").write_text("# A hand-made competition\n", encoding="utf-8")
    return TaskSpec(name="comp", root=tmp_path / "comp", public_dir=public, private_dir=private,
                    description="", metric=metric, lower_is_better=lower, target=target,
                    id_column=id_column, targets=targets)


def labelled_frame(n: int, offset: int, seed: int, ids: list[str] | None = None) -> pd.DataFrame:
    import numpy as np

    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({"id": ids if ids is not None else range(offset, offset + n),
                          "x": rng.normal(size=n).round(4), "g": rng.integers(0, 40, n),
                          "label": rng.choice(["cat", "dog", "emu"], n, p=[0.6, 0.3, 0.1]),
                          "a": rng.random(n).round(3), "b": rng.random(n).round(3),
                          "tags": [" ".join(rng.choice(list("pqrst"), 2, replace=False))
                                   for _ in range(n)]})
    return frame


def tabular(tmp_path: Path, metric: Metric, scored: tuple[str, ...], *,
            ids: tuple[list[str], list[str]] | None = None, per_class: bool = False) -> TaskSpec:
    train = labelled_frame(400, 0, 1, ids[0] if ids else None)
    full_test = labelled_frame(120, 400, 2, ids[1] if ids else None)
    features = ["id", "x", "g"]
    test = full_test[features]
    if per_class:
        sample = test[["id"]].assign(cat="0.6", dog="0.3", emu="0.1")
    else:
        sample = test[["id"]].assign(**{c: full_test[c].iloc[0] for c in scored})
    target = scored[0]
    return hand_made(tmp_path, train, test, sample, full_test[["id", *scored]], metric, target,
                     targets=scored if len(scored) > 1 else (),
                     lower=metric in (Metric.LOG_LOSS, Metric.RMSE))


def test_stratified_split_keeps_every_class_ratio_within_a_row(tmp_path: Path) -> None:
    for name, fraction in (("breast_cancer", 0.1), ("wine", 0.25)):
        spec = example(name, tmp_path)
        labels = text(spec.public_dir / spec.train_file)[spec.target]
        chosen = planned(spec, fraction=fraction)
        held = Counter(labels.iloc[list(chosen.rows)])
        for label, count in Counter(labels).items():
            assert abs(held[label] - count * len(chosen.rows) / len(labels)) < 1, (name, label)


def test_same_seed_gives_same_plan_and_byte_identical_view(tmp_path: Path) -> None:
    spec = example("breast_cancer", tmp_path)
    first, second = planned(spec, seed=7), planned(spec, seed=7)
    assert first == second and HoldoutPlan.from_json(first.to_json()) == first
    assert planned(spec, seed=8) != first
    built = []
    for run in ("a", "b"):
        view_spec = holdout.build_view(spec, first, tmp_path / run / "view",
                                       tmp_path / run / "hidden")
        built.append({p.relative_to(tmp_path / run): p.read_bytes()
                      for p in sorted((tmp_path / run).rglob("*")) if p.is_file()})
        assert view_spec.public_dir == tmp_path / run / "view"
    again = holdout.build_view(spec, first, tmp_path / "a" / "view", tmp_path / "a" / "hidden")
    assert again.public_dir == tmp_path / "a" / "view"
    assert built[0] == built[1]
    assert built[0] == {p.relative_to(tmp_path / "a"): p.read_bytes()
                        for p in sorted((tmp_path / "a").rglob("*")) if p.is_file()}


def test_grouped_split_keeps_every_group_on_one_side(tmp_path: Path) -> None:
    spec = tabular(tmp_path, Metric.ACCURACY, ("label",))
    chosen = planned(spec, group_column="g")
    train = text(spec.public_dir / "train.csv")
    held_groups = set(train["g"].iloc[list(chosen.rows)])
    kept_groups = set(train["g"].drop(index=list(chosen.rows)))
    assert held_groups and not held_groups & kept_groups
    assert len(chosen.rows) >= 40


def test_view_shows_no_holdout_row_or_label(tmp_path: Path) -> None:
    spec = example("breast_cancer", tmp_path)
    chosen, view_spec = view(spec, tmp_path)
    original = text(spec.public_dir / spec.train_file)
    held = original.iloc[list(chosen.rows)]
    view_train = text(view_spec.public_dir / spec.train_file)
    assert len(view_train) == len(original) - len(held)
    feature_columns = [c for c in original.columns if c not in (spec.id_column, spec.target)]
    held_rows = {tuple(r) for r in held[feature_columns].itertuples(index=False)}
    assert not held_rows & {tuple(r) for r in view_train[feature_columns].itertuples(index=False)}
    view_test = text(view_spec.public_dir / spec.test_file)
    assert spec.target not in view_test.columns
    assert held_rows <= {tuple(r) for r in view_test[feature_columns].itertuples(index=False)}
    # The sample's rows for fresh ids hold the sample's own values, not answers.
    sample = text(view_spec.public_dir / spec.sample_submission_file)
    assert set(sample[spec.target]) == set(text(spec.public_dir /
                                                spec.sample_submission_file)[spec.target])
    assert view_spec.private_dir is not None
    answers = text(view_spec.private_dir / holdout.ANSWERS_FILE)
    every_file = b"".join(p.read_bytes() for p in view_spec.public_dir.rglob("*") if p.is_file())
    for ident, label in answers.itertuples(index=False):
        assert f"\n{ident},{label}\n".encode() not in every_file
    assert sorted(p.name for p in view_spec.public_dir.iterdir()) == sorted(
        p.name for p in spec.public_dir.iterdir())
    assert (view_spec.public_dir / "description.md").read_bytes() == (
        spec.public_dir / "description.md").read_bytes()


def test_fresh_integer_ids_fill_the_real_range_and_collide_with_none(tmp_path: Path) -> None:
    spec = example("breast_cancer", tmp_path)
    _, view_spec = view(spec, tmp_path)
    assert view_spec.private_dir is not None
    fresh = text(view_spec.private_dir / holdout.ANSWERS_FILE)[spec.id_column]
    visible = set(text(view_spec.public_dir / spec.train_file)[spec.id_column]) | set(
        text(spec.public_dir / spec.test_file)[spec.id_column])
    real = [int(i) for i in text(spec.public_dir / spec.test_file)[spec.id_column]]
    assert not set(fresh) & visible and len(set(fresh)) == len(fresh)
    assert all(min(real) <= int(i) <= max(real) + len(fresh) for i in fresh)
    # Sorted test ids stay sorted, so the fresh rows sit among the real ones.
    view_ids = [int(i) for i in text(view_spec.public_dir / spec.test_file)[spec.id_column]]
    assert view_ids == sorted(view_ids)
    positions = [view_ids.index(int(i)) for i in fresh]
    assert min(positions) < len(view_ids) // 4 and max(positions) > 3 * len(view_ids) // 4


def test_fresh_text_ids_have_the_real_ids_length_and_characters(tmp_path: Path) -> None:
    import random

    rng = random.Random(0)

    def make(n: int) -> list[str]:
        return [f"ID_{rng.getrandbits(32):08x}" for _ in range(n)]

    spec = tabular(tmp_path, Metric.ACCURACY, ("label",), ids=(make(400), make(120)))
    _, view_spec = view(spec, tmp_path)
    assert view_spec.private_dir is not None
    fresh = text(view_spec.private_dir / holdout.ANSWERS_FILE)["id"].tolist()
    real = text(spec.public_dir / "test.csv")["id"].tolist()
    taken = set(real) | set(text(spec.public_dir / "train.csv")["id"])
    assert all(len(i) == 11 and i.startswith("ID_") for i in fresh)
    assert all(c in "0123456789abcdef" for i in fresh for c in i[3:])
    assert not set(fresh) & taken
    # Unsorted test ids: the rows are shuffled, fresh ones not gathered at either end.
    order = text(view_spec.public_dir / "test.csv")["id"].tolist()
    positions = sorted(order.index(i) for i in fresh)
    assert positions[0] < len(order) // 4 and positions[-1] > 3 * len(order) // 4


@pytest.mark.parametrize("name", ["breast_cancer", "diabetes"])
def test_perfect_submission_round_trips_on_an_example(name: str, tmp_path: Path) -> None:
    spec = example(name, tmp_path)
    _, best = round_trip(spec, tmp_path)
    assert best == pytest.approx(0.0 if spec.lower_is_better else 1.0, abs=1e-9)
    # The real part is what the competition grades, and it is perfect too.
    assert grade(spec, tmp_path / "real.csv") == pytest.approx(best, abs=1e-9)


def test_perfect_submission_round_trips_with_a_probability_per_class(tmp_path: Path) -> None:
    spec = example("wine", tmp_path)
    _, best = round_trip(spec, tmp_path, fraction=0.25)
    assert best == pytest.approx(0.0, abs=1e-9)
    assert grade(spec, tmp_path / "real.csv") == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize(("metric", "scored", "per_class", "best"), [
    (Metric.ACCURACY, ("label",), False, 1.0),
    (Metric.F1_MACRO, ("label",), False, 1.0),
    (Metric.LOG_LOSS, ("label",), True, 0.0),
    (Metric.RMSE, ("a", "b"), False, 0.0),
    (Metric.MAP_AT_K, ("tags",), False, 1.0),
])
def test_perfect_submission_round_trips_for_every_kind(
        metric: Metric, scored: tuple[str, ...], per_class: bool, best: float,
        tmp_path: Path) -> None:
    spec = tabular(tmp_path, metric, scored, per_class=per_class)
    _, score = round_trip(spec, tmp_path)
    assert score == pytest.approx(best, abs=1e-9)
    assert grade(spec, tmp_path / "real.csv") == pytest.approx(best, abs=1e-9)


def test_real_part_is_written_as_the_node_wrote_it(tmp_path: Path) -> None:
    spec = tabular(tmp_path, Metric.RMSE, ("a", "b"))
    _, view_spec = view(spec, tmp_path)
    sample = text(view_spec.public_dir / "sample_submission.csv")
    submission = tmp_path / "sub.csv"
    sample[["b", "id", "a"]].assign(a="0.1000000000000000055511151231257827").to_csv(
        submission, index=False)
    holdout.split_submission(view_spec, submission, tmp_path / "real.csv")
    real = text(tmp_path / "real.csv")
    assert list(real.columns) == ["id", "a", "b"]
    assert set(real["a"]) == {"0.1000000000000000055511151231257827"}


@pytest.mark.parametrize(("change", "words"), [
    (lambda s: s.iloc[1:], "have no row"),
    (lambda s: pd.concat([s, s.iloc[:1]]), "repeats ids"),
    (lambda s: s.assign(id=s["id"].where(s.index != 0, "99999999")), "not in the test table"),
    (lambda s: s.assign(extra="1"), "columns"),
    (lambda s: s.drop(columns=["label"]), "columns"),
])
def test_a_submission_that_cannot_be_split_is_refused_in_words(
        change: object, words: str, tmp_path: Path) -> None:
    spec = tabular(tmp_path, Metric.ACCURACY, ("label",))
    _, view_spec = view(spec, tmp_path)
    sample = text(view_spec.public_dir / "sample_submission.csv")
    submission = tmp_path / "sub.csv"
    change(sample).to_csv(submission, index=False)  # type: ignore[operator]
    with pytest.raises(HoldoutError, match=words):
        holdout.split_submission(view_spec, submission, tmp_path / "real.csv")
    assert not (tmp_path / "real.csv").exists()


def test_refusals_say_why(tmp_path: Path) -> None:
    spec = example("breast_cancer", tmp_path)
    competition = holdout.plan(TaskSpec(**{**spec.__dict__, "metric": Metric.COMPETITION}),
                               seed=0)
    assert isinstance(competition, Refusal) and "grader" in competition.reason
    parquet = holdout.plan(TaskSpec(**{**spec.__dict__, "train_file": "train.parquet"}), seed=0)
    assert isinstance(parquet, Refusal) and "not a CSV" in parquet.reason
    no_target = holdout.plan(TaskSpec(**{**spec.__dict__, "target": "nope"}), seed=0)
    assert isinstance(no_target, Refusal) and "'nope'" in no_target.reason
    few = holdout.plan(example("wine", tmp_path), seed=0)
    assert isinstance(few, Refusal) and "too few" in few.reason
    no_group = holdout.plan(spec, seed=0, group_column="nope")
    assert isinstance(no_group, Refusal) and "group column" in no_group.reason
    # A sample kept beside the hidden answers: the view could not hold it.
    beside = holdout.plan(TaskSpec(**{**spec.__dict__,
                                      "sample_submission_file": "../private/sample.csv"}),
                          seed=0)
    assert isinstance(beside, Refusal) and "outside the public folder" in beside.reason


def test_a_link_in_the_public_folder_is_refused(tmp_path: Path) -> None:
    spec = tabular(tmp_path, Metric.ACCURACY, ("label",))
    (tmp_path / "secret.txt").write_text("answers", encoding="utf-8")
    os.symlink(tmp_path / "secret.txt", spec.public_dir / "notes.txt")
    with pytest.raises(HoldoutError, match="link"):
        view(spec, tmp_path)


def test_a_linked_submission_is_refused(tmp_path: Path) -> None:
    spec = tabular(tmp_path, Metric.ACCURACY, ("label",))
    _, view_spec = view(spec, tmp_path)
    os.symlink(view_spec.public_dir / "sample_submission.csv", tmp_path / "sub.csv")
    with pytest.raises(HoldoutError, match="safely"):
        holdout.split_submission(view_spec, tmp_path / "sub.csv", tmp_path / "real.csv")


def test_huge_integer_ids_get_fresh_ids_in_their_range(tmp_path: Path) -> None:
    base = 10**30
    ids = ([str(base + 7 * i) for i in range(400)], [str(base + 7 * i + 3) for i in range(120)])
    spec = tabular(tmp_path, Metric.ACCURACY, ("label",), ids=ids)
    _, score = round_trip(spec, tmp_path)
    assert score == 1.0
    fresh = text(tmp_path / "hidden" / holdout.ANSWERS_FILE)["id"]
    assert all(base <= int(i) <= base + 7 * 400 for i in fresh)
    assert not set(fresh) & (set(ids[0]) | set(ids[1]))


def test_an_overlong_id_is_refused(tmp_path: Path) -> None:
    long_ids = ([f"r{i}" for i in range(400)], ["x" * 10_000] + [f"t{i}" for i in range(119)])
    spec = tabular(tmp_path, Metric.ACCURACY, ("label",), ids=long_ids)
    with pytest.raises(HoldoutError, match="characters"):
        view(spec, tmp_path)


def test_a_resumed_task_reads_back_the_same_plan(tmp_path: Path) -> None:
    spec = example("diabetes", tmp_path)
    chosen, view_spec = view(spec, tmp_path)
    assert view_spec.private_dir is not None
    assert holdout.load_plan(view_spec.private_dir) == chosen
    assert holdout.load_plan(tmp_path) is None


def test_fresh_text_ids_never_equal_a_taken_id_once_normalised(tmp_path: Path) -> None:
    import random

    from mlmaster_daemon.tasks.holdout_ids import fresh_ids

    real = [f"{n:03d}" for n in range(0, 1000, 2)]
    # Only "010" is free as text, but it is the taken id 10 once normalised.
    taken = (set(real) - {"010"}) | {"10"}
    with pytest.raises(HoldoutError, match="too few"):
        fresh_ids(real, taken, 1, random.Random(0))


def test_regression_split_is_seeded_random(tmp_path: Path) -> None:
    spec = example("diabetes", tmp_path)
    chosen = planned(spec, seed=1)
    train = text(spec.public_dir / spec.train_file)
    assert len(chosen.rows) == round(0.1 * len(train))
    assert chosen != planned(spec, seed=2)


def test_real_part_takes_the_sample_s_id_text(tmp_path: Path) -> None:
    spec = example("breast_cancer", tmp_path)
    _, view_spec = view(spec, tmp_path)
    sample = text(view_spec.public_dir / spec.sample_submission_file)
    submission = tmp_path / "sub.csv"
    sample.assign(id=sample["id"] + ".0").to_csv(submission, index=False)
    holdout.split_submission(view_spec, submission, tmp_path / "real.csv")
    assert (tmp_path / "real.csv").read_bytes() == (
        spec.public_dir / spec.sample_submission_file).read_bytes()


def test_other_public_files_and_folders_are_hard_linked_into_the_view(tmp_path: Path) -> None:
    spec = tabular(tmp_path, Metric.ACCURACY, ("label",))
    (spec.public_dir / "images").mkdir()
    (spec.public_dir / "images" / "a.png").write_bytes(b"\x89PNG")
    _, view_spec = view(spec, tmp_path)
    linked = view_spec.public_dir / "images" / "a.png"
    assert linked.read_bytes() == b"\x89PNG"
    assert linked.stat().st_ino == (spec.public_dir / "images" / "a.png").stat().st_ino


def test_an_oversized_submission_is_refused_unread(tmp_path: Path) -> None:
    spec = tabular(tmp_path, Metric.ACCURACY, ("label",))
    _, view_spec = view(spec, tmp_path)
    submission = view_spec.public_dir / "sample_submission.csv"
    with pytest.raises(HoldoutError, match="safely"):
        holdout.split_submission(view_spec, submission, tmp_path / "real.csv", max_bytes=100)


def test_a_view_folder_that_is_a_link_is_refused(tmp_path: Path) -> None:
    spec = tabular(tmp_path, Metric.ACCURACY, ("label",))
    (tmp_path / "elsewhere").mkdir()
    os.symlink(tmp_path / "elsewhere", tmp_path / "view")
    with pytest.raises(HoldoutError, match="link"):
        view(spec, tmp_path)
