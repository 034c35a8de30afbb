"""The search-quality benchmark's parts: its competitions are folders the daemon loads and
grades, with the test answers only in private/; the LightGBM baseline's submission is graded
by the daemon's own grader; ratios and the summary count read the metric's direction. How good
each contestant is, is the benchmark's output, never checked here."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd
import pytest
from sklearn.dummy import DummyClassifier

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

from bench_quality import (
    FLAML_MISSING,
    Outcome,
    TaskResult,
    beats,
    main,
    ratio,
    reaches,
    report,
    run_lightgbm,
    submission_frame,
    tables,
    tally,
)
from quality_tasks import ID_COLUMN, TASKS, build_task

from mlmaster_daemon.tasks.competition import load_task
from mlmaster_daemon.tasks.grading import grade, grade_sample_submission
from mlmaster_daemon.tasks.spec import TaskSpec


@pytest.fixture(scope="module")
def specs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, TaskSpec]:
    """Every task built once (seed 0) and loaded by the daemon's loader; tests only read them."""
    root = tmp_path_factory.mktemp("quality")
    return {name: load_task(build_task(name, root / name)) for name in TASKS}


@pytest.mark.parametrize("name", sorted(TASKS))
def test_every_task_is_a_folder_the_daemon_loads_and_grades(specs: dict[str, TaskSpec],
                                                           name: str) -> None:
    spec = specs[name]
    task = TASKS[name]
    assert (spec.metric, spec.target, spec.id_column) == (task.metric, task.target, ID_COLUMN)
    assert spec.private_dir is not None
    # The sample submission is a valid one: the grader scores it on the hidden answers.
    assert isinstance(grade_sample_submission(spec), float)


@pytest.mark.parametrize("name", sorted(TASKS))
def test_hidden_answers_never_appear_in_the_public_folder(specs: dict[str, TaskSpec],
                                                         name: str) -> None:
    spec = specs[name]
    assert spec.private_dir is not None
    answers = pd.read_csv(spec.private_dir / "test.csv")
    public_test = pd.read_csv(spec.public_dir / "test.csv")
    train = pd.read_csv(spec.public_dir / "train.csv")
    sample = pd.read_csv(spec.public_dir / "sample_submission.csv")
    assert spec.target not in public_test.columns
    assert sorted(public_test[ID_COLUMN]) == sorted(answers[ID_COLUMN])
    assert not set(train[ID_COLUMN]) & set(answers[ID_COLUMN])
    # The sample holds one uninformed value per column, the same on every row.
    assert all(sample[c].nunique() == 1 for c in sample.columns if c != ID_COLUMN)
    assert sorted(p.name for p in spec.public_dir.iterdir()) == [
        "description.md", "sample_submission.csv", "test.csv", "train.csv"]


def test_the_same_seed_builds_the_same_files_and_another_seed_others(tmp_path: Path) -> None:
    def files(folder: Path) -> dict[str, bytes]:
        return {str(p.relative_to(folder)): p.read_bytes()
                for p in sorted(folder.rglob("*")) if p.is_file()}

    first = files(build_task("demand", tmp_path / "a", seed=3))
    assert files(build_task("demand", tmp_path / "b", seed=3)) == first
    assert files(build_task("demand", tmp_path / "c", seed=4)) != first


# The small ones: LightGBM's threads crawl when other work holds the machine's cores.
@pytest.mark.parametrize("name", ["breast_cancer", "demand"])
def test_the_lightgbm_baseline_submission_is_graded_better_than_the_sample(
        specs: dict[str, TaskSpec], tmp_path: Path, name: str) -> None:
    spec = specs[name]
    attempt = run_lightgbm(spec, tmp_path / "lightgbm", 60.0)
    assert attempt.submission is not None
    score = grade(spec, attempt.submission)
    assert beats(score, grade_sample_submission(spec), spec.lower_is_better)


