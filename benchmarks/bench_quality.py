"""Search quality: the daemon's best submission against default LightGBM and FLAML, side by side
in one run, each graded on the hidden test split by the daemon's own grader.

Contestants, run one after another on each task (never at the same time):
- `mcts`, `greedy`: the real daemon process (offline coder: no LLM is configured) on a fresh
  temp state dir and Unix socket, `search.parallel = 2`; the task is submitted over the socket
  with that policy, `time_limit_s = T` and `steps` = 100000 (time is the binding limit), and
  followed until it ends; its `best/submission.csv` is graded. Wall time: submit -> ended.
- `lightgbm`: `LGBMClassifier()` / `LGBMRegressor()` with the library's defaults (verbose=-1
  only silences its log) on train.csv, text columns as pandas `category`, the rest as read.
- `flaml`: `flaml.AutoML().fit(..., task=..., metric=<the task's metric>, time_budget=T)`
  on the same tables, the same T as the daemon's time limit (`pip install -e .[bench]`).

Every score is `mlmaster_daemon.tasks.grading.grade` of the contestant's submission.csv against
prepared/private/test.csv, exactly as `mlmaster grade` scores it. The tasks (7; rows, features,
kinds and metrics in `quality_tasks.py`'s docstring) are built offline, seeded: digits
(log_loss), breast_cancer (roc_auc), churn (roc_auc), segments (accuracy), default_risk
(log_loss), prices (rmse), demand (mae).

Ratios are direction-aware, so a ratio > 1 is better for the daemon: score / ref when higher
is better, ref / score when lower is better. "beats LightGBM": strictly better score.
"reaches FLAML": not worse than FLAML's score by more than 0.5% of it (|FLAML| x 0.005).

Usage:
  .venv/bin/pip install -e .[bench]
  .venv/bin/python benchmarks/bench_quality.py [--budget 60] [--tasks churn prices ...]
      [--contestants mcts greedy lightgbm flaml] [--seed 0] [--json results.json]
      [--workdir DIR]   (keep the competitions, daemon logs and state there; default: a temp
                         dir removed at the end)
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import pandas as pd
from quality_tasks import TASKS, build_task

from mlmaster_daemon.api.client import Client
from mlmaster_daemon.demo import wait_ready
from mlmaster_daemon.errors import GradingError
from mlmaster_daemon.tasks.competition import load_task
from mlmaster_daemon.tasks.grading import grade
from mlmaster_daemon.tasks.metrics import normalise_label, normalise_labels, sort_labels
from mlmaster_daemon.tasks.spec import Metric, TaskSpec
from mlmaster_daemon.watch import follow

CONTESTANTS = ("mcts", "greedy", "lightgbm", "flaml")
POLICIES = ("mcts", "greedy")
REFERENCES = ("lightgbm", "flaml")
REACH_TOLERANCE = 0.005
DAEMON_STEPS = 100_000
DAEMON_CONFIG = """[daemon]
log_level = "warning"
backup_interval_s = 0
[search]
parallel = 2
"""
FLAML_METRICS = {Metric.ROC_AUC: "roc_auc", Metric.LOG_LOSS: "log_loss",
                 Metric.ACCURACY: "accuracy", Metric.RMSE: "rmse", Metric.MAE: "mae",
                 Metric.F1: "f1", Metric.F1_MICRO: "micro_f1", Metric.F1_MACRO: "macro_f1"}
FLAML_MISSING = ("FLAML is not installed: pip install -e .[bench] "
                 "(or leave it out: --contestants mcts greedy lightgbm)")


@dataclass(frozen=True)
class Attempt:
    """What a contestant left: its submission (None when it made none) and how long it took."""

    submission: Path | None
    wall_s: float
    detail: str


@dataclass(frozen=True)
class Outcome:
    """A contestant's graded result on one task; `score` None when it has no valid submission."""

    score: float | None
    wall_s: float
    detail: str
    # The machine's 1-minute load average when the contestant ended: other work on the
    # machine slows every contestant, and this says how much there was.
    load_1m: float | None = None


@dataclass(frozen=True)
class TaskResult:
    task: str
    metric: str
    lower_is_better: bool
    outcomes: dict[str, Outcome]


Contestant = Callable[[TaskSpec, Path, float], Attempt]


def ratio(score: float | None, ref: float | None, lower_is_better: bool) -> float | None:
    """How much better `score` is than `ref`, > 1 when better: score / ref when higher is
    better, ref / score when lower is better; None when either is missing or a divisor is 0."""
    if score is None or ref is None:
        return None
    top, bottom = (ref, score) if lower_is_better else (score, ref)
    return None if bottom == 0 else top / bottom


