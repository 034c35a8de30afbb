"""The offline coder's crossover operator: one child recipe from two parents' recipes.

Parent A is the tree parent (`parent_code`), parent B the second parent
(`other_parent_code`). The first rule that applies decides the child (its name is the
summary's `rule=`):
- `safe_baseline`: neither parent has a recipe header, so the safe baseline is written.
- `improve_one`: only one parent has a header; that parent is improved with exactly one
  change, as the improve operator would (the header-less parent gives nothing to combine).
- `ensemble`: the families differ. The child is A's recipe (preprocessing, validation,
  hyperparameters, seed) ensembling A's family with B's family, which replaces any partner
  A had. It also gets what B's family needs to run: median imputation when B's family does
  not accept NaN, and scaling when B's family is scale-sensitive.
- `mix`: the families are the same. The child takes the model hyperparameters of the more
  strongly regularised parent (ties: A) and the data handling (categorical encoding,
  imputation, missing indicators, feature engineering, scaling) of the other one; validation,
  ensemble partner and seed stay A's. "More strongly regularised" means: smaller C for
  logistic regression, larger alpha for ridge, more neighbours for KNN, shallower trees then
  a larger L2 penalty for the boosters, more samples per leaf then shallower trees for the
  forests.
When the combined recipe repeats either parent (seed aside), one improve change is applied on
top, so a crossover never merely reruns a parent.
"""

from __future__ import annotations

import math
import random
from collections.abc import Collection
from dataclasses import dataclass, replace

from mlmaster_daemon.coders.offline.improve import applicable_changes, apply_change, choose_change
from mlmaster_daemon.coders.offline.recipe import (
    BOOSTERS,
    NAN_TOLERANT,
    SCALE_SENSITIVE,
    Recipe,
    format_summary,
    safe_baseline,
)
from mlmaster_daemon.coders.offline.render import render
from mlmaster_daemon.coders.protocol import CodeResponse
from mlmaster_daemon.tasks.spec import TaskSpec

HYPERPARAMETERS = frozenset(
    {"n_estimators", "learning_rate", "max_depth", "min_samples_leaf", "reg_strength",
     "n_neighbors"}
)
DATA_HANDLING = frozenset(
    {"encode_categoricals", "impute", "missing_indicators", "feature_engineering", "scale"}
)
UNKNOWN = "unknown"


@dataclass(frozen=True)
class Crossover:
    """The child of a crossover: the rule used, its recipe, the one improve change applied on
    top (if any) and a sentence describing what was combined."""

    rule: str
    recipe: Recipe
    change: str | None
    description: str


def regularisation(recipe: Recipe) -> tuple[float, ...]:
    """How strongly `recipe` regularises its main model; a larger tuple is stronger."""
    depth = math.inf if recipe.max_depth is None else float(recipe.max_depth)
    if recipe.family == "logistic_regression":
        return (-recipe.reg_strength,)
    if recipe.family == "ridge":
        return (recipe.reg_strength,)
    if recipe.family == "knn":
        return (float(recipe.n_neighbors),)
    if recipe.family in BOOSTERS:
        return (-depth, recipe.reg_strength)
    return (float(recipe.min_samples_leaf), -depth)


