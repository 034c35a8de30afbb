"""A recipe as the script's `MEMBERS` entries: model parameters and feature options.

One entry per member of the blend (the recipe, then its partners). Parameters are written out
as literals so that a reader of the script sees exactly what each model is given.
"""

from __future__ import annotations

import json

from mlmaster_daemon.coders.offline.recipe import LINEAR, Recipe

ESTIMATOR_CLASSES: dict[str, tuple[str, str, str]] = {
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
# Rounds without progress before LightGBM stops: 2.5 / learning rate (50 at 0.05), within
# these bounds.
MIN_PATIENCE = 25
MAX_PATIENCE = 200


def patience(recipe: Recipe) -> int:
    """Rounds LightGBM waits for a better validation score before it stops."""
    return max(MIN_PATIENCE, min(MAX_PATIENCE, round(2.5 / max(recipe.learning_rate, 1e-3))))


def model_params(recipe: Recipe, regression: bool) -> dict[str, object]:
    """The keyword arguments of the member's model (LightGBM: its training parameters)."""
    family, depth = recipe.family, recipe.max_depth
    weighted = recipe.class_weight and not regression
    if family == "lightgbm":
        return {
            "learning_rate": recipe.learning_rate,
            "num_leaves": recipe.num_leaves,
            "max_depth": -1 if depth is None else depth,
            "min_data_in_leaf": recipe.min_samples_leaf,
            "feature_fraction": recipe.feature_fraction,
            "bagging_fraction": recipe.bagging_fraction,
            "bagging_freq": 1 if recipe.bagging_fraction < 1.0 else 0,
            "lambda_l2": recipe.reg_strength,
            "seed": recipe.seed,
        }
    params: dict[str, object]
    if family == "hist_gradient_boosting":
        params = {
            "max_iter": recipe.n_estimators,
            "learning_rate": recipe.learning_rate,
            "max_leaf_nodes": recipe.num_leaves,
            "max_depth": depth,
            "min_samples_leaf": recipe.min_samples_leaf,
            "l2_regularization": recipe.reg_strength,
            "early_stopping": False,
            "random_state": recipe.seed,
        }
    elif family in ("random_forest", "extra_trees"):
        params = {
            "n_estimators": recipe.n_estimators,
            "max_depth": depth,
            "min_samples_leaf": recipe.min_samples_leaf,
            "max_features": recipe.feature_fraction,
            "random_state": recipe.seed,
            "n_jobs": 1,
        }
    elif family == "logistic_regression":
        params = {"C": recipe.reg_strength, "max_iter": 2000}
    elif family == "ridge":
        params = {"alpha": recipe.reg_strength}
    else:
        params = {"n_neighbors": recipe.n_neighbors, "weights": "distance"}
    # HistGradientBoosting is several times slower with sample weights, so it goes without.
    if weighted and family not in ("knn", "hist_gradient_boosting"):
        forest = family in ("random_forest", "extra_trees")
        params["class_weight"] = "balanced_subsample" if forest else "balanced"
    return params


def feature_options(recipe: Recipe) -> dict[str, object]:
    """The options `make_features` reads for this member."""
    return {
        "encode": recipe.encode_categoricals,
        "categorical": recipe.categorical,
        "dates": recipe.dates,
        "text": recipe.text,
        # Linear models take the sparse TF-IDF as it is; the others its SVD components.
        "sparse_text": recipe.family in LINEAR,
        "missing_indicators": recipe.missing_indicators,
        "row_stats": recipe.feature_engineering,
        "ratios": recipe.ratios,
        "impute": recipe.impute,
        "scale": recipe.scale,
    }


def members_literal(members: tuple[Recipe, ...], regression: bool) -> str:
    """`MEMBERS = [...]`: one dict per member, fields one per line."""
    lines = ["", "# The models this script fits on the same folds and blends, main one first.",
             "MEMBERS = ["]
    for recipe in members:
        lines.append("    {")
        lines.append(f'        "family": {_literal(recipe.family)},')
        lines.append(f'        "params": {_dict(model_params(recipe, regression), 12)},')
        if recipe.family == "lightgbm":
            lines.append(f'        "rounds": {recipe.n_estimators},')
            lines.append(f'        "patience": {patience(recipe)},')
        lines.append(f'        "class_weight": {recipe.class_weight and not regression!r},')
        lines.append(f'        "features": {_dict(feature_options(recipe), 12)},')
        lines.append("    },")
    lines.append("]")
    return "\n".join(lines) + "\n"


def estimators_literal(members: tuple[Recipe, ...], regression: bool) -> str:
    """`ESTIMATORS = {...}`: the scikit-learn class of each family used ("" when none)."""
    used = [name for name in dict.fromkeys(r.family for r in members) if name != "lightgbm"]
    if not used:
        return ""
    pairs = ", ".join(f"{_literal(name)}: {ESTIMATOR_CLASSES[name][2 if regression else 1]}"
                      for name in used)
    return f"ESTIMATORS = {{{pairs}}}\n"


def _dict(values: dict[str, object], indent: int) -> str:
    pad = " " * indent
    body = "".join(f"{pad}{_literal(key)}: {_literal(value)},\n" for key, value in values.items())
    return "{\n" + body + " " * (indent - 4) + "}"


def _literal(value: object) -> str:
    """A Python literal for `value`, strings in double quotes like the rest of the script."""
    return json.dumps(value) if isinstance(value, str) else repr(value)
