"""Render a `Recipe` into a complete, runnable training script for one task.

The script follows the solution contract: it reads `input/<train|test|sample>`, writes
`./submission/submission.csv` in the sample's exact columns and order and
`./metrics.json` = `{"validation_metric": float}` computed on held-out rows with the task's
metric, and keeps scratch files under `./working/`.
"""

from __future__ import annotations

from mlmaster_daemon.coders.offline.recipe import Recipe, default_recipe, normalise_family
from mlmaster_daemon.coders.offline.script import (
    EVALUATE,
    FEATURES,
    HOLDOUT,
    KFOLD,
    LOAD,
    PREDICT,
    SUBMISSION_TAIL,
    TARGET,
)
from mlmaster_daemon.tasks.spec import Metric, TaskSpec

_SKLEARN_CLASSES: dict[str, tuple[str, str, str]] = {
    "logistic_regression": ("sklearn.linear_model", "LogisticRegression", "LogisticRegression"),
    "ridge": ("sklearn.linear_model", "Ridge", "Ridge"),
    "random_forest": ("sklearn.ensemble", "RandomForestClassifier", "RandomForestRegressor"),
    "extra_trees": ("sklearn.ensemble", "ExtraTreesClassifier", "ExtraTreesRegressor"),
    "hist_gradient_boosting": (
        "sklearn.ensemble",
        "HistGradientBoostingClassifier",
        "HistGradientBoostingRegressor",
    ),
    "knn": ("sklearn.neighbors", "KNeighborsClassifier", "KNeighborsRegressor"),
}


def render(recipe: Recipe, task: TaskSpec) -> str:
    """The full script for `recipe` on `task`; its first line is `recipe.header()`."""
    regression = task.metric.is_regression
    models = tuple(normalise_family(name, regression) for name in recipe.models)
    sections = [
        recipe.header(),
        _docstring(recipe, task, models),
        _imports(recipe, models, regression),
        _constants(recipe, task, models),
        LOAD,
        _features(recipe),
        TARGET[regression],
        _factory(recipe, models, regression),
        PREDICT[regression],
        EVALUATE[task.metric],
        KFOLD if recipe.cv_folds >= 2 else HOLDOUT,
        _submission(task.metric),
    ]
    return "\n".join(section.rstrip("\n") + "\n" for section in sections)


def _docstring(recipe: Recipe, task: TaskSpec, models: tuple[str, ...]) -> str:
    validation = (
        "a single 80/20 holdout split"
        if recipe.cv_folds < 2
        else f"{recipe.cv_folds}-fold out-of-fold predictions"
    )
    steps = [
        "ordinal-encoded categoricals" if recipe.encode_categoricals else "raw categoricals",
        "median imputation" if recipe.impute else "no imputation",
    ]
    if recipe.missing_indicators:
        steps.append("missing indicators")
    if recipe.feature_engineering:
        steps.append("row statistics and a missing count")
    if recipe.scale:
        steps.append("standard scaling")
    return (
        f'"""{" + ".join(models)} for {task.name}: {", ".join(steps)}.\n\n'
        f"Validated with {task.metric.value} on {validation}. Written by the offline coder.\n"
        '"""\n'
    )


def _imports(recipe: Recipe, models: tuple[str, ...], regression: bool) -> str:
    lines = [
        "import json",
        "import os",
        "import time",
        "",
        "# Small tabular data: one OpenMP thread avoids start-up cost and contention between runs.",
        'os.environ.setdefault("OMP_NUM_THREADS", "1")',
        "",
        "import numpy as np",
        "import pandas as pd",
    ]
    if "lightgbm" in models:
        lines.append("import lightgbm as lgb")
    from_imports: dict[str, set[str]] = {
        "sklearn": {"metrics"},
        "sklearn.model_selection": {"KFold", "StratifiedKFold", "train_test_split"},
    }
    if recipe.scale:
        from_imports.setdefault("sklearn.preprocessing", set()).add("StandardScaler")
    for name in models:
        if name in _SKLEARN_CLASSES:
            module, classifier, regressor = _SKLEARN_CLASSES[name]
            from_imports.setdefault(module, set()).add(regressor if regression else classifier)
    for module in sorted(from_imports):
        lines.append(f"from {module} import {', '.join(sorted(from_imports[module]))}")
    return "\n".join(lines) + "\n"


