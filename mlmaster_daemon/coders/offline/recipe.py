"""The offline coder's solution recipe: what one generated script does, and its text forms.

A `Recipe` is embedded in a script's first line (`# mlmaster-recipe: {json}`) so a later
improve, debug or crossover step can read the parent back with `parse_recipe`. Headers written
by earlier versions (with `cv_folds` and a partner family in `ensemble_with`) still parse: the
validation plan now comes from the task, and a partner family becomes a partner recipe.
Summaries are one line of `key=value` pairs joined by `"; "` (`format_summary`/`parse_summary`).
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field, replace
from typing import Any

HEADER_PREFIX = "# mlmaster-recipe: "

CLASSIFICATION_FAMILIES: tuple[str, ...] = (
    "logistic_regression",
    "random_forest",
    "extra_trees",
    "hist_gradient_boosting",
    "lightgbm",
    "knn",
)
REGRESSION_FAMILIES: tuple[str, ...] = (
    "ridge",
    "random_forest",
    "extra_trees",
    "hist_gradient_boosting",
    "lightgbm",
    "knn",
)
ALL_FAMILIES = frozenset(CLASSIFICATION_FAMILIES + REGRESSION_FAMILIES)
FORESTS = frozenset({"random_forest", "extra_trees"})
BOOSTERS = frozenset({"hist_gradient_boosting", "lightgbm"})
TREE_ENSEMBLES = FORESTS | BOOSTERS
LINEAR = frozenset({"logistic_regression", "ridge"})
SCALE_SENSITIVE = LINEAR | {"knn"}
# Families that accept NaN on every supported scikit-learn; forests only do on newer releases.
NAN_TOLERANT = frozenset({"hist_gradient_boosting", "lightgbm"})
# How categorical columns become numbers: integer codes, LightGBM's / HistGradientBoosting's
# own categorical splits, one-hot columns, out-of-fold target means, or value frequencies.
CATEGORICAL_MODES = ("ordinal", "native", "onehot", "target", "frequency")

MAX_ESTIMATORS = 20_000
MIN_ESTIMATORS = 25
MAX_PARTNERS = 2
MAX_CHANGES = 8
# How a recipe handles the data, as opposed to its model's hyperparameters.
DATA_FIELDS = (
    "encode_categoricals", "impute", "missing_indicators", "scale", "feature_engineering",
    "dates", "text", "ratios",
)


@dataclass(frozen=True)
class Recipe:
    """Everything a generated script depends on besides the task and its validation plan.

    `n_estimators` is the trees of a forest, and the most boosting rounds of a booster (which
    stops earlier on its validation rows). `min_samples_leaf` is the rows a leaf needs (LightGBM's
    min_child_samples); `reg_strength` is C for logistic regression, alpha for ridge and the L2
    penalty for the boosters; `feature_fraction` the share of features each tree (forests: each
    split) sees. `partners` are further recipes fitted on the same folds and blended with this
    one by weights chosen on out-of-fold predictions; `changes` names the last improve changes
    that led here, oldest first.
    """

    family: str
    n_estimators: int = 300
    learning_rate: float = 0.1
    max_depth: int | None = None
    min_samples_leaf: int = 1
    reg_strength: float = 1.0
    n_neighbors: int = 15
    num_leaves: int = 31
    feature_fraction: float = 1.0
    bagging_fraction: float = 1.0
    encode_categoricals: bool = True
    categorical: str = "ordinal"
    impute: bool = False
    missing_indicators: bool = False
    scale: bool = False
    feature_engineering: bool = False
    dates: bool = False
    text: bool = False
    ratios: bool = False
    class_weight: bool = False
    partners: tuple[Recipe, ...] = field(default_factory=tuple)
    changes: tuple[str, ...] = field(default_factory=tuple)
    seed: int = 0

    @property
    def models(self) -> tuple[str, ...]:
        """The families the script fits, main one first."""
        return (self.family, *(partner.family for partner in self.partners))

    @property
    def alone(self) -> Recipe:
        """This recipe without partners or change history: one member of a blend."""
        return replace(self, partners=(), changes=())

    def to_json(self) -> str:
        """Compact, key-sorted JSON; `parse_recipe` reads it back to an equal recipe."""
        return json.dumps(asdict(self), separators=(",", ":"), sort_keys=True)

    def header(self) -> str:
        """The script's first line."""
        return HEADER_PREFIX + self.to_json()


