"""The listing routes' last answers, kept while nothing they show has changed: many clients
polling the same listing (watch views, dashboards) cost one build per change, not one each.

An answer is keyed on the database's `data_version`, which every commit moves, so no answer
outlives a change the database holds; and it is kept at most `max_age_s`, for what a listing
shows from outside the database (the task folders' top/).
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable

# Answers kept: the task listing and a few node pages.
ENTRIES = 16
MAX_AGE_S = 1.0


class ReadCache:
    """JSON bodies by key (which holds the database's `data_version`), the most recently
    used `entries` of them, each for at most `max_age_s` after it was built."""

    def __init__(self, entries: int = ENTRIES, max_age_s: float = MAX_AGE_S) -> None:
        self.entries = entries
        self.max_age_s = max_age_s
        self._bodies: OrderedDict[Hashable, tuple[float, bytes]] = OrderedDict()
        # Requests that miss together wait for one build rather than each making their own.
        self._building = asyncio.Lock()

    def _fresh(self, key: Hashable, now: float) -> bytes | None:
        found = self._bodies.get(key)
        if found is None or now - found[0] > self.max_age_s:
            return None
        self._bodies.move_to_end(key)
        return found[1]

    async def body(self, key: Hashable, now: float,
                   build: Callable[[], Awaitable[bytes]]) -> bytes:
        """The body kept under `key` if built at most `max_age_s` before `now`, else the one
        `build` makes, kept. An error `build` raises is not kept."""
        found = self._fresh(key, now)
        if found is not None:
            return found
        async with self._building:
            found = self._fresh(key, now)
            if found is not None:
                return found
            body = await build()
            self._bodies[key] = (now, body)
            self._bodies.move_to_end(key)
            while len(self._bodies) > self.entries:
                self._bodies.popitem(last=False)
            return body
