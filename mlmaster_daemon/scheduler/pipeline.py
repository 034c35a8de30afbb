"""Pipelining: how many of a task's expansions generate code ahead of its running nodes, so a
run slot that frees up finds a node ready instead of waiting on the model.

An expansion is *ahead* from its start until its run ends (generating, ready, waiting for a
slot, running). Judging and scoring a finished run do not hold a run slot, so they do not
count: a slow judge never holds back the next generation."""

from __future__ import annotations

import asyncio
import math
import statistics
from collections import deque
from collections.abc import Iterable

from mlmaster_daemon.config import Config

# A spare generation beyond L/E's share, so jitter in either does not leave a slot waiting.
SPARE = 1
# Recent generations whose duration is remembered (their median is L).
REMEMBERED = 20


def prefetch_depth(slots: int, generation_s: float | None, run_s: float | None,
                   maximum: int) -> int:
    """Expansions to keep ahead of `slots` running ones: ceil(K x L / E) + SPARE, at most
    `maximum` (0: none). K slots free up K / E times a second and a generation takes L, so
    K x L / E must be under way for each freed slot to find a node ready. Before L and E are
    both known, L = E is assumed (K ahead)."""
    if maximum <= 0:
        return 0
    if generation_s is None or run_s is None:
        return min(maximum, slots)
    if run_s <= 0:
        return maximum
    return min(maximum, math.ceil(slots * generation_s / run_s) + SPARE)


class Pipeline:
    """One task's expansions ahead of their run's end, and how long its generations took.
    `changed` is set whenever one stops being ahead, for the loop to start the next."""

    def __init__(self) -> None:
        self.ahead: set[int] = set()
        self.generation_seconds: deque[float] = deque(maxlen=REMEMBERED)
        self.changed = asyncio.Event()

    def started(self, node_id: int) -> None:
        self.ahead.add(node_id)

    def generated(self, seconds: float) -> None:
        """A generation (the node's start to its code committed) took `seconds`."""
        self.generation_seconds.append(seconds)

    def ran(self, node_id: int) -> None:
        """The node's run ended (its slot is free), or its expansion ended without one."""
        if node_id in self.ahead:
            self.ahead.discard(node_id)
            self.changed.set()

    async def wait(self, expansions: set[asyncio.Task[None]]) -> set[asyncio.Task[None]]:
        """Wait until one of `expansions` ends or a run slot frees up (its node may still be
        judged): either may let the next generation start. The expansions that ended."""
        waker = asyncio.create_task(self.changed.wait())
        try:
            done, _ = await asyncio.wait({*expansions, waker},
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            waker.cancel()
        self.changed.clear()
        done.discard(waker)
        return done  # type: ignore[return-value]

    def medians(self, run_seconds: Iterable[float]) -> tuple[float | None, float | None]:
        """(L, E): the medians of the task's recent generations and runs (None: none yet)."""
        runs = list(run_seconds)
        return (statistics.median(self.generation_seconds) if self.generation_seconds else None,
                statistics.median(runs) if runs else None)

    def depth(self, slots: int, run_seconds: Iterable[float], maximum: int) -> int:
        """`prefetch_depth` from the task's recent generations and runs."""
        return prefetch_depth(slots, *self.medians(run_seconds), maximum)

    def room(self, config: Config, expansions: int, run_seconds: Iterable[float],
             left_s: float) -> bool:
        """Whether another of the task's `expansions` may start: fewer are ahead than its run
        slots plus the depth, which is at most `llm.prefetch` and at most what the code model
        serves at once (more would only queue there). One beyond the slots starts only while
        the task has L + E left: later it would be paid for and never run. With
        `llm.prefetch` = 0 there is no pipelining at all: an expansion counts until its
        outcome is in, so with one slot each pick sees every outcome before it."""
        slots, maximum = config.search.parallel, config.llm.prefetch
        if maximum == 0:
            return expansions < slots
        if len(self.ahead) < slots:
            return True
        if config.llm.code is not None:
            maximum = min(maximum, config.llm.code.max_concurrency)
        generation, run = self.medians(run_seconds)
        if generation is not None and run is not None and left_s < generation + run:
            return False
        return len(self.ahead) < slots + prefetch_depth(slots, generation, run, maximum)
