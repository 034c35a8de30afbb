"""The improve operator's single changes: each edits a few recipe fields, and says how.

Hyperparameters move on a log scale (halving or doubling, quartering the penalties), and every
change adds its name to the recipe's `changes`. A change may read the parent's run facts: the
learning-rate changes size the round cap from the rounds the parent's LightGBM used.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from mlmaster_daemon.coders.offline.facts import RunFacts
from mlmaster_daemon.coders.offline.recipe import (
    BOOSTERS,
    DATA_FIELDS,
    MAX_CHANGES,
    MAX_ESTIMATORS,
    NAN_TOLERANT,
    SCALE_SENSITIVE,
    Recipe,
    default_recipe,
)

HYPERPARAMETERS = frozenset({
    "n_estimators", "learning_rate", "max_depth", "min_samples_leaf", "reg_strength",
    "n_neighbors", "num_leaves", "feature_fraction", "bagging_fraction",
})
# The recipe fields each change may touch besides `changes`; it never touches any other.
CHANGE_FIELDS: dict[str, frozenset[str]] = {
    "more_estimators": frozenset({"n_estimators"}),
    "lower_learning_rate": frozenset({"learning_rate", "n_estimators"}),
    "higher_learning_rate": frozenset({"learning_rate", "n_estimators"}),
    "more_capacity": frozenset({"num_leaves", "max_depth", "min_samples_leaf"}),
    "less_capacity": frozenset({"num_leaves", "max_depth", "min_samples_leaf"}),
    "more_leaf_samples": frozenset({"min_samples_leaf"}),
    "fewer_leaf_samples": frozenset({"min_samples_leaf"}),
    "stronger_regularisation": frozenset({"reg_strength", "n_neighbors"}),
    "weaker_regularisation": frozenset({"reg_strength", "n_neighbors"}),
    "fewer_features_per_tree": frozenset({"feature_fraction"}),
    "more_features_per_tree": frozenset({"feature_fraction"}),
    "fewer_rows_per_tree": frozenset({"bagging_fraction"}),
    "more_rows_per_tree": frozenset({"bagging_fraction"}),
    "categorical_encoding": frozenset({"categorical"}),
    "parse_dates": frozenset({"dates"}),
    "text_tfidf": frozenset({"text"}),
    "impute": frozenset({"impute", "missing_indicators"}),
    "missing_indicators": frozenset({"missing_indicators"}),
    "add_ratios": frozenset({"ratios"}),
    "add_features": frozenset({"feature_engineering"}),
    "add_scaling": frozenset({"scale"}),
    "class_weight": frozenset({"class_weight"}),
    "switch_family": HYPERPARAMETERS | {"family", "categorical", "impute", "scale"},
    "ensemble": frozenset({"partners"}),
}
# Changes that undo each other: a child does not undo its parent's last change.
INVERSE = {
    "lower_learning_rate": "higher_learning_rate", "higher_learning_rate": "lower_learning_rate",
    "more_capacity": "less_capacity", "less_capacity": "more_capacity",
    "more_leaf_samples": "fewer_leaf_samples", "fewer_leaf_samples": "more_leaf_samples",
    "stronger_regularisation": "weaker_regularisation",
    "weaker_regularisation": "stronger_regularisation",
    "fewer_features_per_tree": "more_features_per_tree",
    "more_features_per_tree": "fewer_features_per_tree",
    "fewer_rows_per_tree": "more_rows_per_tree", "more_rows_per_tree": "fewer_rows_per_tree",
}
FRACTIONS = (0.2, 0.35, 0.5, 0.65, 0.8, 1.0)
ROW_FRACTIONS = (0.5, 0.65, 0.8, 1.0)
MIN_LEARNING_RATE = 0.01
MAX_LEARNING_RATE = 0.3
MAX_TREES = 1500
MAX_LEAVES = 256
MAX_LEAF_SAMPLES = 400
MAX_PENALTY = 100.0
# The range a linear model's penalty (ridge's alpha, logistic regression's C) moves in.
LINEAR_PENALTY_RANGE = (1e-4, 1e4)
# Encodings worth trying per family, in order of preference.
ENCODINGS: dict[str, tuple[str, ...]] = {
    "lightgbm": ("native", "target", "frequency", "ordinal"),
    "hist_gradient_boosting": ("native", "target", "frequency", "ordinal"),
    "random_forest": ("ordinal", "target", "frequency", "onehot"),
    "extra_trees": ("ordinal", "target", "frequency", "onehot"),
}
LINEAR_ENCODINGS = ("onehot", "target", "frequency")


@dataclass(frozen=True)
class Improvement:
    """One applied change: its name, the new recipe and a sentence describing it."""

    change: str
    recipe: Recipe
    description: str


Edit = Callable[[Recipe, RunFacts, random.Random], tuple[Recipe, str]]


def apply_change(recipe: Recipe, change: str, facts: RunFacts, families: tuple[str, ...],
                 rng: random.Random) -> Improvement:
    """`recipe` with `change` applied (KeyError for an unknown name). `families` are the task
    type's families, for the changes that bring in another one."""
    if change == "switch_family":
        edited, text = _switch_family(recipe, families, rng)
    elif change == "ensemble":
        edited, text = _ensemble(recipe, families, rng)
    else:
        edited, text = _EDITS[change](recipe, facts, rng)
    history = (*edited.changes, change)[-MAX_CHANGES:]
    return Improvement(change, replace(edited, changes=history), text)


