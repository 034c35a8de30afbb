"""The built-in offline coder: real scikit-learn / LightGBM scripts without any LLM.

It is the default coder when no LLM endpoint is configured. Every script it writes starts
with a `# mlmaster-recipe: {json}` line (see `recipe.py`), so improve, debug and
crossover steps read their parents' recipes back instead of editing code, and every script
prints machine-readable facts about its data and run (see `facts.py`) that the next step reads
from the parent's output.
"""

from __future__ import annotations

import random
import re
from dataclasses import replace

from mlmaster_daemon.coders.offline.crossover import crossover_response
from mlmaster_daemon.coders.offline.debug import baseline_repair, diagnose, repair
from mlmaster_daemon.coders.offline.drafts import pick_style, style_recipe
from mlmaster_daemon.coders.offline.facts import read_facts
from mlmaster_daemon.coders.offline.improve import Evidence, improve
from mlmaster_daemon.coders.offline.plan import ScriptPlan, script_plan, train_cells
from mlmaster_daemon.coders.offline.recipe import (
    NAN_TOLERANT,
    Recipe,
    default_recipe,
    format_summary,
    normalise_family,
    parse_recipe,
    parse_summary,
)
from mlmaster_daemon.coders.offline.render import render
from mlmaster_daemon.coders.protocol import CodeRequest, CodeResponse
from mlmaster_daemon.errors import InvalidTaskDir
from mlmaster_daemon.models import Operator
from mlmaster_daemon.tasks.spec import Metric, TaskSpec

__all__ = ["OfflineCoder", "Recipe", "parse_recipe", "render"]

# Above this many training cells (rows x columns), or below this budget, a LightGBM draft
# learns faster (fewer rounds for the same fit).
LARGE_CELLS = 2_000_000
SHORT_BUDGET_S = 15.0
# A column the data preview reports with missing values ("x: float64, missing 12, ...").
_PREVIEW_GAPS = re.compile(r"^\s+\S.*: .*, missing [1-9]", re.MULTILINE)
# Time is short when what the task has left would not fit this many runs like the parent's.
SHORT_TIME_RUNS = 4


class OfflineCoder:
    """A deterministic `Coder` that writes tabular training scripts from recipes.

    The same `seed` and request always give the same code; randomness comes only from a
    `random.Random` seeded with (seed, node id, operator). `generate` is pure CPU and does no
    I/O. Every script validates on the request's folds (`cv_folds`, `cv_seed`), so nodes are
    compared on the same rows, and plans its work to end within a budget taken from the
    node's time limit.

    Drafts follow a plan of styles (see `drafts.py`) with sensible defaults. A NaN-intolerant
    family (linear models, KNN) imputes only when the data preview shows missing values:
    without a preview it fails on NaN with scikit-learn's own "Input X contains NaN" error,
    which the debug operator repairs.
    """

    def __init__(self, seed: int = 0) -> None:
        self._seed = seed

    async def wait_available(self) -> None:
        """The offline coder is never down."""

    async def generate(self, request: CodeRequest) -> CodeResponse:
        """The plan, script and one-line summary for one draft, improve, debug or crossover
        expansion (crossover rules: see `crossover.py`)."""
        if request.task.metric is Metric.COMPETITION:
            raise InvalidTaskDir(offline_refusal(request.task))
        rng = random.Random(f"offline-coder:{self._seed}:{request.node_id}:{request.operator}")
        plan = script_plan(request)
        if request.operator is Operator.DRAFT:
            return _draft(request, plan, rng)
        if request.operator is Operator.IMPROVE:
            return _improve(request, plan, rng)
        if request.operator is Operator.CROSSOVER:
            return _crossover(request, plan, rng)
        return _debug(request, plan, rng)


def offline_refusal(task: TaskSpec) -> str:
    """Why the offline coder cannot take `task` (scored by a competition's own metric), and
    what to do."""
    from mlmaster_daemon.tasks import registry

    known = registry.lookup(task.competition_id or "")
    scoring = known.scoring if known is not None else "its own metric"
    return (f"{task.competition_id or task.name} is scored by {scoring}, which the built-in "
            "offline coder cannot write solutions for (it writes tabular models for the "
            "project's own metrics): configure a model under [llm.code] in the daemon's "
            "config to run it, or give the task one of the project's metrics with --metric "
            "or task.toml")


def _draft(request: CodeRequest, plan: ScriptPlan, rng: random.Random) -> CodeResponse:
    task = request.task
    regression = task.metric.is_regression
    style, used = pick_style(request.memory, regression, request.node_id)
    cells = train_cells(request.data_preview) or 0
    fast = cells > LARGE_CELLS or plan.time_budget_s < SHORT_BUDGET_S
    recipe = style_recipe(style, regression, rng.randrange(1, 100_000), 0.1 if fast else 0.05)
    family = recipe.family
    # A draft known to fail on missing values would only cost a node and a debug node; with
    # no preview to go by, it stays minimal and the debug step repairs it if need be.
    gaps = bool(_PREVIEW_GAPS.search(request.data_preview))
    if gaps and family not in NAN_TOLERANT:
        recipe = replace(recipe, impute=True)
    used_text = ", ".join(sorted(used)) if used else "none yet"
    missing = ("missing values are imputed with medians, as the preview shows gaps and "
               f"{family} does not accept them" if recipe.impute
               else "missing values are left as they are")
    text = (
        f"Draft a {family} baseline ({style} style) for this {_kind(task)} task, scored "
        f"by {task.metric.value}. Categorical columns are {recipe.categorical}-encoded and "
        f"{missing} (no tuning or ensembling yet). {_validation(plan)} Sibling drafts "
        f"already used: {used_text}."
    )
    return CodeResponse(plan=text, code=render(recipe, task, plan),
                        summary=format_summary(recipe, "draft", draft=style))


