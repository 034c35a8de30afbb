"""The store's connections and its two ways in: reads on the reader connection and
transactions on the writer (see `db.Store`, which every part of the store makes up)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiosqlite

from mlmaster_daemon.store.rows import update_row


class StoreBase:
    """One writer connection behind a lock, one reader connection."""

    def __init__(self, path: Path, writer: aiosqlite.Connection, reader: aiosqlite.Connection):
        self.path = path
        self._writer = writer
        self._reader = reader
        self._lock = asyncio.Lock()

    async def _fetch(self, query: str, params: Sequence[Any] = ()) -> list[Any]:
        """Every row of a read. Shielded: a caller cancelled mid-read must not leave the
        statement open, which would hold the reader on its old snapshot (later reads would not
        see later commits)."""
        return await asyncio.shield(self._read(query, params, one=False))

    async def _fetch_one(self, query: str, params: Sequence[Any] = ()) -> Any:
        """The first row of a read (None when there is none); shielded as `_fetch`."""
        return await asyncio.shield(self._read(query, params, one=True))

    async def _read(self, query: str, params: Sequence[Any], one: bool) -> Any:
        # One hop to the connection's thread (a cursor's execute, fetch and close are three).
        rows = list(await self._reader.execute_fetchall(query, params))
        if one:
            return rows[0] if rows else None
        return rows

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        async with self._lock:
            try:
                await self._writer.execute("BEGIN IMMEDIATE")
                yield self._writer
            except BaseException:
                # Also when cancelled while waiting for BEGIN, which then still runs on the
                # connection's thread: the rollback queues behind it, so the connection is
                # never left inside a transaction. Shielded: a second cancel cannot skip it.
                await asyncio.shield(self._writer.rollback())
                raise
            await asyncio.shield(self._writer.commit())

    async def _update(
        self, table: str, allowed: frozenset[str], where: str, key: tuple[Any, ...],
        fields: Mapping[str, Any],
    ) -> None:
        async with self._transaction() as db:
            await update_row(db, table, allowed, where, key, fields)
