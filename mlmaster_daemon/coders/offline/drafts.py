"""Which draft to write next: a plan of draft styles, strong and mutually different ones first.

A style is a family with its defaults, or a variant of them: the first drafts give the search
a strong LightGBM, a linear model and randomised trees to improve and to blend, then a deeper
LightGBM; the other families come last. Drafts already made (as sibling memory shows them, by
the `draft=` key of their summaries) are skipped until every style has been drafted.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import replace

from mlmaster_daemon.coders.offline.recipe import (
    Recipe,
    default_recipe,
    normalise_family,
    parse_summary,
    summary_family,
)
from mlmaster_daemon.models import Operator
from mlmaster_daemon.search.memory import MemoryItem

DRAFT_STYLES: tuple[str, ...] = (
    "lightgbm",
    "linear",
    "extra_trees",
    "lightgbm_deep",
    "random_forest",
    "hist_gradient_boosting",
    "knn",
)
# The first nodes of a search, drafts that may be generated before they see each other.
FIRST_DRAFTS = 3


def style_recipe(style: str, regression: bool, seed: int, learning_rate: float) -> Recipe:
    """The draft recipe of `style` (see DRAFT_STYLES) for the task type."""
    if style == "linear":
        return default_recipe("ridge" if regression else "logistic_regression", seed)
    if style == "lightgbm_deep":
        # Twice the leaves on half the rows each, each tree on fewer features and rows.
        base = default_recipe("lightgbm", seed, learning_rate)
        return replace(base, num_leaves=63, min_samples_leaf=10, feature_fraction=0.6,
                       bagging_fraction=0.8)
    return default_recipe(style, seed, learning_rate)


def draft_style(summary: str, regression: bool) -> str | None:
    """The style a draft's summary names: its `draft=` key, else its model family's style."""
    named = parse_summary(summary).get("draft")
    if named in DRAFT_STYLES:
        return named
    family = summary_family(summary)
    if family is None:
        return None
    family = normalise_family(family, regression)
    return "linear" if family in ("ridge", "logistic_regression") else family


def pick_style(siblings: Sequence[MemoryItem], regression: bool, node_id: int,
               ) -> tuple[str, set[str]]:
    """The first style in DRAFT_STYLES no sibling draft used (the least used once all are).

    The first nodes of a search are drafts generated at once, before they can see each other
    in memory: node n among them takes the n-th style unless memory shows it used. Also
    returns the styles used.
    """
    counts: Counter[str] = Counter()
    for item in siblings:
        style = draft_style(item.summary, regression) if item.operator is Operator.DRAFT else None
        if style is not None:
            counts[style] += 1
    if 1 <= node_id <= FIRST_DRAFTS and not counts[DRAFT_STYLES[node_id - 1]]:
        return DRAFT_STYLES[node_id - 1], set(counts)
    fewest = min(counts[style] for style in DRAFT_STYLES)
    return next(style for style in DRAFT_STYLES if counts[style] == fewest), set(counts)