def _improve(request: CodeRequest, plan: ScriptPlan, rng: random.Random) -> CodeResponse:
    task = request.task
    parent = parse_recipe(request.parent_code or "")
    if parent is None:
        recipe = default_recipe("lightgbm", rng.randrange(1, 100_000))
        text = (
            "The parent script has no offline recipe header (it was probably written by an "
            "LLM), so no single change can be applied to it. Instead write a fresh LightGBM "
            "solution in the style of a draft; LightGBM takes missing values as they are. "
            f"{_validation(plan)}"
        )
        summary = format_summary(recipe, "improve", change="fresh_recipe")
        return CodeResponse(plan=text, code=render(recipe, task, plan), summary=summary)
    parent = _fit_to_task(parent, task)
    tried = {parse_summary(item.summary).get("change", "") for item in request.memory}
    step = improve(parent, tried - {""}, rng, _evidence(request, request.parent_output))
    tried_text = ", ".join(sorted(name for name in tried if name)) or "nothing yet"
    text = (
        f"Improve the working {' + '.join(parent.models)} solution with exactly one change, "
        f"{step.change}: {step.description}. Every other part of the recipe stays as it was, "
        "so the metric change can be attributed to this one edit. Sibling improvements "
        f"already tried: {tried_text}. {_validation(plan)}"
    )
    summary = format_summary(step.recipe, "improve", change=step.change)
    return CodeResponse(plan=text, code=render(step.recipe, task, plan), summary=summary)


def _crossover(request: CodeRequest, plan: ScriptPlan, rng: random.Random) -> CodeResponse:
    task = request.task
    recipes = [parse_recipe(code or "") for code in (request.parent_code,
                                                      request.other_parent_code)]
    a, b = (None if r is None else _fit_to_task(r, task) for r in recipes)
    tried = {parse_summary(item.summary).get("change", "") for item in request.memory}
    evidence = (_evidence(request, request.parent_output),
                _evidence(request, request.other_parent_output))
    return crossover_response(a, b, task, plan, evidence, tried - {""}, rng)


def _debug(request: CodeRequest, plan: ScriptPlan, rng: random.Random) -> CodeResponse:
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
    code = render(fix.recipe, task, plan)
    if fix.fix == "rerender_contract" and code.strip() == (request.parent_code or "").strip():
        fix = baseline_repair(seed, "re-rendering the same recipe would reproduce the same script")
        code = render(fix.recipe, task, plan)
    seen = (
        f"recognised that {diagnosis.description}"
        if diagnosis is not None
        else f"could not recognise the failure (last line: {_last_line(request)})"
    )
    text = (
        f"The parent script failed, and the offline coder {seen}. "
        f"Fix ({fix.fix}): {_sentence(fix.description)} "
        f"The repaired {' + '.join(fix.recipe.models)} script still writes "
        f"submission/submission.csv and metrics.json. {_validation(plan)}"
    )
    summary = format_summary(fix.recipe, "debug", fix=fix.fix)
    return CodeResponse(plan=text, code=code, summary=summary)


def _evidence(request: CodeRequest, output: str | None) -> Evidence:
    facts = read_facts(output)
    left, took = request.time_left_s, facts.seconds
    short = facts.time_bound or (left is not None and took is not None
                                 and left < SHORT_TIME_RUNS * took)
    return Evidence(request.task.metric, facts, short)


def _fit_to_task(recipe: Recipe, task: TaskSpec) -> Recipe:
    regression = task.metric.is_regression
    partners = tuple(replace(p, family=normalise_family(p.family, regression))
                     for p in recipe.partners)
    return replace(recipe, family=normalise_family(recipe.family, regression),
                   partners=partners)


def _validation(plan: ScriptPlan) -> str:
    folds = (f"the task's {plan.cv_folds} cross-validation folds" if plan.cv_folds >= 2
             else "the task's 80/20 split")
    return (f"Validation uses {folds} (seed {plan.cv_seed}), the same rows for every node, "
            f"and the script plans to finish within {plan.time_budget_s:.0f} s.")


def _kind(task: TaskSpec) -> str:
    return "regression" if task.metric.is_regression else "classification"


def _last_line(request: CodeRequest) -> str:
    text = (request.parent_output or "").strip() or (request.parent_error or "").strip()
    return text.splitlines()[-1][:160] if text else "no output"


def _sentence(text: str) -> str:
    return text if text.endswith(".") else text + "."