def families_for(is_regression: bool) -> tuple[str, ...]:
    """The model families the offline coder drafts for a task type, in canonical order."""
    return REGRESSION_FAMILIES if is_regression else CLASSIFICATION_FAMILIES


def normalise_family(family: str, is_regression: bool) -> str:
    """Map the linear family to the task type's own (a recipe may cross task types)."""
    if is_regression and family == "logistic_regression":
        return "ridge"
    if not is_regression and family == "ridge":
        return "logistic_regression"
    return family


def default_recipe(family: str, seed: int, learning_rate: float = 0.05) -> Recipe:
    """A sensible recipe for `family`; no imputation, so NaN-intolerant families fail on NaN.

    `learning_rate` is the LightGBM draft's (a larger one for large data or little time).
    """
    if family in LINEAR:
        return Recipe(family=family, reg_strength=1.0, categorical="onehot", scale=True,
                      seed=seed)
    if family == "knn":
        return Recipe(family=family, categorical="onehot", scale=True, seed=seed)
    if family == "lightgbm":
        # LightGBM's own defaults (every feature and row for each tree), with a lower rate
        # and early stopping: a draft at least as good as the library's default model.
        return Recipe(family=family, n_estimators=3000, learning_rate=learning_rate,
                      min_samples_leaf=20, reg_strength=0.0, categorical="native", seed=seed)
    if family == "hist_gradient_boosting":
        return Recipe(family=family, n_estimators=300, learning_rate=0.1, min_samples_leaf=20,
                      reg_strength=0.0, categorical="native", seed=seed)
    return Recipe(family=family, n_estimators=300, feature_fraction=0.5, seed=seed)


def safe_baseline(seed: int) -> Recipe:
    """The recipe of last resort: histogram boosting with imputation and encoding."""
    return Recipe(
        family="hist_gradient_boosting",
        n_estimators=200,
        learning_rate=0.1,
        reg_strength=0.0,
        impute=True,
        missing_indicators=True,
        seed=seed,
    )


def parse_recipe(code: str) -> Recipe | None:
    """The recipe in `code`'s first non-blank line, or None when absent or malformed."""
    for line in code.splitlines():
        if not line.strip():
            continue
        if not line.startswith(HEADER_PREFIX):
            return None
        try:
            raw = json.loads(line[len(HEADER_PREFIX) :])
        except json.JSONDecodeError:
            return None
        return _recipe_from_dict(raw) if isinstance(raw, dict) else None
    return None


def _recipe_from_dict(raw: dict[str, Any], nested: bool = False) -> Recipe | None:
    family = raw.get("family")
    if family not in ALL_FAMILIES:
        return None
    depth = raw.get("max_depth")
    try:
        recipe = Recipe(
            family=str(family),
            n_estimators=_int(raw, "n_estimators", 300),
            learning_rate=_float(raw, "learning_rate", 0.1),
            max_depth=None if depth is None else _int(raw, "max_depth", 0),
            min_samples_leaf=_int(raw, "min_samples_leaf", 1),
            reg_strength=_float(raw, "reg_strength", 1.0),
            n_neighbors=_int(raw, "n_neighbors", 15),
            num_leaves=_int(raw, "num_leaves", 31),
            feature_fraction=_float(raw, "feature_fraction", 1.0),
            bagging_fraction=_float(raw, "bagging_fraction", 1.0),
            encode_categoricals=_bool(raw, "encode_categoricals", True),
            categorical=_choice(raw, "categorical", CATEGORICAL_MODES),
            impute=_bool(raw, "impute", False),
            missing_indicators=_bool(raw, "missing_indicators", False),
            scale=_bool(raw, "scale", False),
            feature_engineering=_bool(raw, "feature_engineering", False),
            dates=_bool(raw, "dates", False),
            text=_bool(raw, "text", False),
            ratios=_bool(raw, "ratios", False),
            class_weight=_bool(raw, "class_weight", False),
            changes=_names(raw.get("changes", [])),
            seed=_int(raw, "seed", 0),
        )
    except (TypeError, ValueError):
        return None
    if nested:
        return recipe
    partners = _partners(raw, recipe)
    return None if partners is None else replace(recipe, partners=partners)


