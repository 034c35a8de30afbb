"""Render a `Recipe` into a complete, runnable training script for one task.

The script follows the solution contract: it reads `input/<train|test|sample>`, writes
`./submission/submission.csv` in the sample's exact columns and order and `./metrics.json` =
`{"validation_metric": float, "fold_metrics": [float, ...]}`, scored with the task's metric
on out-of-fold predictions over the task's folds (`ScriptPlan`), and keeps scratch files
under `./working/`. It plans to end within `ScriptPlan.time_budget_s` seconds of its start.
"""

from __future__ import annotations

import json
from dataclasses import replace

from mlmaster_daemon.coders.offline.members import (
    ESTIMATOR_CLASSES,
    estimators_literal,
    members_literal,
)
from mlmaster_daemon.coders.offline.plan import ScriptPlan
from mlmaster_daemon.coders.offline.recipe import LINEAR, Recipe, normalise_family
from mlmaster_daemon.coders.offline.script_data import COLUMNS, LOAD, TARGET
from mlmaster_daemon.coders.offline.script_features import (
    CORE,
    DATES,
    RATIOS,
    TARGET_ENCODING,
    TEXT,
)
from mlmaster_daemon.coders.offline.script_metrics import EVALUATE
from mlmaster_daemon.coders.offline.script_models import LIGHTGBM, SKLEARN, dispatcher
from mlmaster_daemon.coders.offline.script_validate import (
    BLEND,
    FOLDS,
    MAIN,
    SUBMISSION_TAIL,
)
from mlmaster_daemon.tasks.spec import Metric, TaskSpec


def render(recipe: Recipe, task: TaskSpec, plan: ScriptPlan | None = None) -> str:
    """The full script for `recipe` on `task`; its first line is `recipe.header()`."""
    plan = plan or ScriptPlan()
    regression = task.metric.is_regression
    members = tuple(
        replace(member, family=normalise_family(member.family, regression))
        for member in (recipe.alone, *recipe.partners)
    )
    families = {member.family for member in members}
    sections = [
        recipe.header(),
        _docstring(members, task, plan),
        _imports(members, regression),
        _constants(recipe, task, plan),
        members_literal(members, regression),
        estimators_literal(members, regression),
        LOAD,
        COLUMNS,
        TARGET[regression],
        EVALUATE[task.metric],
        _features(members),
        LIGHTGBM if "lightgbm" in families else "",
        SKLEARN if families - {"lightgbm"} else "",
        dispatcher("lightgbm" in families, bool(families - {"lightgbm"})),
        FOLDS,
        BLEND,
        MAIN,
        _submission(task.metric),
    ]
    return "\n\n".join(section.strip("\n") + "\n" for section in sections if section)


def _docstring(members: tuple[Recipe, ...], task: TaskSpec, plan: ScriptPlan) -> str:
    described = "".join(f"- {_described(member)}\n" for member in members)
    blend = (
        "The members are blended with weights chosen on out-of-fold predictions, and the\n"
        "blend is kept only when it beats the best member alone.\n"
        if len(members) > 1 else ""
    )
    validation = (
        f"{plan.cv_folds}-fold cross-validation" if plan.cv_folds >= 2 else "one 80/20 split"
    )
    return (
        f'"""{" + ".join(m.family for m in members)} for {task.name}, written by the offline '
        "coder.\n\n"
        f"{described}\n"
        f"Validated with {task.metric.value} on the task's {validation} (seed {plan.cv_seed}),\n"
        f"the same rows for every node of the task.\n{blend}"
        '"""\n'
    )


def _described(recipe: Recipe) -> str:
    steps = [
        f"{recipe.categorical} categoricals" if recipe.encode_categoricals
        else "raw categoricals",
        "median imputation" if recipe.impute else "no imputation",
    ]
    named = {
        "missing_indicators": "missing indicators",
        "feature_engineering": "row statistics",
        "dates": "date parts",
        "text": "TF-IDF text features",
        "ratios": "ratios of numeric pairs",
        "scale": "standard scaling",
        "class_weight": "balanced class weights",
    }
    steps.extend(text for name, text in named.items() if getattr(recipe, name))
    return f"{recipe.family} with {', '.join(steps)}"


