"""What a script is given besides its recipe: the task's validation plan and its time budget.

The plan comes from the request (the same folds for every node of a task); the budget is
the part of the node's time limit the script plans to use, so it ends well inside the limit by
design, and less than that while the task has little time left, so that a search with a short
budget still gets through several nodes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mlmaster_daemon.coders.protocol import CodeRequest

# The node limit a script assumes when the request gives none (the daemon's default).
DEFAULT_NODE_TIMEOUT_S = 600.0
# Share of the node's limit a script plans to use, and the seconds kept for starting Python
# and importing the libraries (counted in the budget, but before the script can act).
BUDGET_SHARE = 0.6
STARTUP_S = 3.0
MIN_BUDGET_S = 1.0
# Share of the node's limit after which a script starts no further fold.
HARD_STOP_SHARE = 0.8
# While the task has little time left, one node plans for at most this share of it (two nodes
# run at once by default), but never for less than FLOOR_S when its limit allows.
TASK_SHARE = 0.3
FLOOR_S = 20.0

_TRAIN_SIZE = re.compile(r"^\S+: (\d+) rows x (\d+) columns", re.MULTILINE)


@dataclass(frozen=True)
class ScriptPlan:
    """The validation plan (`cv_folds` folds seeded by `cv_seed`; below 2, one 80/20 split)
    and the seconds the script may plan to run (`time_budget_s`) within `node_timeout_s`."""

    cv_folds: int = 5
    cv_seed: int = 0
    time_budget_s: float = DEFAULT_NODE_TIMEOUT_S * BUDGET_SHARE - STARTUP_S
    node_timeout_s: float | None = None

    @property
    def hard_stop_s(self) -> float:
        """Seconds after which the script starts no further fold: most of its limit (the
        limit the budget implies when none is known)."""
        limit = self.node_timeout_s or (self.time_budget_s + STARTUP_S) / BUDGET_SHARE
        return round(HARD_STOP_SHARE * limit, 1)


def script_plan(request: CodeRequest) -> ScriptPlan:
    """The plan for the script answering `request`."""
    limit = request.node_timeout_s or DEFAULT_NODE_TIMEOUT_S
    budget = limit * BUDGET_SHARE - STARTUP_S
    if request.time_left_s is not None:
        budget = min(budget, max(request.time_left_s * TASK_SHARE, FLOOR_S))
    return ScriptPlan(
        cv_folds=request.cv_folds,
        cv_seed=request.cv_seed,
        time_budget_s=round(max(budget, MIN_BUDGET_S), 1),
        node_timeout_s=request.node_timeout_s,
    )


def train_cells(preview: str) -> int | None:
    """Rows x columns of the training table, as the data preview gives them."""
    found = _TRAIN_SIZE.search(preview)
    return None if found is None else int(found.group(1)) * int(found.group(2))
