"""Hidden holdout (issue 17): which final submission is better on the hidden answers, the node
chosen by its own validation score or the node chosen by the daemon's hidden holdout score,
and does a top-k ensemble chosen on the holdout help further? Measured side by side in one run.

Per family and seed:
1. A seeded task folder where overfitting is easy (the layout `load_task` reads: task.toml,
   prepared/public/{train,test,sample_submission,description}, prepared/private/test.csv):
   500 labelled rows, 5 informative features among 100 pure-noise ones, 2000 hidden test rows.
   - `auc`: binary target, P(y=1) = sigmoid(1.2 x (linear in the 5 + an interaction + a
     sine)), scored with roc_auc (higher is better); the true probabilities' AUC is ~0.90.
   - `rmse`: real target, linear in the 5 + an interaction + a sine + N(0, 1.5) noise,
     scored with rmse (lower is better).
   The informative columns sit at seeded random places among the noise columns.
2. `holdout.plan(spec, seed=seed, fraction=0.2)` (100 rows; stratified for auc) and
   `holdout.build_view`: the nodes see 400 train rows and 2100 test rows.
3. The same 10 candidate node scripts per family, each a real subprocess (`sys.executable
   node.py`, cwd a workspace whose `input` links to the view), reading input/train.csv and
   input/test.csv, writing metrics.json {"validation_metric": x} and submission/submission.csv.
   They differ in capacity (linear with strong/weak/L1 regularisation, kNN, random forest,
   gradient boosting) and in how they validate, as an agent's search does:
   - `cv`: honest 5-fold CV of the whole pipeline (feature selection inside the folds);
   - `select>cv`: the k features most associated with the label chosen on ALL train rows,
     then 5-fold CV on them (leaky: noise features that fit the label by chance look useful);
   - `best-of-grid`: one 75/25 split, a grid of settings, the best fold score reported
     (optimistic: the maximum of noisy scores), the best setting refit on all rows.
   The candidates were fixed before any result was seen and are the same for every seed.
4. Each submission is split (`holdout.split_submission`) into its real part and its holdout
   rows; `holdout.score_holdout` scores the latter.
5. The final submission is chosen by `selection.choose` with Rule.VALIDATION, Rule.HOLDOUT and
   Rule.HOLDOUT_CV, and by "holdout+top3": `ensemble.combine` of the 3 best by holdout, kept
   only when `ensemble.beats` the best single one's holdout score, else the holdout-best node.
6. Every chosen real submission is graded by `grading.grade(spec, path)` against the hidden
   answers (the truth). `oracle` is the candidate with the best hidden score (what a perfect
   chooser would get); it is a bound, not a method.

Summary per family: mean hidden score per method; mean gain over the validation choice as a
difference in the metric's better direction (> 0 is better) and as a ratio (> 1 is better:
score / ref for auc, ref / score for rmse); wins/ties/losses against the validation choice
(a tie: the same hidden score, mostly the same node); and the optimism of the score each rule
chose by: mean (validation - hidden) for the validation-chosen node against mean
(holdout - hidden) for the holdout-chosen node (for rmse a negative gap is the optimistic one).

Usage: .venv/bin/python benchmarks/bench_holdout.py [--quick] [--seeds 8]
           [--families auc rmse] [--jobs 2] [--json results.json] [--workdir DIR]
  --quick: 1 seed per family (about 40 s on 2 idle cores); the full run: 8 seeds of auc and
  4 of rmse (about 4 minutes on 2 idle cores: each run starts 10 Python processes that import
  scikit-learn; several times that when other work holds the cores).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mlmaster_daemon.errors import GradingError
from mlmaster_daemon.tasks import holdout
from mlmaster_daemon.tasks.competition import load_task
from mlmaster_daemon.tasks.ensemble import Ensemble, Member, beats, combine, write_submission
from mlmaster_daemon.tasks.grading import grade
from mlmaster_daemon.tasks.selection import Candidate, Rule, by_holdout, choose
from mlmaster_daemon.tasks.spec import Metric, TaskSpec

ID_COLUMN = "id"
TARGET = "target"
TRAIN_ROWS = 500
TEST_ROWS = 2000
INFORMATIVE = 5
NOISE = 100
FRACTION = 0.2
TOP_K = 3
SCRIPT_TIMEOUT_S = 120.0
METHODS = ("validation", "holdout", "holdout+cv", "holdout+top3", "oracle")


@dataclass(frozen=True)
class Family:
    """A kind of task: how its target is drawn and how it is scored."""

    name: str
    metric: Metric
    draw: Callable[[np.ndarray, np.random.Generator], np.ndarray]


def _signal(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    weights = rng.choice([-1.0, 1.0], INFORMATIVE) * rng.uniform(0.5, 1.2, INFORMATIVE)
    return np.asarray(x @ weights + 0.8 * x[:, 0] * x[:, 1] + np.sin(2.0 * x[:, 2]))


def _binary(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    chance = 1.0 / (1.0 + np.exp(-1.2 * _signal(x, rng)))
    return (rng.random(len(x)) < chance).astype(np.int64)


def _real(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return np.round(_signal(x, rng) + rng.normal(0.0, 1.5, len(x)), 4)


FAMILIES = {f.name: f for f in (Family("auc", Metric.ROC_AUC, _binary),
                                Family("rmse", Metric.RMSE, _real))}


def build_task(family: Family, dest: Path, seed: int) -> Path:
    """Write the seeded task of `family` into the absent or empty folder `dest`."""
    rng = np.random.default_rng([seed, 17])
    rows = TRAIN_ROWS + TEST_ROWS
    features = rng.normal(0.0, 1.0, (rows, INFORMATIVE + NOISE))
    labels = family.draw(features[:, :INFORMATIVE], rng)
    # The informative columns at seeded places: no script can know which they are.
    order = rng.permutation(INFORMATIVE + NOISE)
    frame = pd.DataFrame(np.round(features[:, order], 4),
                         columns=[f"f{k:03d}" for k in range(INFORMATIVE + NOISE)])
    frame.insert(0, ID_COLUMN, rng.permutation(rows) + 1)
    frame[TARGET] = labels
    train = frame.iloc[:TRAIN_ROWS].sort_values(ID_COLUMN)
    test = frame.iloc[TRAIN_ROWS:].sort_values(ID_COLUMN)
    public = dest / "prepared" / "public"
    private = dest / "prepared" / "private"
    public.mkdir(parents=True)
    private.mkdir(parents=True)
    prior = float(train[TARGET].mean())
    sample = pd.DataFrame({ID_COLUMN: test[ID_COLUMN], TARGET: round(prior, 4)})
    for table, path in ((train, public / "train.csv"),
                        (test.drop(columns=[TARGET]), public / "test.csv"),
                        (sample, public / "sample_submission.csv"),
                        (test[[ID_COLUMN, TARGET]], private / "test.csv")):
        table.to_csv(path, index=False, lineterminator="\n")
    kind = ("the probability that `target` is 1" if family.metric is Metric.ROC_AUC
            else "the value of `target`")
    (public / "description.md").write_text(
        f"# holdout bench ({family.name}, seed {seed})\n\n{TRAIN_ROWS} train rows, "
        f"{INFORMATIVE + NOISE} numeric features, most of them noise. Predict {kind} for each "
        f"`{ID_COLUMN}` of test.csv; scored with {family.metric.value}.\n", encoding="utf-8")
    (dest / "task.toml").write_text(
        f'metric = "{family.metric.value}"\n'
        f"lower_is_better = {str(family.metric.lower_is_better).lower()}\n"
        f'target = "{TARGET}"\nid_column = "{ID_COLUMN}"\n', encoding="utf-8")
    return dest


@dataclass(frozen=True)
class Script:
    """One candidate node: a model, how many features it keeps and how it validates."""

    name: str
    model: str
    params: dict[str, Any]
    scheme: str
    keep: int | None = None
    grid: dict[str, list[Any]] = field(default_factory=dict)


SCRIPTS = (
    Script("linear-weak", "linear", {"strength": 1.0}, "cv"),
    Script("linear-strong", "linear", {"strength": 0.01}, "cv"),
    Script("sparse-linear", "sparse", {"strength": 0.1}, "cv"),
    Script("linear top20", "linear", {"strength": 1.0}, "select>cv", keep=20),
    Script("knn top10", "knn", {"k": 15}, "select>cv", keep=10),
    Script("forest", "forest", {"depth": None}, "cv"),
    Script("forest top30", "forest", {"depth": 4}, "select>cv", keep=30),
    Script("boosting grid", "boosting", {"depth": 3, "rate": 0.1, "trees": 100},
           "best-of-grid", grid={"rate": [0.05, 0.2], "depth": [2, 3]}),
    Script("knn grid", "knn", {"k": 15}, "best-of-grid",
           grid={"k": [1, 3, 5, 9, 15, 25, 41, 65]}),
    Script("linear grid", "linear", {"strength": 1.0}, "best-of-grid",
           grid={"strength": [0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0]}),
)

NODE_SCRIPT = '''"""A candidate node: {name}."""
import json
import os
from itertools import product

import numpy as np
import pandas as pd

CONFIG = {config}
CLASSIFY = CONFIG["classify"]
train = pd.read_csv("input/train.csv")
test = pd.read_csv("input/test.csv")
y = train.pop("{target}").to_numpy()
x = train.drop(columns=["{id_column}"]).to_numpy()
x_test = test.drop(columns=["{id_column}"]).to_numpy()


def model(settings):
    kind = CONFIG["model"]
    if kind == "linear" and CLASSIFY:
        from sklearn.linear_model import LogisticRegression
        return LogisticRegression(C=settings["strength"], max_iter=2000)
    if kind == "linear":
        from sklearn.linear_model import Ridge
        return Ridge(alpha=1.0 / settings["strength"])
    if kind == "sparse" and CLASSIFY:
        from sklearn.linear_model import LogisticRegression
        return LogisticRegression(C=settings["strength"], l1_ratio=1.0, solver="liblinear")
    if kind == "sparse":
        from sklearn.linear_model import Lasso
        return Lasso(alpha=settings["strength"])
    if kind == "knn":
        from sklearn import neighbors
        cls = neighbors.KNeighborsClassifier if CLASSIFY else neighbors.KNeighborsRegressor
        return cls(n_neighbors=settings["k"])
    if kind == "forest":
        from sklearn import ensemble
        cls = ensemble.RandomForestClassifier if CLASSIFY else ensemble.RandomForestRegressor
        return cls(n_estimators=100, max_depth=settings["depth"], max_features="sqrt",
                   random_state=0)
    from sklearn import ensemble
    cls = (ensemble.GradientBoostingClassifier if CLASSIFY
           else ensemble.GradientBoostingRegressor)
    return cls(n_estimators=settings["trees"], max_depth=settings["depth"],
               learning_rate=settings["rate"], random_state=0)


def selector():
    from sklearn.feature_selection import SelectKBest, f_classif, f_regression
    return SelectKBest(f_classif if CLASSIFY else f_regression, k=CONFIG["keep"])


def pipeline(settings, select):
    from sklearn.pipeline import make_pipeline
    return make_pipeline(selector(), model(settings)) if select else model(settings)


def predict(fitted, rows):
    return fitted.predict_proba(rows)[:, 1] if CLASSIFY else fitted.predict(rows)


def metric(truth, guess):
    from sklearn.metrics import mean_squared_error, roc_auc_score
    if CLASSIFY:
        return float(roc_auc_score(truth, guess))
    return float(np.sqrt(mean_squared_error(truth, guess)))


def cross_validated(settings, rows, select):
    from sklearn.model_selection import KFold, StratifiedKFold
    folds = (StratifiedKFold if CLASSIFY else KFold)(5, shuffle=True, random_state=0)
    guesses = np.zeros(len(y))
    for fit_rows, val_rows in folds.split(rows, y):
        fitted = pipeline(settings, select).fit(rows[fit_rows], y[fit_rows])
        guesses[val_rows] = predict(fitted, rows[val_rows])
    return metric(y, guesses)


settings = dict(CONFIG["params"])
scheme = CONFIG["scheme"]
if scheme == "cv":
    validation = cross_validated(settings, x, CONFIG["keep"] is not None)
    final = pipeline(settings, CONFIG["keep"] is not None).fit(x, y)
elif scheme == "select>cv":
    chosen = selector().fit(x, y).get_support()
    x, x_test = x[:, chosen], x_test[:, chosen]
    validation = cross_validated(settings, x, False)
    final = model(settings).fit(x, y)
else:
    from sklearn.model_selection import train_test_split
    fit_rows, val_rows = train_test_split(np.arange(len(y)), test_size=0.25, random_state=0,
                                          stratify=y if CLASSIFY else None)
    names = sorted(CONFIG["grid"])
    validation = None
    for values in product(*(CONFIG["grid"][n] for n in names)):
        trial = {{**settings, **dict(zip(names, values))}}
        fitted = model(trial).fit(x[fit_rows], y[fit_rows])
        score = metric(y[val_rows], predict(fitted, x[val_rows]))
        if validation is None or (score > validation if CLASSIFY else score < validation):
            validation, best = score, trial
    final = model(best).fit(x, y)
os.makedirs("submission", exist_ok=True)
pd.DataFrame({{"{id_column}": test["{id_column}"], "{target}": predict(final, x_test)}}).to_csv(
    "submission/submission.csv", index=False)
with open("metrics.json", "w") as out:
    json.dump({{"validation_metric": validation}}, out)
'''


def node_script(script: Script, family: Family) -> str:
    config = {"classify": not family.metric.is_regression, "model": script.model,
              "params": script.params, "scheme": script.scheme, "keep": script.keep,
              "grid": script.grid}
    return NODE_SCRIPT.format(name=script.name, config=repr(config), target=TARGET,
                              id_column=ID_COLUMN)


@dataclass(frozen=True)
class NodeResult:
    """A candidate's three scores; None where it produced nothing to score."""

    node_id: int
    name: str
    validation: float | None
    holdout: float | None
    hidden: float | None
    wall_s: float
    error: str = ""


