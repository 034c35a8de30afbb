"""UCT and the decay of its exploration constant over the search.

`t` is the number of nodes created so far and `steps` the task's node budget; both are
arguments, so schedules are plain functions of the search's progress.

- none:        C(t) = c_start
- linear:      C falls from c_start to c_end evenly over the budget
- exponential: C(t) = c_end + (c_start - c_end) * exp(-gamma * t)
- piecewise:   ML-Master v1: c_start while t < min(45, 0.3 * steps) (warm-up), then down by
               `step` per node, never below c_end; c_end from t >= 0.7 * steps on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

DecayKind = Literal["none", "linear", "exponential", "piecewise"]


@dataclass(frozen=True)
class Decay:
    kind: DecayKind = "piecewise"
    c_start: float = 1.414
    c_end: float = 0.5
    gamma: float = 0.01
    step: float = 0.01
    warmup_nodes: int = 45
    warmup_ratio: float = 0.3
    final_ratio: float = 0.7

    def constant(self, t: int, steps: int) -> float:
        if self.kind == "none":
            return self.c_start
        if self.kind == "linear":
            progress = min(max(t / max(steps, 1), 0.0), 1.0)
            return self.c_start + (self.c_end - self.c_start) * progress
        if self.kind == "exponential":
            return self.c_end + (self.c_start - self.c_end) * math.exp(-self.gamma * t)
        warmup = min(self.warmup_nodes, self.warmup_ratio * steps)
        if t < warmup:
            return self.c_start
        if t >= self.final_ratio * steps:
            return self.c_end
        return max(self.c_end, self.c_start - self.step * (t - warmup))


def uct(value: float, visits: int, parent_visits: int, c: float) -> float:
    """Q/n + C * sqrt(ln N / n); an unvisited child scores +inf, so it is tried first."""
    if visits <= 0:
        return math.inf
    return value / visits + c * math.sqrt(math.log(max(parent_visits, 1)) / visits)