def cross(
    a: Recipe | None, b: Recipe | None, is_regression: bool, tried: Collection[str],
    rng: random.Random,
) -> Crossover:
    """The child of parents `a` and `b` (already fitted to the task) by the module's rules.

    `tried` names improve changes siblings already tried (preferred against); `rng` supplies
    the seed of a baseline and any improve change.
    """
    if a is None and b is None:
        text = "neither parent has an offline recipe header, so nothing can be combined"
        return Crossover("safe_baseline", safe_baseline(rng.randrange(1, 100_000)), None, text)
    if a is None or b is None:
        only = a if a is not None else b
        assert only is not None
        step = apply_change(only, choose_change(only, tried, rng), is_regression, rng)
        text = (
            f"only the {only.family} parent has a recipe header, so it is improved with one "
            f"change instead: {step.description}"
        )
        return Crossover("improve_one", step.recipe, step.change, text)
    if a.family != b.family:
        rule, child, text = "ensemble", _ensemble(a, b), _ensemble_text(a, b)
    else:
        rule, child, text = "mix", *_mix(a, b)
    if _same(child, a) or _same(child, b):
        # Try the changes in seeded order: one could turn the child into the other parent.
        first = choose_change(child, tried, rng)
        rest = [c for c in applicable_changes(child) if c != first]
        rng.shuffle(rest)
        step = apply_change(child, first, is_regression, rng)
        for change in rest:
            if not (_same(step.recipe, a) or _same(step.recipe, b)):
                break
            step = apply_change(child, change, is_regression, rng)
        text = f"{text}; that repeats a parent, so one change is added: {step.description}"
        return Crossover(rule, step.recipe, step.change, text)
    return Crossover(rule, child, None, text)


def crossover_response(
    a: Recipe | None, b: Recipe | None, task: TaskSpec, tried: Collection[str],
    rng: random.Random,
) -> CodeResponse:
    """Plan, script and summary (`op=crossover`, `parents=A+B`, `rule=`, maybe `change=`)."""
    child = cross(a, b, task.metric.is_regression, tried, rng)
    family_a = a.family if a is not None else UNKNOWN
    family_b = b.family if b is not None else UNKNOWN
    plan = (
        f"Cross over parent A ({_described(a)}) with parent B ({_described(b)}). "
        f"Rule {child.rule}: {_sentence(child.description)} The child is a "
        f"{' + '.join(child.recipe.models)} solution validated on {child.recipe.cv_label} "
        f"with {task.metric.value}, and it still writes submission/submission.csv and "
        "metrics.json."
    )
    extra = {"parents": f"{family_a}+{family_b}", "rule": child.rule}
    if child.change is not None:
        extra["change"] = child.change
    summary = format_summary(child.recipe, "crossover", **extra)
    return CodeResponse(plan=plan, code=render(child.recipe, task), summary=summary)


def _ensemble(a: Recipe, b: Recipe) -> Recipe:
    return replace(
        a,
        ensemble_with=b.family,
        impute=a.impute or b.family not in NAN_TOLERANT,
        scale=a.scale or b.family in SCALE_SENSITIVE,
    )


def _ensemble_text(a: Recipe, b: Recipe) -> str:
    needs = []
    if not a.impute and b.family not in NAN_TOLERANT:
        needs.append("median imputation")
    if not a.scale and b.family in SCALE_SENSITIVE:
        needs.append("feature scaling")
    extra = f", adding {' and '.join(needs)} that {b.family} needs" if needs else ""
    return (
        f"keep A's {a.family} recipe and validation and average its predictions with a "
        f"{b.family} model taken from B{extra}"
    )


def _mix(a: Recipe, b: Recipe) -> tuple[Recipe, str]:
    b_wins = regularisation(b) > regularisation(a)
    tuned, handled = (b, a) if b_wins else (a, b)
    fields = {name: getattr(tuned, name) for name in HYPERPARAMETERS}
    fields |= {name: getattr(handled, name) for name in DATA_HANDLING}
    child = replace(a, **fields)
    text = (
        f"both parents are {a.family}; take the hyperparameters of "
        f"{'B' if b_wins else 'A'}, the more strongly regularised one, and the encoding, "
        f"imputation and feature engineering of {'A' if b_wins else 'B'}"
    )
    return child, text


def _same(child: Recipe, parent: Recipe) -> bool:
    return replace(child, seed=parent.seed) == parent


def _described(recipe: Recipe | None) -> str:
    if recipe is None:
        return "an unknown model: the script has no offline recipe header"
    models = " + ".join(recipe.models)
    return f"{models}, {recipe.cv_label} validation"


def _sentence(text: str) -> str:
    return text if text.endswith(".") else text + "."
