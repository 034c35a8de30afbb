"""The improve operator: which single change to make to a working recipe, given the parent's
run (its facts) and what sibling improvements already tried.

Evidence first: date or text columns the parent left raw are parsed, a LightGBM that used
every round gets more, a run the time budget cut gets a faster learning rate. Otherwise a
seeded draw among the changes that apply, weighted towards those that usually pay, and away
from costly ones while time is short.
"""

from __future__ import annotations

import random
from collections.abc import Collection
from dataclasses import dataclass, field

from mlmaster_daemon.coders.offline.changes import (
    CHANGE_FIELDS,
    FRACTIONS,
    INVERSE,
    LINEAR_PENALTY_RANGE,
    MAX_LEAF_SAMPLES,
    MAX_LEARNING_RATE,
    MAX_LEAVES,
    MAX_PENALTY,
    MAX_TREES,
    MIN_LEARNING_RATE,
    ROW_FRACTIONS,
    Improvement,
    apply_change,
    encodings,
)
from mlmaster_daemon.coders.offline.facts import RunFacts
from mlmaster_daemon.coders.offline.recipe import (
    BOOSTERS,
    FORESTS,
    LINEAR,
    MAX_ESTIMATORS,
    MAX_PARTNERS,
    NAN_TOLERANT,
    SCALE_SENSITIVE,
    TREE_ENSEMBLES,
    Recipe,
    families_for,
)
from mlmaster_daemon.tasks.spec import Metric

__all__ = ["CHANGE_FIELDS", "Evidence", "Improvement", "applicable_changes", "choose_change",
           "improve"]

# How often each change is drawn when no evidence calls for one (relative weights).
WEIGHTS: dict[str, float] = {
    "more_estimators": 1.0,
    "lower_learning_rate": 3.0,
    "higher_learning_rate": 0.5,
    "more_capacity": 3.0,
    "less_capacity": 2.5,
    "more_leaf_samples": 1.0,
    "fewer_leaf_samples": 1.0,
    "stronger_regularisation": 1.5,
    "weaker_regularisation": 1.0,
    "fewer_features_per_tree": 2.0,
    "more_features_per_tree": 1.0,
    "fewer_rows_per_tree": 1.0,
    "more_rows_per_tree": 0.5,
    "categorical_encoding": 2.0,
    "parse_dates": 3.0,
    "text_tfidf": 3.0,
    "impute": 3.0,
    "missing_indicators": 1.0,
    "add_ratios": 1.0,
    "add_features": 1.0,
    "add_scaling": 3.0,
    "class_weight": 2.0,
    "switch_family": 0.5,
    "ensemble": 2.5,
}
# Changes that make a script markedly slower; drawn rarely while time is short.
COSTLY = frozenset({"lower_learning_rate", "more_estimators", "ensemble", "text_tfidf"})
SHORT_TIME_FACTOR = 0.1
WITHOUT_LIGHTGBM_FACTOR = 6.0
# Metrics that count each class's hits, where balanced class weights tend to pay.
BALANCED_METRICS = frozenset({Metric.F1, Metric.F1_MACRO, Metric.QWK})


@dataclass(frozen=True)
class Evidence:
    """What the improve step knows besides the recipe: the task's metric, the parent's run
    facts, and whether time is short (the parent was cut by its budget, or the task has
    little time left for a run like the parent's)."""

    metric: Metric
    facts: RunFacts = field(default_factory=RunFacts)
    time_short: bool = False

    @property
    def regression(self) -> bool:
        return self.metric.is_regression


