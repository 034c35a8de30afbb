"""Numbered SQL migrations applied under `PRAGMA user_version`, each in its own transaction."""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources

import aiosqlite

_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def available() -> list[Migration]:
    """The package's migrations in order; versions must be 1, 2, 3, ... with no gap."""
    found = []
    for entry in resources.files("mlmaster_daemon.store").joinpath("migrations").iterdir():
        match = _NAME.match(entry.name)
        if match:
            found.append(Migration(int(match.group(1)), entry.name, entry.read_text()))
    found.sort(key=lambda m: m.version)
    for expected, migration in enumerate(found, start=1):
        if migration.version != expected:
            raise RuntimeError(
                f"migration {migration.name} breaks the sequence; expected {expected:04d}"
            )
    return found


async def current_version(conn: aiosqlite.Connection) -> int:
    async with conn.execute("PRAGMA user_version") as cur:
        row = await cur.fetchone()
    return int(row[0]) if row else 0


async def migrate(conn: aiosqlite.Connection) -> int:
    """Apply every migration newer than the database; return the resulting version."""
    version = await current_version(conn)
    migrations = available()
    if version > len(migrations):
        raise RuntimeError(
            f"database schema version {version} is newer than this daemon knows "
            f"({len(migrations)}); upgrade mlmaster-daemon"
        )
    for migration in migrations[version:]:
        # DDL is transactional in SQLite: the schema and user_version move together or not at all.
        await conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in _statements(migration.sql):
                await conn.execute(statement)
            await conn.execute(f"PRAGMA user_version = {migration.version}")
            await conn.commit()
        except BaseException:
            await conn.rollback()
            raise
    return await current_version(conn)


def _statements(sql: str) -> list[str]:
    """Split a migration into statements. Comments go first (they may hold semicolons); our
    migrations keep `--` out of string literals so this stays a line-level cut."""
    body = "\n".join(line.split("--", 1)[0] for line in sql.splitlines())
    return [s.strip() for s in body.split(";") if s.strip()]
