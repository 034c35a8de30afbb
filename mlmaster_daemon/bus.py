"""In-process event bus: typed events, bounded subscriber queues, no business logic.

Publishers commit to the store first and publish after, so a subscriber never sees an event
for a state that a crash could take back.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

from mlmaster_daemon.logs import get_logger

log = get_logger("mlmaster.bus")


@dataclass(frozen=True, kw_only=True)
class Event:
    type: ClassVar[str] = "event"
    task_id: str
    ts: float = field(default_factory=time.time)

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, **asdict(self)}


@dataclass(frozen=True, kw_only=True)
class TaskStateChanged(Event):
    type: ClassVar[str] = "task.state"
    state: str
    error: str | None = None


@dataclass(frozen=True, kw_only=True)
class NodeStateChanged(Event):
    type: ClassVar[str] = "node.state"
    node_id: int
    parent_id: int | None
    operator: str
    state: str
    metric: float | None = None
    error: str | None = None
    nodes_total: int = 0
    nodes_done: int = 0
    # The node's score on the task's hidden holdout, once done (for people and dashboards;
    # the search never subscribes to it).
    holdout_metric: float | None = None


@dataclass(frozen=True, kw_only=True)
class BestImproved(Event):
    type: ClassVar[str] = "task.best"
    node_id: int
    metric: float
    submission_path: str


class Subscription:
    """One subscriber's bounded queue. When it is full the oldest event is dropped (and
    `on_drop` is told)."""

    def __init__(self, maxsize: int, accept: Callable[[Event], bool],
                 on_drop: Callable[[], None] = lambda: None):
        self.queue: asyncio.Queue[Event] = asyncio.Queue(maxsize)
        self.accept = accept
        self._on_drop = on_drop

    def offer(self, event: Event) -> None:
        if not self.accept(event):
            return
        if self.queue.full():
            self.queue.get_nowait()
            self._on_drop()
        self.queue.put_nowait(event)

    async def get(self) -> Event:
        return await self.queue.get()


class EventBus:
    def __init__(self, queue_size: int = 1000):
        self._queue_size = queue_size
        self._subscribers: set[Subscription] = set()
        self._taps: list[Callable[[Event], None]] = []
        # Events dropped from full subscriber queues since start (a slow reader).
        self.dropped = 0

    def publish(self, event: Event) -> None:
        for tap in list(self._taps):
            try:
                tap(event)
            except Exception:
                # A tap (metrics, a task's log) never stops the publisher's own work.
                log.exception("an event tap failed", event_type=event.type)
        for sub in list(self._subscribers):
            sub.offer(event)

    def tap(self, listener: Callable[[Event], None]) -> None:
        """Call `listener` with every event as it is published, in order and without loss; it
        runs inside `publish`, so it must be quick and never wait."""
        self._taps.append(listener)

    def _count_drop(self) -> None:
        self.dropped += 1

    @asynccontextmanager
    async def subscribe(
        self, accept: Callable[[Event], bool] = lambda _event: True
    ) -> AsyncIterator[Subscription]:
        sub = Subscription(self._queue_size, accept, self._count_drop)
        self._subscribers.add(sub)
        try:
            yield sub
        finally:
            self._subscribers.discard(sub)
