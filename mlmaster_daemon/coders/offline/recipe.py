"""The offline coder's solution recipe: what one generated script does, and its text forms.

A `Recipe` is embedded in a script's first line (`# mlmaster-recipe: {json}`) so a later
improve or debug step can read the parent back with `parse_recipe`. Summaries are one line of
`key=value` pairs joined by `"; "` (see `format_summary` / `parse_summary`).
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
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
TREE_ENSEMBLES = frozenset({"random_forest", "extra_trees", "hist_gradient_boosting", "lightgbm"})
BOOSTERS = frozenset({"hist_gradient_boosting", "lightgbm"})
SCALE_SENSITIVE = frozenset({"logistic_regression", "ridge", "knn"})
# Families that accept NaN on every supported scikit-learn; forests only do on newer releases.
NAN_TOLERANT = frozenset({"hist_gradient_boosting", "lightgbm"})

MAX_ESTIMATORS = 1200
MIN_ESTIMATORS = 25


@dataclass(frozen=True)
class Recipe:
    """Everything a generated script depends on besides the task.

    Hyperparameters apply to `family`; an ensemble partner uses its own defaults.
    `reg_strength` is C for logistic regression, alpha for ridge and the L2 penalty for the
    boosters. `cv_folds == 0` means a single 80/20 holdout split.
    """

    family: str
    n_estimators: int = 300
    learning_rate: float = 0.1
    max_depth: int | None = None
    min_samples_leaf: int = 1
    reg_strength: float = 1.0
    n_neighbors: int = 15
    encode_categoricals: bool = True
    impute: bool = False
    missing_indicators: bool = False
    scale: bool = False
    feature_engineering: bool = False
    cv_folds: int = 0
    ensemble_with: str | None = None
    seed: int = 0

    @property
    def cv_label(self) -> str:
        """`holdout` or `kfold<N>`."""
        return "holdout" if self.cv_folds < 2 else f"kfold{self.cv_folds}"

    @property
    def models(self) -> tuple[str, ...]:
        """The families the script fits, main one first."""
        return (self.family,) if self.ensemble_with is None else (self.family, self.ensemble_with)

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


def default_recipe(family: str, seed: int) -> Recipe:
    """A plain recipe for `family`: encoding on, no imputation, holdout validation."""
    if family in ("logistic_regression", "ridge"):
        return Recipe(family=family, reg_strength=1.0, seed=seed)
    if family == "hist_gradient_boosting":
        return Recipe(
            family=family, n_estimators=200, learning_rate=0.1, reg_strength=0.0, seed=seed
        )
    if family == "lightgbm":
        return Recipe(
            family=family, n_estimators=300, learning_rate=0.05, reg_strength=0.0, seed=seed
        )
    return Recipe(family=family, n_estimators=200, seed=seed)


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


def _recipe_from_dict(raw: dict[str, Any]) -> Recipe | None:
    family = raw.get("family")
    partner = raw.get("ensemble_with")
    if family not in ALL_FAMILIES or (partner is not None and partner not in ALL_FAMILIES):
        return None
    depth = raw.get("max_depth")
    try:
        return Recipe(
            family=str(family),
            n_estimators=_int(raw, "n_estimators", 300),
            learning_rate=_float(raw, "learning_rate", 0.1),
            max_depth=None if depth is None else _int(raw, "max_depth", 0),
            min_samples_leaf=_int(raw, "min_samples_leaf", 1),
            reg_strength=_float(raw, "reg_strength", 1.0),
            n_neighbors=_int(raw, "n_neighbors", 15),
            encode_categoricals=_bool(raw, "encode_categoricals", True),
            impute=_bool(raw, "impute", False),
            missing_indicators=_bool(raw, "missing_indicators", False),
            scale=_bool(raw, "scale", False),
            feature_engineering=_bool(raw, "feature_engineering", False),
            cv_folds=_int(raw, "cv_folds", 0),
            ensemble_with=None if partner is None else str(partner),
            seed=_int(raw, "seed", 0),
        )
    except (TypeError, ValueError):
        return None


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


def format_summary(recipe: Recipe, op: str, **extra: str) -> str:
    """One machine-readable line, e.g. `model=lightgbm; n_estimators=300; ...; op=draft`.

    Keys, in order: model, n_estimators, lr, cv, encode, impute, scale, fe, ensemble, op,
    then `extra` (the improve step adds `change=<name>`, the debug step `fix=<name>`).
    """
    pairs = {
        "model": recipe.family,
        "n_estimators": str(recipe.n_estimators),
        "lr": f"{recipe.learning_rate:g}",
        "cv": recipe.cv_label,
        "encode": _yes(recipe.encode_categoricals),
        "impute": _yes(recipe.impute),
        "scale": _yes(recipe.scale),
        "fe": _yes(recipe.feature_engineering),
        "ensemble": recipe.ensemble_with or "none",
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