def beats(score: float | None, ref: float | None, lower_is_better: bool) -> bool:
    """Strictly better than `ref` (a missing score never beats; anything beats a missing ref)."""
    if score is None:
        return False
    if ref is None:
        return True
    return score < ref if lower_is_better else score > ref


def reaches(score: float | None, ref: float | None, lower_is_better: bool,
            tolerance: float = REACH_TOLERANCE) -> bool:
    """Not worse than `ref` by more than `tolerance` x |ref|."""
    if score is None:
        return False
    if ref is None:
        return True
    slack = tolerance * abs(ref)
    return score <= ref + slack if lower_is_better else score >= ref - slack


def tables(spec: TaskSpec) -> tuple[pd.DataFrame, pd.Series, pd.DataFrame, pd.DataFrame]:
    """(train features, train labels, test features with ids, sample submission); text
    columns as `category` with the train's levels (an unseen test level becomes missing)."""
    train = pd.read_csv(spec.public_dir / spec.train_file)
    test = pd.read_csv(spec.public_dir / spec.test_file)
    sample = pd.read_csv(spec.public_dir / spec.sample_submission_file)
    features = [c for c in train.columns if c not in (spec.id_column, spec.target)]
    x_train, x_test = train[features].copy(), test[features].copy()
    for column in features:
        if not pd.api.types.is_numeric_dtype(x_train[column]):
            levels = sorted(x_train[column].dropna().astype(str).unique())
            x_train[column] = pd.Categorical(x_train[column], categories=levels)
            x_test[column] = pd.Categorical(x_test[column], categories=levels)
    x_test.insert(0, spec.id_column, test[spec.id_column])
    return x_train, train[spec.target], x_test, sample


def submission_frame(spec: TaskSpec, model: Any, x_test: pd.DataFrame,
                     sample: pd.DataFrame) -> pd.DataFrame:
    """The fitted `model`'s predictions in the sample submission's columns: the positive
    class's probability (the largest label, as the grader reads it), one probability column
    per class, or the predicted value."""
    ids = x_test[spec.id_column]
    features = x_test.drop(columns=[spec.id_column])
    columns = [c for c in sample.columns if c != spec.id_column]
    frame = pd.DataFrame({spec.id_column: ids.to_numpy()})
    if not spec.metric.needs_probabilities:
        frame[columns[0]] = model.predict(features)
        return frame
    probabilities = model.predict_proba(features)
    classes = normalise_labels(model.classes_)
    if len(columns) == 1:
        frame[columns[0]] = probabilities[:, classes.index(sort_labels(classes)[-1])]
        return frame
    for column in columns:
        frame[column] = probabilities[:, classes.index(normalise_label(column))]
    return frame


def run_lightgbm(spec: TaskSpec, workdir: Path, budget_s: float) -> Attempt:
    """Default LightGBM (`budget_s` unused: it runs until it is done)."""
    from lightgbm import LGBMClassifier, LGBMRegressor

    x_train, y_train, x_test, sample = tables(spec)
    started = time.monotonic()
    model = LGBMRegressor(verbose=-1) if spec.metric.is_regression \
        else LGBMClassifier(verbose=-1)
    model.fit(x_train, y_train)
    frame = submission_frame(spec, model, x_test, sample)
    wall = time.monotonic() - started
    return Attempt(_write(frame, workdir), wall, "library defaults")


def run_flaml(spec: TaskSpec, workdir: Path, budget_s: float) -> Attempt:
    """FLAML AutoML on the task's metric with `budget_s` as its time budget."""
    # Loaded by name: flaml is an optional extra and ships no type hints.
    automl_class: Any = importlib.import_module("flaml").AutoML
    metric = FLAML_METRICS.get(spec.metric)
    if metric is None:
        return Attempt(None, 0.0, f"FLAML has no metric {spec.metric.value}")
    x_train, y_train, x_test, sample = tables(spec)
    started = time.monotonic()
    automl = automl_class()
    automl.fit(X_train=x_train, y_train=y_train, metric=metric, time_budget=budget_s,
               task="regression" if spec.metric.is_regression else "classification",
               seed=0, verbose=0)
    frame = submission_frame(spec, automl, x_test, sample)
    wall = time.monotonic() - started
    return Attempt(_write(frame, workdir), wall, f"best estimator {automl.best_estimator}")


