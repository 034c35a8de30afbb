"""What the API's handlers reach (`ApiParts`), apart from app.py so that the modules of the
larger routes (node_pages.py, task_views.py) can take it without importing the app."""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from mlmaster_daemon.api.access import Peer
from mlmaster_daemon.api.read_cache import ReadCache
from mlmaster_daemon.bus import EventBus
from mlmaster_daemon.config import Config, DaemonConfig, Settings
from mlmaster_daemon.scheduler import TaskQueue
from mlmaster_daemon.store import Store


async def no_slots() -> dict[str, Any]:
    return {}


@dataclass
class ApiParts:
    """What the API's handlers reach: the store, the bus, the task queue and the live config."""

    store: Store
    bus: EventBus
    queue: TaskQueue
    settings: Settings
    state_dir: Path
    started_at: float
    llm_status: Callable[[], list[dict[str, Any]]] = lambda: []
    slots_status: Callable[[], Awaitable[dict[str, Any]]] = no_slots
    # Connections whose peer `admit_peer` admitted, with the [daemon] it was admitted under.
    admitted: weakref.WeakKeyDictionary[asyncio.BaseTransport, tuple[DaemonConfig, Peer]] = (
        field(default_factory=weakref.WeakKeyDictionary, repr=False))
    # The listing routes' last answers (see read_cache.py).
    reads: ReadCache = field(default_factory=ReadCache, repr=False)

    @property
    def config(self) -> Config:
        """The daemon's live config (a reload swaps it in `settings`)."""
        return self.settings.config


API_PARTS = web.AppKey("parts", ApiParts)
