"""The state of one task's search while it runs, shared by its loop and its expansions."""

from __future__ import annotations

import statistics
from collections import deque
from pathlib import Path

import anyio

from mlmaster_daemon.artefacts import node_dir
from mlmaster_daemon.policy_config import make_policy
from mlmaster_daemon.scheduler.budget import Budget
from mlmaster_daemon.scheduler.holdout_stage import ActiveHoldout
from mlmaster_daemon.scheduler.parts import SearchParts
from mlmaster_daemon.scheduler.publish import Publisher
from mlmaster_daemon.scheduler.task_memory import TaskMemory
from mlmaster_daemon.search.hcc import TaskProfile
from mlmaster_daemon.search.policy import Pick, Policy
from mlmaster_daemon.store.records import SavedSearch, TaskRecord

# No node starts with less of the task's time left than this (or than the node's own limit,
# when that is shorter), nor than the median run of the task's recent nodes: a run cut to a
# second or two is only killed, and holds a slot while it dies.
MIN_NODE_S = 5.0
# Expansions that fail in a row, with no node reaching an outcome in between, before the task
# fails: a coder or harness that raises every time would otherwise spin through the steps.
MAX_FAILED_IN_A_ROW = 10


class SearchState:
    """The policy and its open picks, the memory, the budget and the best so far of one task."""

    def __init__(self, task: TaskRecord, parts: SearchParts) -> None:
        config = parts.settings.config
        self.task = task
        self.parts = parts
        self.policy: Policy = make_policy(task.policy, config.search, task.spec.lower_is_better,
                                          task.steps, config.search.seed)
        # Picks whose node exists but has not finished; saved with the policy's state, so a
        # restart knows which nodes the tree holds a place for.
        self.open_picks: dict[int, Pick] = {}
        self.memory = TaskMemory(parts.settings, parts.counter)
        # The time budget counts active time only: what earlier runs used is carried over.
        self.budget = Budget.start(parts.clock.time(), task.time_limit_s, task.active_s,
                                   task.max_tokens, task.max_cost)
        # This task's own cap on parallel runs; generation may run ahead of it. A limiter
        # rather than a semaphore: a config reload can change its size while nodes run.
        self.run_slots = anyio.CapacityLimiter(config.search.parallel)
        self.best_metric = task.best_metric
        # What best/ is chosen by (the selection rule's value of the best node so far; see
        # `selection_key`), set again from the tree at each start.
        self.best_key: float | None = None
        # The task's hidden holdout, once the start prepared it (None: the task has none).
        self.holdout: ActiveHoldout | None = None
        self.preview = ""
        self.profile: TaskProfile | None = None
        # How long the task's recent runs took (seconds), to tell when too little time is
        # left to start another.
        self.run_seconds: deque[float] = deque(maxlen=20)
        # Expansions that failed (an error, not a buggy script) since the last outcome.
        self.failed_in_a_row = 0
        self.last_failure = ""
        self.cancel_requested = False
        # Set when the daemon stops: no new expansion, no new run; running nodes finish.
        self.draining = False
        self.publish = Publisher(parts, task.id)

    def now(self) -> float:
        return self.parts.clock.time()

    def saved(self) -> SavedSearch:
        """What is committed with every outcome, for a restart to continue from: the policy
        (without its tree's nodes), the open picks and the memory whole, and of the tree the
        nodes that changed since the last commit."""
        tree = self.policy.tree
        rows, dropped = tree.take_unsaved()
        head = {"policy": self.policy.to_state(nodes=False),
                "inflight": {str(k): p.to_state() for k, p in self.open_picks.items()},
                "memory": self.memory.to_state()}
        return SavedSearch(head, rows, dropped, lambda: tree.keep_unsaved(rows, dropped))

    def node_dir(self, node_id: int) -> Path:
        return node_dir(self.parts.state_dir, self.task.id, node_id)

    def node_fits(self) -> bool:
        """Whether enough of the task's time is left to start a node (see `MIN_NODE_S`)."""
        typical = statistics.median(self.run_seconds) if self.run_seconds else 0.0
        floor = min(MIN_NODE_S, self.task.node_timeout_s)
        return self.budget.left_s(self.now()) >= max(floor, typical)

    def selection_key(self, metric: float, holdout_metric: float | None) -> float:
        """A working node's value under the final-selection rule (`[holdout] selection`):
        never read by the search, only to choose what best/ holds."""
        rule = self.parts.settings.config.holdout.selection
        if rule == "validation" or holdout_metric is None:
            return metric
        if rule == "holdout":
            return holdout_metric
        return (metric + holdout_metric) / 2

    def improves(self, key: float, metric: float) -> bool:
        """Whether a node with this selection key (and validation metric) should replace
        best/: a better key, or an equal key with a better validation metric."""
        if self.best_key is None or self.best_metric is None:
            return True
        sign = -1.0 if self.task.spec.lower_is_better else 1.0
        return (sign * key, sign * metric) > (sign * self.best_key, sign * self.best_metric)
