"""The hidden-holdout benchmark's tasks are folders the daemon loads, holds out and grades, and
its quick run prints and saves every figure: each chosen submission graded on the hidden
answers, a valid score of the task's metric. Whether the holdout choice beats the validation
choice is the benchmark's measurement, never checked here."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

from bench_holdout import FAMILIES, FRACTION, ID_COLUMN, METHODS, TARGET, build_task, gain, ratio

from mlmaster_daemon.tasks import holdout
from mlmaster_daemon.tasks.competition import load_task
from mlmaster_daemon.tasks.grading import grade_sample_submission

BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_holdout.py"


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_every_task_loads_grades_its_sample_and_gets_a_holdout(tmp_path: Path,
                                                               name: str) -> None:
    spec = load_task(build_task(FAMILIES[name], tmp_path / name, seed=0))
    assert (spec.metric, spec.target, spec.id_column) == (FAMILIES[name].metric, TARGET,
                                                          ID_COLUMN)
    assert isinstance(grade_sample_submission(spec), float)
    assert spec.private_dir is not None
    answers = pd.read_csv(spec.private_dir / "test.csv")
    assert TARGET not in pd.read_csv(spec.public_dir / "test.csv").columns
    assert not set(pd.read_csv(spec.public_dir / "train.csv")[ID_COLUMN]) & set(
        answers[ID_COLUMN])
    assert isinstance(holdout.plan(spec, seed=0, fraction=FRACTION), holdout.HoldoutPlan)


def test_the_same_seed_builds_the_same_task_and_another_seed_another(tmp_path: Path) -> None:
    def files(folder: Path) -> dict[str, bytes]:
        return {str(p.relative_to(folder)): p.read_bytes()
                for p in sorted(folder.rglob("*")) if p.is_file()}

    family = FAMILIES["auc"]
    first = files(build_task(family, tmp_path / "a", seed=3))
    assert files(build_task(family, tmp_path / "b", seed=3)) == first
    assert files(build_task(family, tmp_path / "c", seed=4)) != first


@pytest.mark.parametrize(("score", "ref", "lower_is_better"), [
    (0.9, 0.8, False), (0.8, 0.9, False), (1.5, 2.0, True), (2.0, 1.5, True)])
def test_gain_and_ratio_read_the_metrics_direction(score: float, ref: float,
                                                   lower_is_better: bool) -> None:
    better = score < ref if lower_is_better else score > ref
    value = ratio(score, ref, lower_is_better)
    assert value is not None
    assert (gain(score, ref, lower_is_better) > 0) is better
    assert (value > 1) is better


def _in_range(metric: str, value: float) -> bool:
    if metric == "roc_auc":
        return 0.0 <= value <= 1.0
    return math.isfinite(value) and value >= 0.0


@pytest.mark.slow
# About 40 s alone on 2 cores; several times that when other work holds the cores.
@pytest.mark.timeout(600)
def test_a_quick_run_grades_every_choice_on_the_hidden_answers(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    done = subprocess.run([sys.executable, str(BENCH), "--quick", "--json", str(out)],
                          check=False, capture_output=True, text=True, timeout=560)
    assert done.returncode == 0, done.stdout + done.stderr
    results = json.loads(out.read_text())
    assert {(r["family"], r["seed"]) for r in results["runs"]} == {("auc", 0), ("rmse", 0)}
    for run in results["runs"]:
        assert run["holdout_rows"] == 100
        assert all(node["error"] == "" for node in run["nodes"]), run["nodes"]
        assert set(run["picks"]) == set(METHODS)
        for pick in run["picks"].values():
            assert _in_range(run["metric"], pick["hidden"]), pick
        for node in run["nodes"]:
            assert _in_range(run["metric"], node["hidden"]), node
            assert _in_range(run["metric"], node["holdout"]), node
    for family, part in results["summary"].items():
        assert part["seeds"] == 1
        for method in METHODS:
            figures = part["methods"][method]
            assert figures["wins"] + figures["ties"] + figures["losses"] == 1
            assert math.isfinite(figures["mean_gain"]) and figures["mean_ratio"] > 0
        # Against itself the validation choice always ties.
        assert part["methods"]["validation"]["ties"] == 1, family
        for figures in part["as_estimates"].values():
            assert figures["mean_abs_error"] >= 0
            assert -1 <= figures["rank_correlation"] <= 1
    lines = done.stdout.splitlines()
    for family in ("auc", "rmse"):
        assert any(line.startswith(f"{family} seed 0 (") for line in lines), done.stdout
    for method in METHODS:
        rows = [x for x in lines if re.match(rf"  {re.escape(method)} +\d+\.\d{{4}} +[+-]", x)]
        assert len(rows) == 2, f"{method}: {rows}\n{done.stdout}"
    assert sum("score chosen by - hidden score" in x for x in lines) == 2
