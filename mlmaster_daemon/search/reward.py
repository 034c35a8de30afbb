"""Reward for backpropagation, owned by the task's metric direction, never by an LLM.

A working node earns its metric min-max normalised over every working node of the task so far:
    s = (metric - lo) / (hi - lo), flipped to 1 - s when lower is better,
so the best node so far earns 1 and the worst 0 (a lone working node earns 1). A buggy or
invalid node earns -penalty (default 0.5). Rewards are computed when a backpropagation happens,
with the range known at that moment; earlier backpropagations are not revised. lo/hi are kept
incrementally, so a reward costs O(1).
"""

from __future__ import annotations

DEFAULT_BUGGY_PENALTY = 0.5


def normalised(metric: float, lo: float | None, hi: float | None, lower_is_better: bool) -> float:
    """The metric's place in [lo, hi] in [0, 1], 1 being best."""
    lo = metric if lo is None else min(lo, metric)
    hi = metric if hi is None else max(hi, metric)
    if hi == lo:
        return 1.0
    score = (metric - lo) / (hi - lo)
    return 1.0 - score if lower_is_better else score


def reward(
    metric: float | None, lo: float | None, hi: float | None, lower_is_better: bool,
    buggy_penalty: float = DEFAULT_BUGGY_PENALTY,
) -> float:
    if metric is None:
        return -buggy_penalty
    return normalised(metric, lo, hi, lower_is_better)
