"""Start-up integrity check and backups of the SQLite database, taken at every start and every
`[daemon] backup_interval_s` while the daemon runs.

Rotation keeps the newest `KEEP` backups and, besides them, the one holding the most work: a
database that lost its `-wal` and was started anyway (or lost without proof on disk) must not
push the last good copy out with three quick restarts.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from mlmaster_daemon.errors import StoreError
from mlmaster_daemon.store.evidence import (
    TERMINAL_STATES,
    TaskFiles,
    find_gaps,
    open_readonly,
    read_disk,
)

KEEP = 3
PARTIAL_SUFFIX = ".partial"


@dataclass(frozen=True)
class BackupChoice:
    """The backup to restore, and how many of the things the files prove it still lacks."""

    path: Path
    gaps: int


def backups_dir(db: Path) -> Path:
    return db.parent / "backups"


def list_backups(db: Path) -> list[Path]:
    """Finished backups, oldest first (their names sort by the time they were taken)."""
    return sorted(backups_dir(db).glob(f"{db.stem}-*.db"))


def latest_backup(db: Path) -> Path | None:
    found = list_backups(db)
    return found[-1] if found else None


def database_file(state_dir: Path) -> Path:
    return state_dir / "mlmaster.db"


class IntegrityCheck:
    """`check_integrity` on a thread of its own from the moment it is made. The daemon command
    makes it before it imports the daemon: reading a big database's every page (0.2 s at 10k
    nodes) then overlaps the imports instead of following them. Read-only, so it may start
    before the state dir's lock is taken; its verdict is awaited after."""

    def __init__(self, db: Path) -> None:
        self.db = db
        self._verdict: concurrent.futures.Future[None] = concurrent.futures.Future()
        threading.Thread(target=self._run, name="integrity-check", daemon=True).start()

    def _run(self) -> None:
        try:
            check_integrity(self.db)
        except BaseException as exc:
            self._verdict.set_exception(exc)
        else:
            self._verdict.set_result(None)

    async def passed(self) -> None:
        """Returns once the database is found sound; raises StoreError when it is not."""
        await asyncio.wrap_future(self._verdict)


def check_integrity(db: Path) -> None:
    """Refuse a corrupt database (PRAGMA quick_check) with what to do about it. Read-only: a
    refused database is left exactly as it was found."""
    if not db.exists():
        return
    try:
        with contextlib.closing(open_readonly(db)) as conn:
            rows = conn.execute("PRAGMA quick_check").fetchall()
        problems = [r[0] for r in rows if r[0] != "ok"]
    except sqlite3.DatabaseError as exc:
        problems = [str(exc)]
    if not problems:
        return
    choice = choose_backup(db, read_disk(db.parent))
    remedy = (f"stop the daemon, move {db} (and its -wal and -shm files) aside and copy the "
              f"last good backup {choice.path} to {db}" if choice
              else "no backup exists yet; move it aside to start afresh")
    raise StoreError(f"database {db} is corrupt ({'; '.join(problems[:3])}): {remedy}")


def make_backup(db: Path, keep: int = KEEP) -> Path:
    """A consistent copy (SQLite's online backup, safe while the daemon writes) in backups/,
    whole or not at all; then the rotation (see the module)."""
    folder = backups_dir(db)
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob(f".{db.stem}-*.db{PARTIAL_SUFFIX}"):
        # A backup cut short by a crash; only one daemon (the lock holder) writes here.
        stale.unlink(missing_ok=True)
    now = time.time_ns()
    # Microseconds of that same second: names sort in the order the backups were taken.
    stamp = time.strftime("%Y%m%dT%H%M%S", time.localtime(now // 10**9))
    name = f"{db.stem}-{stamp}-{now // 1000 % 10**6:06d}.db"
    target = folder / name
    partial = folder / f".{name}{PARTIAL_SUFFIX}"
    try:
        with (contextlib.closing(open_readonly(db)) as source,
              contextlib.closing(sqlite3.connect(partial)) as copy):
            source.backup(copy)
            # Self-contained: one file, no -wal beside it, readable as it is.
            copy.execute("PRAGMA journal_mode = DELETE")
        _fsync(partial)
        os.replace(partial, target)
        _fsync(folder)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    rotate(db, keep)
    return target


def rotate(db: Path, keep: int = KEEP) -> list[Path]:
    """Delete all but the newest `keep` backups and the one holding the most work (finished
    nodes, then nodes, then tasks; the newest of equals). Returns what was deleted."""
    found = list_backups(db)
    if len(found) <= keep:
        return []
    richest = max(reversed(found), key=backup_weight)
    deleted = [old for old in found[:-keep] if old != richest]
    for old in deleted:
        old.unlink(missing_ok=True)
    return deleted


def backup_weight(path: Path) -> tuple[int, int, int]:
    """(finished nodes, nodes, tasks) a backup holds; a copy that cannot be read holds none."""
    marks = ", ".join("?" * len(TERMINAL_STATES))
    try:
        with contextlib.closing(open_readonly(path, immutable=True)) as conn:
            finished = conn.execute(f"SELECT COUNT(*) FROM nodes WHERE state IN ({marks})",
                                    TERMINAL_STATES).fetchone()[0]
            nodes = conn.execute("SELECT COUNT(*) FROM nodes").fetchone()[0]
            tasks = conn.execute("SELECT COUNT(*) FROM tasks").fetchone()[0]
    except sqlite3.Error:
        return (-1, -1, -1)
    return (int(finished), int(nodes), int(tasks))


def choose_backup(db: Path, tasks: list[TaskFiles]) -> BackupChoice | None:
    """The newest sound backup among those that lack the least of what the task folders
    prove; None when there is no sound backup."""
    chosen: BackupChoice | None = None
    for path in reversed(list_backups(db)):
        try:
            with contextlib.closing(open_readonly(path, immutable=True)) as conn:
                if conn.execute("PRAGMA quick_check").fetchall() != [("ok",)]:
                    continue
            gaps = len(find_gaps(tasks, path, immutable=True))
        except sqlite3.Error:
            continue
        if chosen is None or gaps < chosen.gaps:
            chosen = BackupChoice(path, gaps)
    return chosen


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
