"""The offline coder's crossover operator: one child recipe from two parents' recipes.

Parent A is the tree parent (`parent_code`), parent B the second parent
(`other_parent_code`). The first rule that applies decides the child (its name is the
summary's `rule=`):
- `safe_baseline`: neither parent has a recipe header, so the safe baseline is written.
- `improve_one`: only one parent has a header; that parent is improved with exactly one
  change, as the improve operator would (the header-less parent gives nothing to combine).
- `blend`: both have headers. The child is A's recipe (its models and data handling) with
  B's main model, as B made it, added as a partner (first, so at most one of A's partners
  makes way). The script fits every member on the task's folds, picks blend weights on the
  out-of-fold predictions from a grid, and keeps the blend only when its out-of-fold score
  beats the best member alone; otherwise it submits that member's predictions. Its log says
  which. When B's model already is one of A's members (seed aside), one improve change is
  made to B's copy first, so the blend never merely refits a member it has.
"""

from __future__ import annotations

import random
from collections.abc import Collection
from dataclasses import dataclass, replace

from mlmaster_daemon.coders.offline.improve import Evidence, improve
from mlmaster_daemon.coders.offline.plan import ScriptPlan
from mlmaster_daemon.coders.offline.recipe import (
    MAX_PARTNERS,
    Recipe,
    format_summary,
    safe_baseline,
)
from mlmaster_daemon.coders.offline.render import render
from mlmaster_daemon.coders.protocol import CodeResponse
from mlmaster_daemon.tasks.spec import TaskSpec

UNKNOWN = "unknown"


@dataclass(frozen=True)
class Crossover:
    """The child of a crossover: the rule used, its recipe, the one improve change made (if
    any) and a sentence describing what was combined."""

    rule: str
    recipe: Recipe
    change: str | None
    description: str


def cross(a: Recipe | None, b: Recipe | None, evidence: tuple[Evidence, Evidence],
          tried: Collection[str], rng: random.Random) -> Crossover:
    """The child of parents `a` and `b` (already fitted to the task) by the module's rules.

    `evidence` is what each parent's run showed; `tried` names improve changes siblings
    already tried (preferred against); `rng` supplies the seed of a baseline and any change.
    """
    if a is None and b is None:
        text = "neither parent has an offline recipe header, so nothing can be combined"
        return Crossover("safe_baseline", safe_baseline(rng.randrange(1, 100_000)), None, text)
    if a is None or b is None:
        only, seen = (a, evidence[0]) if a is not None else (b, evidence[1])
        assert only is not None
        step = improve(only, tried, rng, seen)
        text = (
            f"only the {only.family} parent has a recipe header, so it is improved with one "
            f"change instead: {step.description}"
        )
        return Crossover("improve_one", step.recipe, step.change, text)
    partner, change, text = b.alone, None, f"add B's {b.family} model to A's as a partner"
    if any(_same(partner, member) for member in (a.alone, *a.partners)):
        # An ensemble change would only add partners, which a partner does not keep.
        step = improve(partner, {*tried, "ensemble"}, rng, evidence[1])
        partner, change = step.recipe.alone, step.change
        text = (f"B's {b.family} model is already one of A's, so B's copy gets one change "
                f"({step.description}) and joins A's models as a partner")
    child = replace(a, partners=(partner, *a.partners)[:MAX_PARTNERS])
    text += ("; the script fits every member on the task's folds, picks blend weights on the "
             "out-of-fold predictions and keeps the blend only when it beats the best member "
             "alone, else submits that member's predictions")
    return Crossover("blend", child, change, text)


def crossover_response(a: Recipe | None, b: Recipe | None, task: TaskSpec, plan: ScriptPlan,
                       evidence: tuple[Evidence, Evidence], tried: Collection[str],
                       rng: random.Random) -> CodeResponse:
    """Plan, script and summary (`op=crossover`, `parents=A+B`, `rule=`, maybe `change=`)."""
    child = cross(a, b, evidence, tried, rng)
    family_a = a.family if a is not None else UNKNOWN
    family_b = b.family if b is not None else UNKNOWN
    text = (
        f"Cross over parent A ({_described(a)}) with parent B ({_described(b)}). "
        f"Rule {child.rule}: {_sentence(child.description)} The child fits "
        f"{' + '.join(child.recipe.models)} on the task's validation folds, scored with "
        f"{task.metric.value}, and still writes submission/submission.csv and metrics.json."
    )
    extra = {"parents": f"{family_a}+{family_b}", "rule": child.rule}
    if child.change is not None:
        extra["change"] = child.change
    summary = format_summary(child.recipe, "crossover", **extra)
    return CodeResponse(plan=text, code=render(child.recipe, task, plan), summary=summary)


def _same(one: Recipe, other: Recipe) -> bool:
    return replace(one.alone, seed=other.seed) == other.alone


def _described(recipe: Recipe | None) -> str:
    if recipe is None:
        return "an unknown model: the script has no offline recipe header"
    return " + ".join(recipe.models)


def _sentence(text: str) -> str:
    return text if text.endswith(".") else text + "."
