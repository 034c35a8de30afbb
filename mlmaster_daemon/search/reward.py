"""Reward for backpropagation: how good a finished node is, in [0, 1].

A working node earns 0.5 + 0.5 * s, where s is its metric min-max normalised over every working
node of the task so far (s = 1 for the best, 0 for the worst, 1 while only one exists), the
direction taken from the task. A buggy or failed node earns 0. So any working node outranks any
buggy one, and better metrics earn more. This is a deliberately simple form; the search-core
issue refines it.
"""

from __future__ import annotations

BUGGY_REWARD = 0.0


def reward(metric: float | None, seen: list[float], lower_is_better: bool) -> float:
    """Reward of a node whose metric is `metric` (None when buggy) given all working metrics."""
    if metric is None:
        return BUGGY_REWARD
    lo, hi = min([*seen, metric]), max([*seen, metric])
    if hi == lo:
        return 1.0
    score = (metric - lo) / (hi - lo)
    if lower_is_better:
        score = 1.0 - score
    return 0.5 + 0.5 * score