def applicable_changes(recipe: Recipe, evidence: Evidence) -> list[str]:
    """Names of the changes that would alter `recipe` usefully, in `CHANGE_FIELDS` order."""
    facts, family = evidence.facts, recipe.family
    booster, lgbm = family in BOOSTERS, family == "lightgbm"
    undo = INVERSE.get(recipe.changes[-1]) if recipe.changes else None
    rounds_ok = not lgbm or facts.stopped is None or facts.hit_rounds_cap
    tests: dict[str, bool] = {
        "more_estimators": family in TREE_ENSEMBLES and rounds_ok and recipe.n_estimators < (
            MAX_ESTIMATORS if lgbm else MAX_TREES),
        "lower_learning_rate": booster and recipe.learning_rate > MIN_LEARNING_RATE
        and not facts.time_bound,
        "higher_learning_rate": booster and recipe.learning_rate < MAX_LEARNING_RATE and (
            facts.time_bound or (facts.best_iteration or 0) > 2000),
        "more_capacity": (recipe.num_leaves < MAX_LEAVES) if booster else (
            family in FORESTS and (recipe.min_samples_leaf > 1 or recipe.max_depth is not None)),
        "less_capacity": (recipe.num_leaves > 4) if booster else (
            family in FORESTS and recipe.min_samples_leaf < MAX_LEAF_SAMPLES),
        "more_leaf_samples": booster and recipe.min_samples_leaf < MAX_LEAF_SAMPLES,
        "fewer_leaf_samples": booster and recipe.min_samples_leaf > 2,
        "stronger_regularisation": (booster and recipe.reg_strength < MAX_PENALTY)
        or _linear_penalty_moves(recipe, stronger=True)
        or (family == "knn" and recipe.n_neighbors < 200),
        "weaker_regularisation": (booster and recipe.reg_strength > 0)
        or _linear_penalty_moves(recipe, stronger=False)
        or (family == "knn" and recipe.n_neighbors > 1),
        "fewer_features_per_tree": (lgbm or family in FORESTS)
        and recipe.feature_fraction > FRACTIONS[0],
        "more_features_per_tree": (lgbm or family in FORESTS) and recipe.feature_fraction < 1,
        "fewer_rows_per_tree": lgbm and recipe.bagging_fraction > ROW_FRACTIONS[0],
        "more_rows_per_tree": lgbm and recipe.bagging_fraction < 1,
        "categorical_encoding": recipe.encode_categoricals and facts.has("categorical")
        and len(encodings(family)) > 1,
        "parse_dates": not recipe.dates and facts.has("dates"),
        "text_tfidf": not recipe.text and facts.has("texts"),
        "impute": not recipe.impute and family not in NAN_TOLERANT and facts.has("missing"),
        "missing_indicators": not recipe.missing_indicators and facts.has("missing"),
        "add_ratios": not recipe.ratios and (facts.numeric is None or facts.numeric >= 2),
        "add_features": not recipe.feature_engineering and facts.has("numeric"),
        "add_scaling": not recipe.scale and family in SCALE_SENSITIVE,
        "class_weight": not evidence.regression and not recipe.class_weight
        and evidence.metric in BALANCED_METRICS and (facts.imbalance or 2.0) >= 1.5,
        "switch_family": True,
        "ensemble": len(recipe.partners) < MAX_PARTNERS,
    }
    return [name for name in CHANGE_FIELDS if tests[name] and name != undo]


def _linear_penalty_moves(recipe: Recipe, stronger: bool) -> bool:
    """Whether a linear model's penalty can move that way inside `LINEAR_PENALTY_RANGE` (C, the
    logistic regression's, is an inverse penalty)."""
    if recipe.family not in LINEAR:
        return False
    up = stronger != (recipe.family == "logistic_regression")
    low, high = LINEAR_PENALTY_RANGE
    return recipe.reg_strength < high if up else recipe.reg_strength > low


def urgent_changes(recipe: Recipe, evidence: Evidence) -> list[str]:
    """Changes the parent's run calls for, most pressing first."""
    facts = evidence.facts
    calls = [
        ("parse_dates", (facts.dates or 0) > 0),
        ("text_tfidf", (facts.texts or 0) > 0),
        ("more_estimators", recipe.family == "lightgbm" and facts.hit_rounds_cap),
        ("higher_learning_rate", recipe.family in BOOSTERS and facts.time_bound),
    ]
    allowed = applicable_changes(recipe, evidence)
    return [name for name, called in calls if called and name in allowed]


def choose_change(recipe: Recipe, tried: Collection[str], rng: random.Random,
                  evidence: Evidence) -> str:
    """The change to make: an urgent one no sibling tried, else a weighted seeded draw among
    applicable changes no sibling tried (all applicable ones once every one was tried)."""
    urgent = [name for name in urgent_changes(recipe, evidence) if name not in tried]
    if urgent:
        return urgent[0]
    applicable = applicable_changes(recipe, evidence)
    pool = [name for name in applicable if name not in tried] or applicable
    weights = [_weight(name, recipe, evidence) for name in pool]
    return rng.choices(pool, weights=weights)[0]


def _weight(change: str, recipe: Recipe, evidence: Evidence) -> float:
    weight = WEIGHTS[change]
    if evidence.time_short and change in COSTLY:
        weight *= SHORT_TIME_FACTOR
    if change == "ensemble" and "lightgbm" not in recipe.models:
        # Tuning a weaker family rarely catches up with LightGBM; blending it in usually does.
        weight *= WITHOUT_LIGHTGBM_FACTOR
    return weight


def improve(recipe: Recipe, tried: Collection[str], rng: random.Random,
            evidence: Evidence) -> Improvement:
    """One change, chosen by `choose_change`, applied to `recipe`."""
    change = choose_change(recipe, tried, rng, evidence)
    families = families_for(evidence.regression)
    return apply_change(recipe, change, evidence.facts, families, rng)
