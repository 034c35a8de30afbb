"""Rate limits and a circuit breaker for one endpoint. Time comes from an injected clock, and
waits go through an injected sleep, so tests drive both without spending wall time."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from enum import StrEnum

Now = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


class TokenBucket:
    """`rate_per_minute` units refill continuously up to one minute's worth; 0 = unlimited."""

    def __init__(self, rate_per_minute: float, clock: Now = time.monotonic,
                 sleep: Sleep = asyncio.sleep):
        self.rate = rate_per_minute / 60.0
        self.capacity = rate_per_minute
        self.level = rate_per_minute
        self.clock = clock
        self.sleep = sleep
        self.updated = clock()
        self._lock = asyncio.Lock()

    def _refill(self) -> None:
        now = self.clock()
        self.level = min(self.capacity, self.level + (now - self.updated) * self.rate)
        self.updated = now

    def delay_for(self, amount: float) -> float:
        """Seconds until `amount` units are available (0 when they are now)."""
        if self.rate <= 0:
            return 0.0
        self._refill()
        # A request larger than the bucket waits for a full bucket, then goes.
        needed = min(amount, self.capacity) - self.level
        return max(needed / self.rate, 0.0)

    async def take(self, amount: float) -> None:
        if self.rate <= 0:
            return
        async with self._lock:
            # A timed refill, not a poll: each wait is exactly how long the bucket needs.
            while (wait := self.delay_for(amount)) > 0:
                await self.sleep(wait)
            self.level -= min(amount, self.capacity)


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    """Opens after `threshold` consecutive failed calls; after `cooldown_s` one probe may try
    (half-open); a success closes it, a failure opens it again."""

    def __init__(self, threshold: int, cooldown_s: float, clock: Now = time.monotonic):
        self.threshold = threshold
        self.cooldown_s = cooldown_s
        self.clock = clock
        self.failures = 0
        self.opened_at: float | None = None
        self.last_error: str | None = None

    @property
    def state(self) -> BreakerState:
        if self.opened_at is None:
            return BreakerState.CLOSED
        if self.clock() - self.opened_at >= self.cooldown_s:
            return BreakerState.HALF_OPEN
        return BreakerState.OPEN

    def record_success(self) -> None:
        self.failures = 0
        self.opened_at = None
        self.last_error = None

    def record_failure(self, error: str) -> None:
        self.failures += 1
        self.last_error = error
        if self.failures >= self.threshold or self.opened_at is not None:
            self.opened_at = self.clock()

    def seconds_until_probe(self) -> float:
        if self.opened_at is None:
            return 0.0
        return max(self.opened_at + self.cooldown_s - self.clock(), 0.0)