def _imports(members: tuple[Recipe, ...], regression: bool) -> str:
    lines = [
        "import time",
        "",
        "STARTED = time.time()",
        "",
        "import json",
        "import os",
        "import warnings",
        "",
        "# Two scripts share two cores: one OpenMP thread each avoids contention.",
        'os.environ.setdefault("OMP_NUM_THREADS", "1")',
        "",
        "import numpy as np",
        "import pandas as pd",
    ]
    families = {member.family for member in members}
    if "lightgbm" in families:
        lines.append("import lightgbm as lgb")
    from_imports: dict[str, set[str]] = {
        "sklearn": {"metrics"},
        "sklearn.model_selection": {"KFold", "StratifiedKFold", "train_test_split"},
    }
    if any(member.text for member in members):
        from_imports["scipy"] = {"sparse"}
        from_imports["sklearn.feature_extraction.text"] = {"TfidfVectorizer"}
        if any(member.family not in LINEAR for member in members if member.text):
            from_imports["sklearn.decomposition"] = {"TruncatedSVD"}
    for name in families - {"lightgbm"}:
        module, classifier, regressor = ESTIMATOR_CLASSES[name]
        from_imports.setdefault(module, set()).add(regressor if regression else classifier)
    for module in sorted(from_imports):
        lines.append(f"from {module} import {', '.join(sorted(from_imports[module]))}")
    lines += ["", "# Library warnings (convergence, deprecations) would crowd the log's tail,",
              "# where the next node reads this run's facts.", 'warnings.filterwarnings("ignore")']
    return "\n".join(lines) + "\n"


def _constants(recipe: Recipe, task: TaskSpec, plan: ScriptPlan) -> str:
    limit = (f"its {plan.node_timeout_s:.0f}s limit" if plan.node_timeout_s is not None
             else "the node's limit")
    return (
        f"TARGET = {_text(task.target)}\n"
        f"ID_COL = {_text(task.id_column)}\n"
        f"METRIC = {_text(task.metric.value)}\n"
        f"HIGHER_IS_BETTER = {not task.metric.lower_is_better!r}\n"
        f"MAP_K = {task.map_k!r}\n"
        f"SEED = {recipe.seed!r}\n"
        "# The task's validation plan: every node of the task scores on these same folds.\n"
        f"CV_FOLDS = {plan.cv_folds!r}\n"
        f"CV_SEED = {plan.cv_seed!r}\n"
        f"# Seconds this script plans to run, well inside {limit}: fits stop adding rounds\n"
        "# and folds near the deadline.\n"
        f"TIME_BUDGET = {plan.time_budget_s!r}\n"
        "DEADLINE = STARTED + TIME_BUDGET\n"
        "# Past this the run risks its limit: no further fold starts.\n"
        f"HARD_STOP = {plan.hard_stop_s!r}\n"
        f'TRAIN_PATH = os.path.join("input", {_text(task.train_file)})\n'
        f'TEST_PATH = os.path.join("input", {_text(task.test_file)})\n'
        f'SAMPLE_PATH = os.path.join("input", {_text(task.sample_submission_file)})\n'
    )


def _text(value: str) -> str:
    """A string literal in double quotes, like the rest of the script."""
    return json.dumps(value)


def _features(members: tuple[Recipe, ...]) -> str:
    parts = [CORE]
    if any(member.dates for member in members):
        parts.append(DATES)
    if any(member.text for member in members):
        parts.append(TEXT)
    if any(member.ratios for member in members):
        parts.append(RATIOS)
    if any(member.categorical == "target" and member.encode_categoricals
           for member in members):
        parts.append(TARGET_ENCODING)
    return "\n".join(parts)


def _submission(metric: Metric) -> str:
    if metric.is_regression:
        fill = "for col in value_cols:\n    submission[col] = test_pred\n"
    elif metric.needs_probabilities:
        fill = (
            "if len(value_cols) == 1:\n"
            "    # One prediction column: the probability of the positive (last sorted) class.\n"
            "    submission[value_cols[0]] = test_pred[:, -1]\n"
            "else:\n"
            "    for col in value_cols:\n"
            "        position = label_position.get(str(col))\n"
            "        submission[col] = test_pred[:, position] if position is not None else 0.0\n"
        )
    else:
        fill = (
            "if len(value_cols) == 1:\n"
            "    submission[value_cols[0]] = [classes[i] for i in test_pred.argmax(axis=1)]\n"
            "else:\n"
            "    for col in value_cols:\n"
            "        position = label_position.get(str(col))\n"
            "        submission[col] = test_pred[:, position] if position is not None else 0.0\n"
        )
    head = (
        "\n"
        "id_name = ID_COL if ID_COL in sample.columns else str(sample.columns[0])\n"
        "value_cols = [c for c in sample.columns if c != id_name]\n"
        "ids = test[ID_COL].to_numpy() if ID_COL in test.columns else sample[id_name].to_numpy()\n"
        "submission = pd.DataFrame({id_name: ids})\n"
    )
    return head + fill + SUBMISSION_TAIL