def _write(frame: pd.DataFrame, workdir: Path) -> Path:
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "submission.csv"
    frame.to_csv(path, index=False)
    return path


def run_daemon(policy: str, spec: TaskSpec, workdir: Path, budget_s: float) -> Attempt:
    """The daemon process on a fresh state dir, the task submitted with `policy`."""
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "daemon.toml"
    config.write_text(DAEMON_CONFIG)
    log = workdir / "daemon.log"
    socket_path = workdir / "d.sock"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLMASTER_")}
    with log.open("wb") as out:
        daemon = subprocess.Popen(
            [sys.executable, "-m", "mlmaster_daemon", "daemon", "--config", str(config),
             "--socket", str(socket_path), "--state-dir", str(workdir / "state")],
            stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        return asyncio.run(_search(policy, spec, socket_path, budget_s, daemon, log))
    finally:
        if daemon.poll() is None:
            daemon.send_signal(signal.SIGTERM)
            try:
                daemon.wait(timeout=60)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait()


async def _search(policy: str, spec: TaskSpec, socket_path: Path, budget_s: float,
                  daemon: subprocess.Popen[bytes], log: Path) -> Attempt:
    async with Client(socket_path) as client:
        await wait_ready(client, daemon, log)
        started = time.monotonic()
        task = await client.submit({"task_dir": str(spec.root), "policy": policy,
                                    "steps": DAEMON_STEPS, "time_limit_s": float(budget_s)})
        final = await follow(client, task["id"], lambda _line: None)
        wall = time.monotonic() - started
        nodes = await client.nodes(task["id"])
    states = Counter(str(node["status"]) for node in nodes)
    operators = Counter(str(node["operator"]) for node in nodes)
    best = final.get("best")
    detail = (f"{len(nodes)} nodes ({_counts(states)}; {_counts(operators)}); "
              f"{final['state']}")
    if final.get("error"):
        detail += f": {final['error']}"
    if best is None:
        return Attempt(None, wall, detail)
    detail += f"; best validation {best['metric']:.5g} (node {best['node_id']})"
    return Attempt(Path(best["submission_path"]), wall, detail)


def _counts(counter: Counter[str]) -> str:
    return ", ".join(f"{n} {name}" for name, n in counter.most_common())


RUNNERS: dict[str, Contestant] = {
    "mcts": partial(run_daemon, "mcts"),
    "greedy": partial(run_daemon, "greedy"),
    "lightgbm": run_lightgbm,
    "flaml": run_flaml,
}


def play(spec: TaskSpec, contestant: str, workdir: Path, budget_s: float) -> Outcome:
    """One contestant on one task, graded; any failure is the contestant's (score None)."""
    try:
        attempt = RUNNERS[contestant](spec, workdir, budget_s)
    except Exception as exc:
        return Outcome(None, 0.0, f"error: {type(exc).__name__}: {exc}")
    if attempt.submission is None:
        return Outcome(None, attempt.wall_s, f"no submission; {attempt.detail}")
    try:
        return Outcome(grade(spec, attempt.submission), attempt.wall_s, attempt.detail)
    except GradingError as exc:
        return Outcome(None, attempt.wall_s, f"invalid submission: {exc}; {attempt.detail}")


def run_benchmark(names: Sequence[str], contestants: Sequence[str], budget_s: float,
                  seed: int, workdir: Path, emit: Callable[[str], None]) -> list[TaskResult]:
    results = []
    for name in names:
        spec = load_task(build_task(name, workdir / name / "competition", seed))
        outcomes: dict[str, Outcome] = {}
        for contestant in contestants:
            outcome = replace(play(spec, contestant, workdir / name / contestant, budget_s),
                              load_1m=round(os.getloadavg()[0], 2))
            outcomes[contestant] = outcome
            shown = "-" if outcome.score is None else f"{outcome.score:.5f}"
            emit(f"{name:<14} {contestant:<9} {spec.metric.value:<9} {shown:>10} "
                 f"in {outcome.wall_s:6.1f} s (load {outcome.load_1m:.1f})  {outcome.detail}")
        results.append(TaskResult(name, spec.metric.value, spec.lower_is_better, outcomes))
    return results


def pairs(contestants: Sequence[str]) -> list[tuple[str, str]]:
    """(daemon policy, reference) pairs that both ran."""
    return [(p, r) for p in POLICIES if p in contestants for r in REFERENCES if r in contestants]


def ratios(result: TaskResult) -> dict[str, float | None]:
    scores = {name: outcome.score for name, outcome in result.outcomes.items()}
    return {f"{p}/{r}": ratio(scores[p], scores[r], result.lower_is_better)
            for p, r in pairs(list(result.outcomes))}


def tally(results: Sequence[TaskResult], policy: str) -> dict[str, int]:
    """On how many tasks `policy` beats LightGBM and reaches FLAML."""
    counts = {"tasks": len(results), "beats_lightgbm": 0, "reaches_flaml": 0}
    for result in results:
        score = result.outcomes[policy].score
        if "lightgbm" in result.outcomes and beats(
                score, result.outcomes["lightgbm"].score, result.lower_is_better):
            counts["beats_lightgbm"] += 1
        if "flaml" in result.outcomes and reaches(
                score, result.outcomes["flaml"].score, result.lower_is_better):
            counts["reaches_flaml"] += 1
    return counts


def _cell(value: float | None, width: int = 11) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:>{width}.5g}"


