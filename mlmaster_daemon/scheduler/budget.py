"""A task's budgets: active time (paused time and daemon downtime do not count), tokens and
cost. Pure: every question takes `now`."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Budget:
    """Time left runs to `deadline`; while paused (waiting for a model that is down), the clock
    of the task stands still and `unpause` moves the deadline on by the pause."""

    time_limit_s: float
    deadline: float
    max_tokens: int = 0
    max_cost: float = 0.0
    paused_at: float | None = None
    # Expansions waiting for the model at once: the task is paused while any is.
    waiting: int = 0
    # Set once a token or cost cap is reached: no new generation from then on.
    exhausted: str | None = None

    @classmethod
    def start(cls, now: float, time_limit_s: float, active_s: float, max_tokens: int = 0,
              max_cost: float = 0.0) -> Budget:
        """The budget of a task (re)started at `now` that had used `active_s` before."""
        return cls(time_limit_s, now + time_limit_s - active_s, max_tokens, max_cost)

    def active_s(self, now: float) -> float:
        """Active seconds used, this run and earlier ones."""
        at = self.paused_at if self.paused_at is not None else now
        return max(self.time_limit_s - (self.deadline - at), 0.0)

    def left_s(self, now: float) -> float:
        return max(self.deadline - now, 0.0)

    def expired(self, now: float) -> bool:
        return now >= self.deadline

    def node_timeout(self, now: float, node_timeout_s: float) -> float:
        """A node's time limit: its own, cut to what the task has left (at least a second)."""
        return max(1.0, min(node_timeout_s, self.deadline - now))

    def pause(self, now: float) -> bool:
        """One more expansion waits for the model; True when this one pauses the task."""
        self.waiting += 1
        if self.waiting == 1:
            self.paused_at = now
            return True
        return False

    def unpause(self, now: float) -> bool:
        """One expansion stops waiting; True when the task runs again (its deadline moved on
        by the time it was paused)."""
        self.waiting -= 1
        if self.waiting > 0:
            return False
        if self.paused_at is not None:
            self.deadline += now - self.paused_at
            self.paused_at = None
        return True

    @property
    def limits_usage(self) -> bool:
        return bool(self.max_tokens or self.max_cost)

    def check_usage(self, total_tokens: int, cost: float) -> str | None:
        """The reason generation stops, once the token or cost cap is reached (kept after)."""
        if self.exhausted is None:
            if self.max_tokens and total_tokens >= self.max_tokens:
                self.exhausted = f"token budget reached: {total_tokens} of {self.max_tokens}"
            elif self.max_cost and cost >= self.max_cost:
                self.exhausted = f"cost budget reached: ${cost:.4f} of ${self.max_cost}"
        return self.exhausted
