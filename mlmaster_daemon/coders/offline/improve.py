"""The improve operator's single-change edits of a working recipe."""

from __future__ import annotations

import random
from collections.abc import Callable, Collection
from dataclasses import dataclass, replace
from typing import TypeVar

from mlmaster_daemon.coders.offline.recipe import (
    BOOSTERS,
    MAX_ESTIMATORS,
    NAN_TOLERANT,
    SCALE_SENSITIVE,
    TREE_ENSEMBLES,
    Recipe,
    families_for,
)

_T = TypeVar("_T")

# The recipe fields each change may touch; a change never touches any other field.
CHANGE_FIELDS: dict[str, frozenset[str]] = {
    "more_estimators": frozenset({"n_estimators", "learning_rate"}),
    "tune_regularisation": frozenset(
        {"reg_strength", "min_samples_leaf", "max_depth", "n_neighbors"}
    ),
    "add_scaling": frozenset({"scale"}),
    "add_features": frozenset({"feature_engineering"}),
    "kfold_cv": frozenset({"cv_folds"}),
    "ensemble": frozenset({"ensemble_with"}),
    "impute": frozenset({"impute", "missing_indicators"}),
}

_C_GRID = (0.1, 0.3, 1.0, 3.0, 10.0)
_ALPHA_GRID = (0.1, 0.3, 1.0, 3.0, 10.0, 30.0)
_LEAF_GRID = (1, 2, 4, 8)
_DEPTH_GRID: tuple[int | None, ...] = (3, 4, 6, 8, None)
_NEIGHBOUR_GRID = (5, 10, 15, 25, 40)


@dataclass(frozen=True)
class Improvement:
    """One applied change: its name, the new recipe and a sentence describing it."""

    change: str
    recipe: Recipe
    description: str


def applicable_changes(recipe: Recipe) -> list[str]:
    """Names of the changes that would alter `recipe`, in `CHANGE_FIELDS` order."""
    tests: dict[str, bool] = {
        "more_estimators": recipe.family in TREE_ENSEMBLES and recipe.n_estimators < MAX_ESTIMATORS,
        "tune_regularisation": True,
        "add_scaling": not recipe.scale and any(m in SCALE_SENSITIVE for m in recipe.models),
        "add_features": not recipe.feature_engineering,
        "kfold_cv": recipe.cv_folds < 2,
        "ensemble": recipe.ensemble_with is None,
        "impute": not recipe.impute,
    }
    return [name for name in CHANGE_FIELDS if tests[name]]


def choose_change(recipe: Recipe, tried: Collection[str], rng: random.Random) -> str:
    """A seeded pick among applicable changes, preferring those no sibling has tried."""
    applicable = applicable_changes(recipe)
    fresh = [name for name in applicable if name not in tried]
    return rng.choice(fresh or applicable)


def apply_change(
    recipe: Recipe, change: str, is_regression: bool, rng: random.Random
) -> Improvement:
    """`recipe` with `change` applied; raises KeyError for an unknown change name."""
    return _CHANGES[change](recipe, is_regression, rng)


def _more_estimators(recipe: Recipe, _: bool, __: random.Random) -> Improvement:
    count = min(MAX_ESTIMATORS, int(recipe.n_estimators * 1.5))
    if recipe.family in BOOSTERS:
        rate = max(0.01, round(recipe.learning_rate * 0.6, 4))
        text = (
            f"raise the boosting rounds from {recipe.n_estimators} to {count} and lower the "
            f"learning rate from {recipe.learning_rate:g} to {rate:g}"
        )
        return Improvement(
            "more_estimators", replace(recipe, n_estimators=count, learning_rate=rate), text
        )
    text = f"grow the forest from {recipe.n_estimators} to {count} trees"
    return Improvement("more_estimators", replace(recipe, n_estimators=count), text)


def _pick_other(current: _T, grid: tuple[_T, ...], rng: random.Random) -> _T:
    return rng.choice([value for value in grid if value != current])


def _tune(recipe: Recipe, _: bool, rng: random.Random) -> Improvement:
    name = "tune_regularisation"
    if recipe.family == "logistic_regression":
        value = _pick_other(recipe.reg_strength, _C_GRID, rng)
        text = f"set the inverse regularisation C from {recipe.reg_strength:g} to {value:g}"
        return Improvement(name, replace(recipe, reg_strength=value), text)
    if recipe.family == "ridge":
        value = _pick_other(recipe.reg_strength, _ALPHA_GRID, rng)
        text = f"set the ridge penalty alpha from {recipe.reg_strength:g} to {value:g}"
        return Improvement(name, replace(recipe, reg_strength=value), text)
    if recipe.family == "knn":
        count = _pick_other(recipe.n_neighbors, _NEIGHBOUR_GRID, rng)
        text = f"use {count} neighbours instead of {recipe.n_neighbors}"
        return Improvement(name, replace(recipe, n_neighbors=count), text)
    if recipe.family in BOOSTERS:
        depth = _pick_other(recipe.max_depth, _DEPTH_GRID, rng)
        text = f"limit the tree depth to {depth} (was {recipe.max_depth})"
        return Improvement(name, replace(recipe, max_depth=depth), text)
    leaf = _pick_other(recipe.min_samples_leaf, _LEAF_GRID, rng)
    text = f"require {leaf} samples per leaf instead of {recipe.min_samples_leaf}"
    return Improvement(name, replace(recipe, min_samples_leaf=leaf), text)


def _add_scaling(recipe: Recipe, _: bool, __: random.Random) -> Improvement:
    text = "standardise the features, which distance and linear models are sensitive to"
    return Improvement("add_scaling", replace(recipe, scale=True), text)


def _add_features(recipe: Recipe, _: bool, __: random.Random) -> Improvement:
    text = (
        "add row-wise statistics (mean, std, min, max) over the numeric features and a "
        "per-row missing-value count"
    )
    return Improvement("add_features", replace(recipe, feature_engineering=True), text)


def _kfold(recipe: Recipe, _: bool, __: random.Random) -> Improvement:
    text = (
        "switch from the holdout split to 5-fold cross-validation, scoring out-of-fold "
        "predictions and averaging the test predictions over the folds"
    )
    return Improvement("kfold_cv", replace(recipe, cv_folds=5), text)


def _ensemble(recipe: Recipe, is_regression: bool, rng: random.Random) -> Improvement:
    partners = [name for name in families_for(is_regression) if name != recipe.family]
    if not recipe.impute:
        # Without imputation only a NaN-tolerant partner is sure to run on this data.
        partners = [name for name in partners if name in NAN_TOLERANT]
    if not recipe.scale:
        partners = [name for name in partners if name not in SCALE_SENSITIVE] or partners
    partner = rng.choice(partners)
    text = f"ensemble with a {partner} model by averaging the two models' predictions"
    return Improvement("ensemble", replace(recipe, ensemble_with=partner), text)


def _impute(recipe: Recipe, _: bool, __: random.Random) -> Improvement:
    text = "impute missing values with training medians and add a missing-indicator per column"
    return Improvement("impute", replace(recipe, impute=True, missing_indicators=True), text)


_CHANGES: dict[str, Callable[[Recipe, bool, random.Random], Improvement]] = {
    "more_estimators": _more_estimators,
    "tune_regularisation": _tune,
    "add_scaling": _add_scaling,
    "add_features": _add_features,
    "kfold_cv": _kfold,
    "ensemble": _ensemble,
    "impute": _impute,
}