def run_node(node_id: int, script: Script, family: Family, spec: TaskSpec, view: TaskSpec,
             workspace: Path) -> NodeResult:
    """Run one candidate as the daemon runs a node, then split, score and grade its output."""
    workspace.mkdir(parents=True)
    (workspace / "input").symlink_to(view.public_dir, target_is_directory=True)
    (workspace / "node.py").write_text(node_script(script, family), encoding="utf-8")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
           "MKL_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    started = time.perf_counter()
    try:
        done = subprocess.run([sys.executable, "node.py"], cwd=workspace, env=env, check=False,
                              capture_output=True, text=True, timeout=SCRIPT_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return NodeResult(node_id, script.name, None, None, None, time.perf_counter() - started,
                          f"ran over {SCRIPT_TIMEOUT_S:.0f} s")
    wall_s = time.perf_counter() - started
    if done.returncode != 0:
        last = done.stderr.strip().splitlines()[-1:]
        return NodeResult(node_id, script.name, None, None, None, wall_s,
                          last[0] if last else f"exit status {done.returncode}")
    try:
        validation = float(json.loads((workspace / "metrics.json").read_text())
                           ["validation_metric"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return NodeResult(node_id, script.name, None, None, None, wall_s,
                          f"no validation_metric in metrics.json: {exc}")
    assert view.private_dir is not None
    try:
        rows = holdout.split_submission(view, workspace / "submission" / "submission.csv",
                                        workspace / "real.csv")
        rows.to_csv(workspace / "holdout.csv", index=False, lineterminator="\n")
        held = holdout.score_holdout(spec, rows, view.private_dir)
        hidden = grade(spec, workspace / "real.csv")
    except (holdout.HoldoutError, GradingError) as exc:
        return NodeResult(node_id, script.name, validation, None, None, wall_s, exc.message)
    return NodeResult(node_id, script.name, validation, held, hidden, wall_s)


@dataclass(frozen=True)
class Pick:
    """What one method submitted: the node (or ensemble) and the scores it was chosen by."""

    label: str
    hidden: float
    validation: float | None
    holdout: float | None


@dataclass(frozen=True)
class RunResult:
    family: str
    seed: int
    metric: str
    lower_is_better: bool
    holdout_rows: int
    nodes: list[NodeResult]
    picks: dict[str, Pick]
    wall_s: float


def run_task(family: Family, seed: int, root: Path, jobs: int) -> RunResult:
    started = time.perf_counter()
    task = build_task(family, root / "task", seed)
    spec = load_task(task)
    planned = holdout.plan(spec, seed=seed, fraction=FRACTION)
    if isinstance(planned, holdout.Refusal):
        raise SystemExit(f"the holdout was refused: {planned.reason}")
    view = holdout.build_view(spec, planned, root / "view", root / "hidden")
    with ThreadPoolExecutor(jobs) as pool:
        nodes = list(pool.map(
            lambda item: run_node(item[0], item[1], family, spec, view,
                                  root / "nodes" / str(item[0])),
            enumerate(SCRIPTS, start=1)))
    lower = spec.lower_is_better
    by_id = {n.node_id: n for n in nodes}
    # A node whose submission cannot be split or graded is not a working node.
    candidates = [Candidate(n.node_id, n.validation, n.holdout) for n in nodes
                  if n.validation is not None and n.hidden is not None]
    picks: dict[str, Pick] = {}
    for label, rule in (("validation", Rule.VALIDATION), ("holdout", Rule.HOLDOUT),
                        ("holdout+cv", Rule.HOLDOUT_CV)):
        choice = choose(candidates, rule, lower)
        if choice is not None:
            node = by_id[choice.node_id]
            assert node.hidden is not None
            picks[label] = Pick(f"#{node.node_id} {node.name}", node.hidden, node.validation,
                                node.holdout)
    if "holdout" in picks:
        picks["holdout+top3"] = _ensemble_pick(spec, view, candidates, root, picks["holdout"])
    graded = [n for n in nodes if n.hidden is not None]
    if graded:
        best = (min if lower else max)(graded, key=lambda n: n.hidden or 0.0)
        assert best.hidden is not None
        picks["oracle"] = Pick(f"#{best.node_id} {best.name}", best.hidden, best.validation,
                               best.holdout)
    return RunResult(family.name, seed, spec.metric.value, lower, len(planned.rows), nodes,
                     picks, time.perf_counter() - started)


def _ensemble_pick(spec: TaskSpec, view: TaskSpec, candidates: list[Candidate], root: Path,
                   single: Pick) -> Pick:
    """The top-k ensemble by holdout when it beats the best single node there, else the
    holdout-best node (as the daemon would keep it)."""
    ranked = by_holdout(candidates, spec.lower_is_better)
    if len(ranked) < 2:
        return single
    members = [Member(c.node_id, float(c.holdout or 0.0),
                      root / "nodes" / str(c.node_id), "real.csv",
                      root / "nodes" / str(c.node_id), "holdout.csv")
               for c in ranked[:TOP_K]]
    assert view.private_dir is not None
    result = combine(spec, members, view.private_dir)
    best_single = ranked[0].holdout
    assert best_single is not None
    if not isinstance(result, Ensemble) or not beats(result.holdout_metric, best_single,
                                                     spec.lower_is_better):
        return Pick(f"{single.label} (no ensemble)", single.hidden, single.validation,
                    single.holdout)
    path = root / "ensemble" / "submission.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_submission(result.real, path)
    ids = "+".join(f"#{m}" for m in result.members)
    return Pick(f"{ids} {result.method}", grade(spec, path), None, result.holdout_metric)


def gain(score: float, ref: float, lower_is_better: bool) -> float:
    """How much better `score` is than `ref` in the metric's direction (> 0 is better)."""
    return ref - score if lower_is_better else score - ref


def ratio(score: float, ref: float, lower_is_better: bool) -> float | None:
    """score / ref for a higher-is-better metric, ref / score for a lower one (> 1 is
    better); None for a zero divisor."""
    top, bottom = (ref, score) if lower_is_better else (score, ref)
    return None if bottom == 0 else top / bottom


def _fmt(value: float | None, width: int = 7) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:>{width}.4f}"


def print_run(run: RunResult) -> None:
    print(f"\n{run.family} seed {run.seed} ({run.metric}, "
          f"{'lower' if run.lower_is_better else 'higher'} is better; holdout {run.holdout_rows} "
          f"rows; {run.wall_s:.1f} s)")
    print(f"  {'node':<20} {'valid':>7} {'holdout':>7} {'hidden':>7} {'val-hid':>7}  run s")
    for n in run.nodes:
        gap = None if n.validation is None or n.hidden is None else n.validation - n.hidden
        print(f"  #{n.node_id:<2} {n.name:<16} {_fmt(n.validation)} {_fmt(n.holdout)} "
              f"{_fmt(n.hidden)} {_fmt(gap)}  {n.wall_s:5.1f}"
              + (f"  FAILED: {n.error}" if n.error else ""))
    ref = run.picks.get("validation")
    for method in METHODS:
        pick = run.picks.get(method)
        if pick is None:
            print(f"  {method:<13} -> nothing chosen")
            continue
        versus = "" if ref is None or method == "validation" else (
            f"  ({gain(pick.hidden, ref.hidden, run.lower_is_better):+.4f} vs validation)")
        print(f"  {method:<13} -> {pick.label:<28} hidden {pick.hidden:.4f}{versus}")


def summarise(runs: Sequence[RunResult]) -> dict[str, Any]:
    """Per family: mean hidden score per method, mean gain and ratio against the validation
    choice, wins/ties/losses against it, and the optimism of each rule's chosen score."""
    out: dict[str, Any] = {}
    for family in sorted({r.family for r in runs}):
        mine = [r for r in runs if r.family == family and "validation" in r.picks]
        if not mine:
            continue
        lower = mine[0].lower_is_better
        methods: dict[str, Any] = {}
        for method in METHODS:
            pairs = [(r.picks[method].hidden, r.picks["validation"].hidden) for r in mine
                     if method in r.picks]
            if not pairs:
                continue
            gains = [gain(s, v, lower) for s, v in pairs]
            ratios = [x for x in (ratio(s, v, lower) for s, v in pairs) if x is not None]
            methods[method] = {
                "mean_hidden": statistics.mean(s for s, _ in pairs),
                "mean_gain": statistics.mean(gains),
                "mean_ratio": statistics.mean(ratios) if ratios else None,
                "wins": sum(g > 0 for g in gains), "ties": sum(g == 0 for g in gains),
                "losses": sum(g < 0 for g in gains), "runs": len(pairs)}
        optimism = {}
        for method, score in (("validation", "validation"), ("holdout", "holdout")):
            gaps = [getattr(r.picks[method], score) - r.picks[method].hidden for r in mine
                    if method in r.picks and getattr(r.picks[method], score) is not None]
            optimism[method] = statistics.mean(gaps) if gaps else None
        kept = sum("no ensemble" not in r.picks["holdout+top3"].label for r in mine
                   if "holdout+top3" in r.picks)
        out[family] = {"metric": mine[0].metric, "lower_is_better": lower, "seeds": len(mine),
                       "methods": methods, "chosen_minus_hidden": optimism,
                       "ensembles_kept": kept, "as_estimates": _as_estimates(mine)}
    return out


def _as_estimates(runs: Sequence[RunResult]) -> dict[str, dict[str, float | None]]:
    """How well each score stands for the hidden one over every graded node: the mean
    absolute difference, and the mean over runs of the rank correlation across the nodes
    (the ordering a rule chooses by)."""
    out: dict[str, dict[str, float | None]] = {}
    for score in ("validation", "holdout"):
        errors: list[float] = []
        correlations: list[float] = []
        for run in runs:
            pairs = [(getattr(n, score), n.hidden) for n in run.nodes
                     if getattr(n, score) is not None and n.hidden is not None]
            errors.extend(abs(s - h) for s, h in pairs)
            if len(pairs) > 2:
                ranks = pd.DataFrame(pairs).rank().to_numpy()
                value = float(np.corrcoef(ranks[:, 0], ranks[:, 1])[0, 1])
                if math.isfinite(value):
                    correlations.append(value)
        out[score] = {"mean_abs_error": statistics.mean(errors) if errors else None,
                      "rank_correlation": (statistics.mean(correlations) if correlations
                                           else None)}
    return out


def print_summary(summary: dict[str, Any], wall_s: float) -> None:
    print(f"\nsummary (hidden-answer scores; gain and ratio against the validation choice, "
          f"> 0 and > 1 are better; total {wall_s:.1f} s)")
    for family, part in summary.items():
        direction = "lower" if part["lower_is_better"] else "higher"
        print(f"\n{family}: {part['metric']}, {direction} is better, {part['seeds']} seeds")
        print(f"  {'method':<13} {'hidden':>8} {'gain':>8} {'ratio':>7}  win/tie/loss vs "
              "validation")
        for method, m in part["methods"].items():
            shown = "-" if m["mean_ratio"] is None else f"{m['mean_ratio']:.4f}x"
            print(f"  {method:<13} {m['mean_hidden']:8.4f} {m['mean_gain']:+8.4f} "
                  f"{shown:>8}  {m['wins']}/{m['ties']}/{m['losses']}")
        gaps = part["chosen_minus_hidden"]
        print(f"  score chosen by - hidden score of the chosen node (mean): validation "
              f"{_fmt(gaps['validation'], 0)}, holdout {_fmt(gaps['holdout'], 0)}"
              f"{' (for rmse, negative is optimistic)' if part['lower_is_better'] else ''}")
        print(f"  top-{TOP_K} ensemble kept (beat the best single on the holdout) on "
              f"{part['ensembles_kept']}/{part['seeds']} seeds")
        for score, figures in part["as_estimates"].items():
            print(f"  {score} score as an estimate of the hidden one, all nodes: mean |error| "
                  f"{_fmt(figures['mean_abs_error'], 0)}, rank correlation with hidden "
                  f"{_fmt(figures['rank_correlation'], 0)}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1 seed per family")
    parser.add_argument("--seeds", type=int, default=None,
                        help="seeds per family (default: 8 for auc, 4 for rmse; 1 quick)")
    parser.add_argument("--families", nargs="+", choices=sorted(FAMILIES),
                        default=sorted(FAMILIES))
    parser.add_argument("--jobs", type=int, default=2, help="node scripts run at once")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="keep the tasks, views and node workspaces here")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    runs: list[RunResult] = []
    with tempfile.TemporaryDirectory(prefix="bench-holdout-") as temp:
        root = args.workdir or Path(temp)
        for name in args.families:
            default = {"auc": 8, "rmse": 4}[name]
            seeds = 1 if args.quick else (args.seeds or default)
            for seed in range(seeds):
                run = run_task(FAMILIES[name], seed, root / f"{name}-{seed}", args.jobs)
                print_run(run)
                runs.append(run)
    wall_s = time.perf_counter() - started
    summary = summarise(runs)
    print_summary(summary, wall_s)
    if args.json is not None:
        args.json.write_text(json.dumps({"runs": [asdict(r) for r in runs],
                                         "summary": summary, "wall_s": wall_s},
                                        indent=2, default=_finite), encoding="utf-8")
    return 0


def _finite(value: object) -> object:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    raise TypeError(f"{type(value).__name__} is not JSON")


if __name__ == "__main__":
    sys.exit(main())