def encodings(family: str) -> tuple[str, ...]:
    return ENCODINGS.get(family, LINEAR_ENCODINGS)


def _rounds_for(recipe: Recipe, facts: RunFacts, rate: float) -> int:
    """A LightGBM round cap for learning rate `rate`: twice the rounds the parent's best
    iteration implies at that rate, when known."""
    if facts.best_iteration is None:
        return min(MAX_ESTIMATORS, int(recipe.n_estimators * recipe.learning_rate / rate))
    needed = facts.best_iteration * recipe.learning_rate / rate
    return max(500, min(MAX_ESTIMATORS, int(2 * needed)))


def _more_estimators(recipe: Recipe, facts: RunFacts, _: random.Random) -> tuple[Recipe, str]:
    if recipe.family == "lightgbm":
        count = min(MAX_ESTIMATORS, recipe.n_estimators * 2)
        why = " (the parent used every round it had)" if facts.hit_rounds_cap else ""
        return (replace(recipe, n_estimators=count),
                f"raise the boosting round cap from {recipe.n_estimators} to {count}{why}")
    count = min(MAX_TREES, int(recipe.n_estimators * 1.5))
    return (replace(recipe, n_estimators=count),
            f"grow {count} trees or iterations instead of {recipe.n_estimators}")


def _lower_rate(recipe: Recipe, facts: RunFacts, _: random.Random) -> tuple[Recipe, str]:
    rate = max(MIN_LEARNING_RATE, round(recipe.learning_rate / 2, 4))
    if recipe.family == "lightgbm":
        cap = _rounds_for(recipe, facts, rate)
        seen = ("" if facts.best_iteration is None
                else f", sized from the parent's best iteration {facts.best_iteration}")
    else:
        cap = min(MAX_TREES, int(recipe.n_estimators * recipe.learning_rate / rate))
        seen = ""
    return (replace(recipe, learning_rate=rate, n_estimators=cap),
            f"halve the learning rate to {rate:g} with up to {cap} rounds{seen}")


def _higher_rate(recipe: Recipe, facts: RunFacts, _: random.Random) -> tuple[Recipe, str]:
    rate = min(MAX_LEARNING_RATE, round(recipe.learning_rate * 2, 4))
    cap = recipe.n_estimators if recipe.family == "lightgbm" else max(
        50, int(recipe.n_estimators * recipe.learning_rate / rate))
    why = " because the parent ran out of time" if facts.time_bound else ""
    return (replace(recipe, learning_rate=rate, n_estimators=cap),
            f"double the learning rate to {rate:g} (up to {cap} rounds){why}")


