"""Time as an argument: what waits or measures takes a `Clock`, so tests drive time by hand."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from typing import Protocol


class Clock(Protocol):
    """Wall-clock seconds (`time.time()`'s scale: they are stored) and a way to wait."""

    def time(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    """The real clock."""

    def time(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class ManualClock:
    """A clock that moves only when told: `advance` wakes every sleeper whose time has come.
    A sleep of zero or less returns at once (after one turn of the event loop)."""

    def __init__(self, start: float = 1_000_000.0) -> None:
        self.now = start
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    def time(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        wake: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self.now + seconds, next(self._order), wake))
        await wake

    def advance(self, seconds: float) -> None:
        """Move time forward and wake the sleeps that end by then."""
        self.now += seconds
        while self._sleepers and self._sleepers[0][0] <= self.now:
            _at, _n, wake = heapq.heappop(self._sleepers)
            if not wake.done():
                wake.set_result(None)