def _partners(raw: dict[str, Any], main: Recipe) -> tuple[Recipe, ...] | None:
    """The partner recipes; an old header's `ensemble_with` family becomes that family's
    defaults with the main recipe's data handling."""
    listed = raw.get("partners", [])
    old = raw.get("ensemble_with")
    if not isinstance(listed, list) or (old is not None and old not in ALL_FAMILIES):
        return None
    partners = [_recipe_from_dict(item, nested=True) if isinstance(item, dict) else None
                for item in listed[:MAX_PARTNERS]]
    if any(partner is None for partner in partners):
        return None
    if old is not None and not partners:
        data = {name: getattr(main, name) for name in DATA_FIELDS}
        partners = [replace(default_recipe(str(old), main.seed), **data)]
    return tuple(partner for partner in partners if partner is not None)



def _int(raw: dict[str, Any], key: str, default: int) -> int:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{key} must be an integer")
    return value


def _float(raw: dict[str, Any], key: str, default: float) -> float:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{key} must be a number")
    return float(value)


def _bool(raw: dict[str, Any], key: str, default: bool) -> bool:
    value = raw.get(key, default)
    if not isinstance(value, bool):
        raise TypeError(f"{key} must be a boolean")
    return value


def _choice(raw: dict[str, Any], key: str, allowed: tuple[str, ...]) -> str:
    value = raw.get(key, allowed[0])
    if value not in allowed:
        raise ValueError(f"{key} must be one of {allowed}")
    return str(value)


def _names(value: object) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise TypeError("changes must be a list of names")
    return tuple(value[-MAX_CHANGES:])


def format_summary(recipe: Recipe, op: str, **extra: str) -> str:
    """One machine-readable line, e.g. `model=lightgbm; n_estimators=3000; ...; op=draft`.

    Keys, in order: model, n_estimators, lr, leaves, cat, encode, impute, scale, fe, features,
    ensemble, op, then `extra` (improve adds `change=<name>`, debug `fix=<name>`, crossover
    `parents=` and `rule=`).
    """
    extras = [name for name in ("dates", "text", "ratios", "missing_indicators", "class_weight")
              if getattr(recipe, name)]
    pairs = {
        "model": recipe.family,
        "n_estimators": str(recipe.n_estimators),
        "lr": f"{recipe.learning_rate:g}",
        "leaves": str(recipe.num_leaves),
        "cat": recipe.categorical,
        "encode": _yes(recipe.encode_categoricals),
        "impute": _yes(recipe.impute),
        "scale": _yes(recipe.scale),
        "fe": _yes(recipe.feature_engineering),
        "features": "+".join(extras) or "base",
        "ensemble": "+".join(partner.family for partner in recipe.partners) or "none",
        "op": op,
        **extra,
    }
    return "; ".join(f"{key}={value}" for key, value in pairs.items())


def parse_summary(summary: str) -> dict[str, str]:
    """The `key=value` pairs of a summary; parts without `=` are ignored."""
    pairs: dict[str, str] = {}
    for part in summary.split(";"):
        key, sep, value = part.partition("=")
        if sep and key.strip():
            pairs[key.strip()] = value.strip()
    return pairs


def summary_family(summary: str) -> str | None:
    """The model family a summary names: its `model=` tag, else the first family word in it."""
    tagged = parse_summary(summary).get("model", "")
    if tagged in ALL_FAMILIES:
        return tagged
    words: list[str] = re.findall(r"[a-z_]+", summary.lower())
    return next((word for word in words if word in ALL_FAMILIES), None)


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"