@pytest.mark.parametrize("name", ["digits", "segments", "default_risk"])
def test_predictions_fill_the_sample_columns_as_the_grader_reads_them(
        specs: dict[str, TaskSpec], tmp_path: Path, name: str) -> None:
    # A prior-only model predicts what the sample holds, so both must score the same: a class
    # probability in the wrong column, or a label in the wrong form, would score otherwise.
    spec = specs[name]
    x_train, y_train, x_test, sample = tables(spec)
    model = DummyClassifier(strategy="prior").fit(x_train, y_train)
    path = tmp_path / "submission.csv"
    submission_frame(spec, model, x_test, sample).to_csv(path, index=False)
    assert grade(spec, path) == pytest.approx(grade_sample_submission(spec), abs=1e-5)


@pytest.mark.parametrize(("score", "ref", "lower_is_better", "expected"), [
    (0.9, 0.8, False, 0.9 / 0.8),
    (0.8, 0.9, False, 0.8 / 0.9),
    (0.4, 0.5, True, 0.5 / 0.4),
    (0.5, 0.4, True, 0.4 / 0.5),
])
def test_ratio_is_above_one_exactly_when_the_score_is_better(
        score: float, ref: float, lower_is_better: bool, expected: float) -> None:
    value = ratio(score, ref, lower_is_better)
    assert value == pytest.approx(expected)
    assert (value is not None and value > 1) == beats(score, ref, lower_is_better)


def test_ratio_is_none_without_both_scores_or_with_a_zero_divisor() -> None:
    assert ratio(None, 0.5, False) is None
    assert ratio(0.5, None, True) is None
    assert ratio(0.0, 0.5, True) is None


@pytest.mark.parametrize(("score", "lower_is_better", "expected"), [
    (0.796, False, True),   # 0.5% under 0.8 is 0.796: just within
    (0.79, False, False),
    (2.01, True, True),     # 0.5% over 2.0 is 2.01: just within
    (2.02, True, False),
    (None, True, False),
])
def test_reaching_flaml_allows_half_a_percent_of_its_score_in_the_metrics_direction(
        score: float | None, lower_is_better: bool, expected: bool) -> None:
    ref = 2.0 if lower_is_better else 0.8
    assert reaches(score, ref, lower_is_better) is expected


def _result(task: str, lower: bool, **scores: float | None) -> TaskResult:
    return TaskResult(task, "rmse" if lower else "accuracy", lower,
                      {name: Outcome(score, 1.0, "") for name, score in scores.items()})


def test_the_summary_counts_tasks_where_mcts_beats_lightgbm_and_reaches_flaml() -> None:
    results = [
        _result("a", False, mcts=0.90, lightgbm=0.85, flaml=0.902),
        _result("b", True, mcts=10.0, lightgbm=9.0, flaml=10.02),
        _result("c", True, mcts=None, lightgbm=9.0, flaml=8.0),
    ]
    assert tally(results, "mcts") == {"tasks": 3, "beats_lightgbm": 1, "reaches_flaml": 2}
    text = report(results, ["mcts", "lightgbm", "flaml"], 60.0)
    assert "mcts: beats LightGBM on 1/3 tasks and reaches FLAML" in text
    assert "on 2/3 tasks" in text


def test_without_flaml_the_benchmark_says_how_to_install_it(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    # A None entry in sys.modules is how Python marks a module that cannot be imported.
    monkeypatch.setitem(sys.modules, "flaml", None)
    assert main(["--tasks", "demand", "--contestants", "lightgbm", "flaml"]) == 2
    assert "pip install -e .[bench]" in capsys.readouterr().err
    assert "pip install -e .[bench]" in FLAML_MISSING


@pytest.mark.slow
def test_a_short_run_puts_the_daemons_task_beside_lightgbm_in_the_json(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    code = main(["--budget", "10", "--tasks", "breast_cancer", "--contestants", "mcts",
                 "lightgbm", "--json", str(out), "--workdir", str(tmp_path / "run")])
    assert code == 0
    results = json.loads(out.read_text())
    task = results["tasks"][0]
    assert task["outcomes"]["lightgbm"]["score"] is not None
    # Whether 10 s found a working node depends on the machine; that the daemon ran the task
    # and its score (or its absence) reached the ratio does not.
    mcts = task["outcomes"]["mcts"]
    assert " nodes (" in mcts["detail"], mcts["detail"]
    assert (mcts["score"] is None) == (task["ratios"]["mcts/lightgbm"] is None)
    assert results["summary"]["mcts"]["tasks"] == 1