def report(results: Sequence[TaskResult], contestants: Sequence[str], budget_s: float) -> str:
    lines = [f"T = {budget_s:g} s: the daemon's time_limit_s and FLAML's time_budget; "
             "daemon parallel = 2, offline coder; scores on the hidden test split",
             "", f"{'task':<14} {'metric':<9}" + "".join(f"{c:>11}" for c in contestants)]
    for result in results:
        arrow = "min" if result.lower_is_better else "max"
        lines.append(f"{result.task:<14} {result.metric + ' ' + arrow:<9}" + "".join(
            _cell(result.outcomes[c].score) for c in contestants))
    lines += ["", "wall time (s)", f"{'task':<24}" + "".join(f"{c:>11}" for c in contestants)]
    for result in results:
        lines.append(f"{result.task:<24}" + "".join(
            f"{result.outcomes[c].wall_s:>11.1f}" for c in contestants))
    keys = [f"{p}/{r}" for p, r in pairs(contestants)]
    if keys:
        lines += ["", "ratios (> 1 is better for the daemon: score/ref when higher is better, "
                  "ref/score when lower is better)", f"{'task':<24}"
                  + "".join(f"{k:>16}" for k in keys)]
        for result in results:
            values = ratios(result)
            lines.append(f"{result.task:<24}" + "".join(_cell(values[k], 16) for k in keys))
    lines.append("")
    for policy in (p for p in POLICIES if p in contestants):
        counts = tally(results, policy)
        parts = []
        if "lightgbm" in contestants:
            parts.append(f"beats LightGBM on {counts['beats_lightgbm']}/{counts['tasks']} tasks")
        if "flaml" in contestants:
            parts.append(f"reaches FLAML (within {REACH_TOLERANCE:.1%} of its score) on "
                         f"{counts['reaches_flaml']}/{counts['tasks']} tasks")
        if parts:
            lines.append(f"{policy}: " + " and ".join(parts))
    return "\n".join(lines)


def to_json(results: Sequence[TaskResult], contestants: Sequence[str], budget_s: float,
            seed: int) -> dict[str, Any]:
    return {
        "budget_s": budget_s, "seed": seed, "reach_tolerance": REACH_TOLERANCE,
        "contestants": list(contestants),
        "tasks": [{**asdict(r), "ratios": ratios(r)} for r in results],
        "summary": {p: tally(results, p) for p in POLICIES if p in contestants},
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", type=float, default=60.0, help="T in seconds")
    parser.add_argument("--tasks", nargs="+", choices=list(TASKS), default=list(TASKS))
    parser.add_argument("--contestants", nargs="+", choices=CONTESTANTS,
                        default=list(CONTESTANTS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--workdir", type=Path, help="keep the run's files here")
    args = parser.parse_args(argv)
    if "flaml" in args.contestants and importlib.util.find_spec("flaml") is None:
        print(FLAML_MISSING, file=sys.stderr)
        return 2
    contestants = [c for c in CONTESTANTS if c in args.contestants]
    with tempfile.TemporaryDirectory(prefix="mlm-quality-") as tmp:
        workdir = args.workdir or Path(tmp)
        results = run_benchmark(args.tasks, contestants, args.budget, args.seed,
                                workdir.resolve(), lambda line: print(line, flush=True))
    print()
    print(report(results, contestants, args.budget))
    if args.json:
        args.json.write_text(json.dumps(to_json(results, contestants, args.budget, args.seed),
                                        indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
