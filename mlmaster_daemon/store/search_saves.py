"""The search state a task's commits save and its restore reads: a head (the policy without
its tree's nodes, the open picks, the memory) in tasks.search_state, and one row per tree
node in search_nodes, of which a commit writes only those that changed (`SavedSearch`)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiosqlite

from mlmaster_daemon.errors import TaskNotFound
from mlmaster_daemon.store.base import StoreBase
from mlmaster_daemon.store.records import SavedSearch


class SearchSaves(StoreBase):
    """Saving and reading a task's search state (see the module docstring)."""

    @asynccontextmanager
    async def _search_transaction(
            self, saved: SavedSearch | None) -> AsyncIterator[aiosqlite.Connection]:
        """A transaction that tells `saved` when it did not commit (its rows stay unsaved)."""
        try:
            async with self._transaction() as db:
                yield db
        except BaseException:
            if saved is not None:
                saved.unsaved()
            raise

    async def search_head(self, task_id: str) -> dict[str, Any] | None:
        """The search state saved with the task's last commit, without its tree's nodes when
        they are saved as rows (`search_rows` reads them); None before the first."""
        row = await self._fetch_one("SELECT search_state FROM tasks WHERE id = ?", (task_id,))
        if row is None:
            raise TaskNotFound(f"no task with id {task_id!r}; `mlmaster ls` lists the tasks")
        if row[0] is None:
            return None
        state: dict[str, Any] = json.loads(row[0])
        return state

    async def search_rows(self, task_id: str, after: int, limit: int) -> list[tuple[int, str]]:
        """Up to `limit` saved tree rows (id, JSON) of the task with ids above `after`, by id:
        a restore reads a big tree in slices."""
        # SQLite hands back (int, str) tuples as they are: no copy on the event loop.
        rows: list[tuple[int, str]] = await self._fetch(
            "SELECT id, row FROM search_nodes WHERE task_id = ? AND id > ? ORDER BY id LIMIT ?",
            (task_id, after, limit))
        return rows

    async def search_state(self, task_id: str) -> dict[str, Any] | None:
        """The whole search state saved with the task's last commit (its tree's nodes read
        back into it), if any."""
        state = await self.search_head(task_id)
        if state is None:
            return None
        tree = state["policy"]["tree"]
        if "nodes" not in tree:
            rows = await self._fetch(
                "SELECT row FROM search_nodes WHERE task_id = ? ORDER BY id", (task_id,))
            tree["nodes"] = [json.loads(r[0]) for r in rows]
        return state


async def save_search(db: aiosqlite.Connection, task_id: str,
                       saved: SavedSearch | None) -> None:
    """Write a commit's search state: the head whole, the changed tree rows, the rows of
    nodes that left removed."""
    if saved is None:
        return
    await db.execute("UPDATE tasks SET search_state = ? WHERE id = ?",
                     (json.dumps(saved.head), task_id))
    await db.executemany(
        "INSERT INTO search_nodes (task_id, id, row) VALUES (?, ?, ?) "
        "ON CONFLICT (task_id, id) DO UPDATE SET row = excluded.row",
        [(task_id, node_id, json.dumps(row)) for node_id, row in saved.rows.items()])
    await db.executemany("DELETE FROM search_nodes WHERE task_id = ? AND id = ?",
                         [(task_id, node_id) for node_id in saved.dropped])

