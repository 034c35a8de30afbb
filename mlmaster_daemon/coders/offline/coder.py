"""The built-in offline coder: real scikit-learn / LightGBM scripts without any LLM.

It is the default coder when no LLM endpoint is configured. Every script it writes starts
with a `# mlmaster-recipe: {json}` line (see `recipe.py`), so improve, debug and
crossover steps read their parents' recipes back instead of editing code.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace

from mlmaster_daemon.coders.offline.crossover import crossover_response
from mlmaster_daemon.coders.offline.debug import baseline_repair, diagnose, repair
from mlmaster_daemon.coders.offline.improve import apply_change, choose_change
from mlmaster_daemon.coders.offline.recipe import (
    Recipe,
    default_recipe,
    families_for,
    format_summary,
    normalise_family,
    parse_recipe,
    parse_summary,
    summary_family,
)
from mlmaster_daemon.coders.offline.render import render
from mlmaster_daemon.coders.protocol import CodeRequest, CodeResponse
from mlmaster_daemon.models import Operator
from mlmaster_daemon.search.memory import MemoryItem
from mlmaster_daemon.tasks.spec import TaskSpec

__all__ = ["OfflineCoder", "Recipe", "parse_recipe", "render"]


class OfflineCoder:
    """A deterministic `Coder` that writes tabular training scripts from recipes.

    The same `seed` and request (node id, operator, parent code, parent output, memory) always
    give the same code; randomness comes only from a `random.Random` seeded with
    (seed, node id, operator). `generate` is pure CPU and does no I/O.

    Drafts are deliberately simple, following ML-Master's draft guideline (no ensembling, no
    tuning): categoricals are ordinal-encoded but missing values are NOT imputed. On data with
    NaN the NaN-intolerant families (linear models, KNN) therefore fail with scikit-learn's
    own "Input X contains NaN" error, which is the intended input to the debug operator.
    """

    def __init__(self, seed: int = 0) -> None:
        self._seed = seed

    async def wait_available(self) -> None:
        """The offline coder is never down."""

    async def generate(self, request: CodeRequest) -> CodeResponse:
        """The plan, script and one-line summary for one draft, improve, debug or crossover
        expansion (crossover rules: see `crossover.py`)."""
        rng = random.Random(f"offline-coder:{self._seed}:{request.node_id}:{request.operator}")
        if request.operator is Operator.DRAFT:
            return _draft(request, rng)
        if request.operator is Operator.IMPROVE:
            return _improve(request, rng)
        if request.operator is Operator.CROSSOVER:
            return _crossover(request, rng)
        return _debug(request, rng)


def _draft(request: CodeRequest, rng: random.Random) -> CodeResponse:
    task = request.task
    siblings = [item for item in request.memory if item.operator is Operator.DRAFT]
    family, used = _pick_family(task, siblings, rng)
    recipe = default_recipe(family, rng.randrange(1, 100_000))
    used_text = ", ".join(sorted(used)) if used else "none yet"
    plan = (
        f"Draft a simple {family} baseline for this {_kind(task)} task, scored by "
        f"{task.metric.value}. Categorical columns are ordinal-encoded and missing values are "
        "left as they are, because drafts stay minimal (no imputation, tuning or ensembling). "
        "Validation uses a single 80/20 holdout split, and the model is then refit on every "
        f"training row for the submission. Sibling drafts already used: {used_text}."
    )
    return CodeResponse(
        plan=plan, code=render(recipe, task), summary=format_summary(recipe, "draft")
    )


def _improve(request: CodeRequest, rng: random.Random) -> CodeResponse:
    task = request.task
    parent = parse_recipe(request.parent_code or "")
    if parent is None:
        family, _ = _pick_family(task, request.memory, rng)
        recipe = replace(default_recipe(family, rng.randrange(1, 100_000)), impute=True)
        plan = (
            "The parent script has no offline recipe header (it was probably written by an "
            f"LLM), so no single change can be applied to it. Instead write a fresh {family} "
            "solution in the style of a draft, with median imputation added so it runs on data "
            "with missing values. Validation uses an 80/20 holdout split scored by "
            f"{task.metric.value}."
        )
        summary = format_summary(recipe, "improve", change="fresh_recipe")
        return CodeResponse(plan=plan, code=render(recipe, task), summary=summary)
    parent = _fit_to_task(parent, task)
    tried = {parse_summary(item.summary).get("change", "") for item in request.memory}
    change = choose_change(parent, tried, rng)
    step = apply_change(parent, change, task.metric.is_regression, rng)
    tried_text = ", ".join(sorted(name for name in tried if name)) or "nothing yet"
    plan = (
        f"Improve the working {parent.family} solution ({parent.cv_label} validation) with "
        f"exactly one change, {change}: {step.description}. Every other part of the recipe "
        "stays as it was, so the metric change can be attributed to this one edit. "
        f"Sibling improvements already tried: {tried_text}. The validation metric is "
        f"{task.metric.value} on held-out rows."
    )
    summary = format_summary(step.recipe, "improve", change=change)
    return CodeResponse(plan=plan, code=render(step.recipe, task), summary=summary)


def _crossover(request: CodeRequest, rng: random.Random) -> CodeResponse:
    task = request.task
    recipes = [parse_recipe(code or "") for code in (request.parent_code,
                                                      request.other_parent_code)]
    a, b = (None if r is None else _fit_to_task(r, task) for r in recipes)
    tried = {parse_summary(item.summary).get("change", "") for item in request.memory}
    return crossover_response(a, b, task, tried - {""}, rng)


def _debug(request: CodeRequest, rng: random.Random) -> CodeResponse:
    task = request.task
    parent = parse_recipe(request.parent_code or "")
    diagnosis = diagnose(request.parent_output, request.parent_error)
    seed = parent.seed if parent is not None else rng.randrange(1, 100_000)
    if parent is None:
        fix = baseline_repair(seed, "the parent script has no offline recipe header to repair")
    elif diagnosis is None:
        fix = baseline_repair(seed, "the failure did not match any known cause")
    else:
        evidence = f"{request.parent_output or ''}\n{request.parent_error or ''}"
        fix = repair(_fit_to_task(parent, task), diagnosis, evidence, seed)
    code = render(fix.recipe, task)
    if fix.fix == "rerender_contract" and code.strip() == (request.parent_code or "").strip():
        fix = baseline_repair(seed, "re-rendering the same recipe would reproduce the same script")
        code = render(fix.recipe, task)
    seen = (
        f"recognised that {diagnosis.description}"
        if diagnosis is not None
        else f"could not recognise the failure (last line: {_last_line(request)})"
    )
    plan = (
        f"The parent script failed, and the offline coder {seen}. "
        f"Fix ({fix.fix}): {_sentence(fix.description)} "
        f"The repaired {fix.recipe.family} script validates on "
        f"{fix.recipe.cv_label} with {task.metric.value} and still writes "
        "submission/submission.csv and metrics.json."
    )
    summary = format_summary(fix.recipe, "debug", fix=fix.fix)
    return CodeResponse(plan=plan, code=code, summary=summary)


def _pick_family(
    task: TaskSpec, siblings: Sequence[MemoryItem], rng: random.Random
) -> tuple[str, set[str]]:
    """A family no sibling used (seeded order); the least used one once all are taken."""
    regression = task.metric.is_regression
    counts: Counter[str] = Counter()
    for item in siblings:
        family = summary_family(item.summary)
        if family is not None:
            counts[normalise_family(family, regression)] += 1
    order = list(families_for(regression))
    rng.shuffle(order)
    return min(order, key=lambda name: counts[name]), set(counts)


def _fit_to_task(recipe: Recipe, task: TaskSpec) -> Recipe:
    regression = task.metric.is_regression
    partner = recipe.ensemble_with
    return replace(
        recipe,
        family=normalise_family(recipe.family, regression),
        ensemble_with=None if partner is None else normalise_family(partner, regression),
    )


def _kind(task: TaskSpec) -> str:
    return "regression" if task.metric.is_regression else "classification"


def _last_line(request: CodeRequest) -> str:
    text = (request.parent_output or "").strip() or (request.parent_error or "").strip()
    return text.splitlines()[-1][:160] if text else "no output"


def _sentence(text: str) -> str:
    return text if text.endswith(".") else text + "."
