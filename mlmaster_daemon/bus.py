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


@dataclass(frozen=True, kw_only=True)
class BestImproved(Event):
    type: ClassVar[str] = "task.best"
    node_id: int
    metric: float
    submission_path: str


class Subscription:
    """One subscriber's bounded queue. When it is full the oldest event is dropped."""

    def __init__(self, maxsize: int, accept: Callable[[Event], bool]):
        self.queue: asyncio.Queue[Event] = asyncio.Queue(maxsize)
        self.accept = accept

    def offer(self, event: Event) -> None:
        if not self.accept(event):
            return
        if self.queue.full():
            self.queue.get_nowait()
        self.queue.put_nowait(event)

    async def get(self) -> Event:
        return await self.queue.get()


class EventBus:
    def __init__(self, queue_size: int = 1000):
        self._queue_size = queue_size
        self._subscribers: set[Subscription] = set()

    def publish(self, event: Event) -> None:
        for sub in list(self._subscribers):
            sub.offer(event)

    @asynccontextmanager
    async def subscribe(
        self, accept: Callable[[Event], bool] = lambda _event: True
    ) -> AsyncIterator[Subscription]:
        sub = Subscription(self._queue_size, accept)
        self._subscribers.add(sub)
        try:
            yield sub
        finally:
            self._subscribers.discard(sub)
