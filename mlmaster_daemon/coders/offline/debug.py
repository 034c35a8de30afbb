"""The debug operator: recognise why a parent script failed and repair its recipe."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, replace

from mlmaster_daemon.coders.offline.recipe import (
    BOOSTERS,
    MIN_ESTIMATORS,
    Recipe,
    safe_baseline,
)

_MISSING_MODULE = re.compile(r"No module named '?([A-Za-z0-9_\.]+)'?")
_NAN = re.compile(r"contains NaN|does not accept missing values|Input contains (NaN|infinity)")
_STRINGS = re.compile(
    r"could not convert string to float|dtypes for data must be int|bad pandas dtypes"
    r"|Cannot cast object dtype|unsupported operand type\(s\).*'str'"
)
_MEMORY = re.compile(r"MemoryError|Unable to allocate|out of memory|OOM", re.IGNORECASE)
_TIMEOUT = re.compile(r"time ?out|timed out|time limit", re.IGNORECASE)
_CONTRACT = re.compile(r"metrics\.json|validation_metric|submission", re.IGNORECASE)


@dataclass(frozen=True)
class Diagnosis:
    """A recognised failure: a short tag and a sentence naming what was seen."""

    fault: str
    description: str


@dataclass(frozen=True)
class Repair:
    """The fix for a diagnosis: its tag (used as `fix=` in summaries), recipe and sentence."""

    fix: str
    recipe: Recipe
    description: str


def diagnose(output: str | None, error: str | None) -> Diagnosis | None:
    """What went wrong, from the script's output tail and the harness's reason; None if unknown.

    The harness's timeout reason wins (a killed script leaves no traceback); the contract
    check comes last because a crash also leaves metrics.json missing.
    """
    out = output or ""
    reason = error or ""
    both = f"{out}\n{reason}"
    if _TIMEOUT.search(reason):
        return Diagnosis(
            "timeout", f"the run was stopped for taking too long ({_first_line(reason)})"
        )
    if _MEMORY.search(both):
        return Diagnosis("memory", "the run ran out of memory")
    missing = _MISSING_MODULE.search(both)
    if missing or "ModuleNotFoundError" in both:
        module = missing.group(1) if missing else "a module"
        return Diagnosis("module", f"the module {module} is not installed")
    if _NAN.search(both):
        return Diagnosis("nan", 'the model was given missing values ("Input X contains NaN")')
    if _STRINGS.search(both):
        return Diagnosis("strings", 'text columns reached the model ("could not convert string")')
    if _CONTRACT.search(both):
        return Diagnosis(
            "contract", f"the output contract was broken ({_first_line(reason or out)})"
        )
    return None


def repair(recipe: Recipe, diagnosis: Diagnosis, evidence: str, seed: int) -> Repair:
    """The recipe fixing `diagnosis` (seen in `evidence`, the output and reason).

    Falls back to the safe baseline when the usual fix would leave the recipe unchanged.
    """
    fixed = _fix(recipe, diagnosis, evidence)
    if fixed is None or (fixed.recipe == recipe and fixed.fix != "rerender_contract"):
        return baseline_repair(seed, f"the usual fix for {diagnosis.fault} does not apply here")
    return fixed


def baseline_repair(seed: int, why: str) -> Repair:
    """Fall back to the safe baseline recipe, saying `why`."""
    text = (
        f"Since {why}, replace the solution with the safe baseline: histogram gradient "
        "boosting with median imputation, missing indicators and ordinal-encoded categoricals"
    )
    return Repair("safe_baseline", safe_baseline(seed), text)


def _fix(recipe: Recipe, diagnosis: Diagnosis, evidence: str) -> Repair | None:
    if diagnosis.fault == "nan":
        text = "impute missing values with training medians before fitting"
        return Repair("impute_nan", _everywhere(recipe, lambda r: replace(r, impute=True)), text)
    if diagnosis.fault == "strings":
        text = "ordinal-encode the categorical (object) columns and median-impute the rest"
        return Repair(
            "encode_categoricals",
            _everywhere(recipe, lambda r: replace(r, encode_categoricals=True, impute=True)),
            text,
        )
    if diagnosis.fault == "module":
        return _drop_lightgbm(recipe, evidence)
    if diagnosis.fault == "timeout":
        count = max(MIN_ESTIMATORS, recipe.n_estimators // 2)
        rate = min(0.3, recipe.learning_rate * 2) if recipe.family in BOOSTERS else (
            recipe.learning_rate)
        text = (f"halve the estimators to {count}, double a booster's learning rate and drop "
                "any blend partner")
        return Repair(
            "shrink_for_timeout",
            replace(recipe, n_estimators=count, learning_rate=rate, partners=()),
            text,
        )
    if diagnosis.fault == "memory":
        count = max(MIN_ESTIMATORS, recipe.n_estimators // 2)
        depth = 8 if recipe.max_depth is None else min(recipe.max_depth, 8)
        text = (f"shrink the model: {count} estimators, depth at most {depth}, no TF-IDF "
                "features and no blend partner")
        return Repair(
            "shrink_for_memory",
            replace(recipe, n_estimators=count, max_depth=depth, text=False, partners=()),
            text,
        )
    if diagnosis.fault == "contract":
        text = (
            "re-render the script from its recipe, which writes submission/submission.csv in "
            "the sample's columns and metrics.json with the validation metric"
        )
        return Repair("rerender_contract", recipe, text)
    return None


def _everywhere(recipe: Recipe, edit: Callable[[Recipe], Recipe]) -> Recipe:
    """`recipe` and its partners, each edited by `edit`."""
    return replace(edit(recipe), partners=tuple(edit(partner) for partner in recipe.partners))


def _drop_lightgbm(recipe: Recipe, evidence: str) -> Repair | None:
    missing = _MISSING_MODULE.search(evidence)
    if missing and missing.group(1).split(".")[0] != "lightgbm":
        return None
    if "lightgbm" not in recipe.models:
        return None
    family = "hist_gradient_boosting" if recipe.family == "lightgbm" else recipe.family
    partners = tuple(p for p in recipe.partners if p.family != "lightgbm")
    text = "replace LightGBM with scikit-learn's HistGradientBoosting, which needs no extra module"
    replaced = replace(recipe, family=family, n_estimators=min(recipe.n_estimators, 500),
                       partners=partners)
    return Repair("drop_lightgbm", replaced, text)


def _first_line(text: str) -> str:
    stripped = text.strip()
    return stripped.splitlines()[0][:160] if stripped else "no detail given"