def _constants(recipe: Recipe, task: TaskSpec, models: tuple[str, ...]) -> str:
    return (
        f"TARGET = {task.target!r}\n"
        f"ID_COL = {task.id_column!r}\n"
        f"METRIC = {task.metric.value!r}\n"
        f"MAP_K = {task.map_k!r}\n"
        f"SEED = {recipe.seed!r}\n"
        f"MODELS = {models!r}\n"
        f"N_FOLDS = {max(recipe.cv_folds, 0)!r}\n"
        f'TRAIN_PATH = os.path.join("input", {task.train_file!r})\n'
        f'TEST_PATH = os.path.join("input", {task.test_file!r})\n'
        f'SAMPLE_PATH = os.path.join("input", {task.sample_submission_file!r})\n'
    )


def _features(recipe: Recipe) -> str:
    parts = [FEATURES["base"]]
    if recipe.feature_engineering:
        parts.append(FEATURES["engineering"])
    if recipe.encode_categoricals:
        parts.append(FEATURES["encode"])
    if recipe.missing_indicators:
        parts.append(FEATURES["indicators"])
    if recipe.impute:
        parts.append(FEATURES["impute"])
    parts.append(FEATURES["matrix"])
    if recipe.scale:
        parts.append(FEATURES["scale"])
    return "\n".join(parts)


def _factory(recipe: Recipe, models: tuple[str, ...], regression: bool) -> str:
    lines = [
        "",
        "def build_model(name, n_rows):",
        '    """A fresh, unfitted estimator of family `name` for `n_rows` training rows."""',
    ]
    for index, name in enumerate(models):
        # The partner of an ensemble keeps its family defaults; only the main model is tuned.
        params = recipe if index == 0 else default_recipe(name, recipe.seed)
        lines.append(f"    if name == {name!r}:")
        lines.append(f"        return {_constructor(name, params, regression)}")
    lines.append('    raise ValueError(f"unknown model family {name}")')
    return "\n".join(lines) + "\n"


def _constructor(name: str, recipe: Recipe, regression: bool) -> str:
    depth = recipe.max_depth
    if name == "lightgbm":
        kind = "LGBMRegressor" if regression else "LGBMClassifier"
        leaves = 31 if depth is None else max(2, min(31, 2**depth - 1))
        return (
            f"lgb.{kind}(n_estimators={recipe.n_estimators}, "
            f"learning_rate={recipe.learning_rate:g}, num_leaves={leaves}, "
            f"max_depth={-1 if depth is None else depth}, reg_lambda={recipe.reg_strength:g}, "
            "min_child_samples=10, subsample=0.9, subsample_freq=1, colsample_bytree=0.9, "
            "random_state=SEED, n_jobs=1, verbose=-1)"
        )
    cls = _SKLEARN_CLASSES[name][2 if regression else 1]
    if name == "logistic_regression":
        return f"{cls}(C={recipe.reg_strength:g}, max_iter=2000)"
    if name == "ridge":
        return f"{cls}(alpha={recipe.reg_strength:g}, random_state=SEED)"
    if name in ("random_forest", "extra_trees"):
        return (
            f"{cls}(n_estimators={recipe.n_estimators}, max_depth={depth!r}, "
            f"min_samples_leaf={recipe.min_samples_leaf}, random_state=SEED, n_jobs=1)"
        )
    if name == "hist_gradient_boosting":
        return (
            f"{cls}(max_iter={recipe.n_estimators}, learning_rate={recipe.learning_rate:g}, "
            f"max_depth={depth!r}, l2_regularization={recipe.reg_strength:g}, "
            "early_stopping=False, random_state=SEED)"
        )
    # KNN cannot ask for more neighbours than there are training rows.
    return f'{cls}(n_neighbors=min({recipe.n_neighbors}, max(1, n_rows - 1)), weights="distance")'


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
        "id_name = ID_COL if ID_COL in sample.columns else str(sample.columns[0])\n"
        "value_cols = [c for c in sample.columns if c != id_name]\n"
        "ids = test[ID_COL].to_numpy() if ID_COL in test.columns else sample[id_name].to_numpy()\n"
        "submission = pd.DataFrame({id_name: ids})\n"
    )
    return head + fill + SUBMISSION_TAIL