def _capacity(grow: bool) -> Edit:
    """Bigger trees with smaller leaves, or the reverse: one step along model complexity."""
    def edit(recipe: Recipe, _: RunFacts, __: random.Random) -> tuple[Recipe, str]:
        leaf = (max(2 if recipe.family in BOOSTERS else 1, recipe.min_samples_leaf // 2) if grow
                else min(MAX_LEAF_SAMPLES, recipe.min_samples_leaf * 2))
        if recipe.family in BOOSTERS:
            count = (min(MAX_LEAVES, recipe.num_leaves * 2) if grow
                     else max(4, recipe.num_leaves // 2))
            return (replace(recipe, num_leaves=count, min_samples_leaf=leaf, max_depth=None),
                    f"use trees of up to {count} leaves (was {recipe.num_leaves}) needing "
                    f"{leaf} rows per leaf (was {recipe.min_samples_leaf})")
        return (replace(recipe, min_samples_leaf=leaf, max_depth=None if grow else
                        recipe.max_depth),
                f"require {leaf} samples per leaf instead of {recipe.min_samples_leaf}")
    return edit


def _leaf_samples(more: bool) -> Edit:
    def edit(recipe: Recipe, _: RunFacts, __: random.Random) -> tuple[Recipe, str]:
        count = (min(MAX_LEAF_SAMPLES, recipe.min_samples_leaf * 2) if more
                 else max(2, recipe.min_samples_leaf // 2))
        return (replace(recipe, min_samples_leaf=count),
                f"require {count} rows per leaf instead of {recipe.min_samples_leaf}")
    return edit


def _regularise(stronger: bool) -> Edit:
    def edit(recipe: Recipe, _: RunFacts, __: random.Random) -> tuple[Recipe, str]:
        if recipe.family == "knn":
            count = (min(200, round(recipe.n_neighbors * 1.6)) if stronger
                     else max(1, round(recipe.n_neighbors / 1.6)))
            return (replace(recipe, n_neighbors=count),
                    f"use {count} neighbours instead of {recipe.n_neighbors}")
        value = recipe.reg_strength
        # C is an inverse penalty; the others are penalties.
        up = stronger != (recipe.family == "logistic_regression")
        if up:
            # From no penalty at all, start where scikit-learn's and LightGBM's scales do.
            new = 1.0 if value == 0 else value * 4
            new = min(new, MAX_PENALTY if recipe.family in BOOSTERS else LINEAR_PENALTY_RANGE[1])
        else:
            new = value / 4
            floor = LINEAR_PENALTY_RANGE[0]
            new = 0.0 if new < 0.1 and recipe.family in BOOSTERS else max(new, floor)
        what = {"logistic_regression": "C", "ridge": "alpha"}.get(recipe.family, "L2 penalty")
        return (replace(recipe, reg_strength=round(new, 6)),
                f"set the {what} from {value:g} to {new:g}")
    return edit


def _fraction(fewer: bool, rows: bool = False) -> Edit:
    """One step down or up the grid of the share of features (or rows) each tree sees."""
    grid, name = (ROW_FRACTIONS, "bagging_fraction") if rows else (FRACTIONS, "feature_fraction")
    what = "rows" if rows else "features"

    def edit(recipe: Recipe, _: RunFacts, __: random.Random) -> tuple[Recipe, str]:
        current: float = getattr(recipe, name)
        near = min(range(len(grid)), key=lambda i: abs(grid[i] - current))
        value = grid[max(0, near - 1) if fewer else min(len(grid) - 1, near + 1)]
        edited = (replace(recipe, bagging_fraction=value) if rows
                  else replace(recipe, feature_fraction=value))
        return edited, f"let each tree see {value:.0%} of the {what} (was {current:.0%})"
    return edit


def _encoding(recipe: Recipe, _: RunFacts, rng: random.Random) -> tuple[Recipe, str]:
    mode = rng.choice([m for m in encodings(recipe.family) if m != recipe.categorical])
    return (replace(recipe, categorical=mode),
            f"encode categorical columns as {mode} instead of {recipe.categorical}")


def _flag(fields: tuple[str, ...], text: str) -> Edit:
    """An edit that switches the recipe's boolean `fields` on."""
    def edit(recipe: Recipe, _: RunFacts, __: random.Random) -> tuple[Recipe, str]:
        switched: dict[str, Any] = dict.fromkeys(fields, True)
        return replace(recipe, **switched), text
    return edit


def _needs(recipe: Recipe, family: str) -> Recipe:
    """`recipe` with what `family` needs to run on it: imputation, scaling, its encoding."""
    return replace(
        recipe,
        impute=recipe.impute or family not in NAN_TOLERANT,
        scale=recipe.scale or family in SCALE_SENSITIVE,
        categorical=(recipe.categorical if recipe.categorical in encodings(family)
                     else encodings(family)[0]),
    )


def _switch_family(recipe: Recipe, families: tuple[str, ...],
                   rng: random.Random) -> tuple[Recipe, str]:
    options = [name for name in families if name not in recipe.models]
    family = rng.choice(options or [name for name in families if name != recipe.family])
    fresh = default_recipe(family, recipe.seed)
    data = {name: getattr(recipe, name) for name in DATA_FIELDS}
    switched = _needs(replace(fresh, **data, partners=recipe.partners, changes=recipe.changes),
                      family)
    return switched, f"switch the model from {recipe.family} to {family} with its defaults"


def _ensemble(recipe: Recipe, families: tuple[str, ...],
              rng: random.Random) -> tuple[Recipe, str]:
    # A model without LightGBM gains most from it; LightGBM from models unlike it: a linear
    # model or randomised trees.
    diverse: tuple[str, ...] = ("extra_trees", "logistic_regression", "ridge")
    liked = [name for name in diverse if name in families and name not in recipe.models]
    options = liked or [name for name in families if name not in recipe.models]
    family = "lightgbm" if "lightgbm" not in recipe.models else rng.choice(options)
    data = {name: getattr(recipe, name) for name in DATA_FIELDS}
    partner = _needs(replace(default_recipe(family, recipe.seed + 1), **data), family)
    text = (f"fit a {family} model on the same folds and blend it in, with a weight chosen on "
            "out-of-fold predictions, only where the blend beats the best model alone")
    return replace(recipe, partners=(*recipe.partners, partner)), text


_EDITS: dict[str, Edit] = {
    "more_estimators": _more_estimators,
    "lower_learning_rate": _lower_rate,
    "higher_learning_rate": _higher_rate,
    "more_capacity": _capacity(grow=True),
    "less_capacity": _capacity(grow=False),
    "more_leaf_samples": _leaf_samples(more=True),
    "fewer_leaf_samples": _leaf_samples(more=False),
    "stronger_regularisation": _regularise(stronger=True),
    "weaker_regularisation": _regularise(stronger=False),
    "fewer_features_per_tree": _fraction(fewer=True),
    "more_features_per_tree": _fraction(fewer=False),
    "fewer_rows_per_tree": _fraction(fewer=True, rows=True),
    "more_rows_per_tree": _fraction(fewer=False, rows=True),
    "categorical_encoding": _encoding,
}
# Changes that switch features on: the recipe fields they set, and what they do.
_FLAGS: dict[str, tuple[tuple[str, ...], str]] = {
    "parse_dates": (("dates",), "parse date columns into year, month, day, weekday, hour and "
                    "days since 1970"),
    "text_tfidf": (("text",), "add TF-IDF features of the text columns (sparse for linear "
                   "models, SVD components for trees)"),
    "impute": (("impute", "missing_indicators"), "impute missing values with training medians "
               "and add a missing-indicator per column"),
    "missing_indicators": (("missing_indicators",), "add a missing-value indicator for each "
                           "column with gaps"),
    "add_ratios": (("ratios",), "add ratios and differences of the numeric columns most "
                   "correlated with the target"),
    "add_features": (("feature_engineering",), "add row-wise statistics (mean, std, min, max) "
                     "and a per-row missing-value count"),
    "add_scaling": (("scale",), "standardise the features, which distance and linear models "
                    "are sensitive to"),
    "class_weight": (("class_weight",), "weight the classes by inverse frequency, for the "
                     "imbalanced classes"),
}
_EDITS.update({name: _flag(fields, text) for name, (fields, text) in _FLAGS.items()})
