"""Start-up integrity check and rolling backups of the SQLite database."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from mlmaster_daemon.errors import StoreError

KEEP = 3


def backups_dir(db: Path) -> Path:
    return db.parent / "backups"


def latest_backup(db: Path) -> Path | None:
    found = sorted(backups_dir(db).glob(f"{db.stem}-*.db"))
    return found[-1] if found else None


def check_integrity(db: Path) -> None:
    """Refuse a corrupt database (PRAGMA quick_check) with what to do about it."""
    if not db.exists():
        return
    try:
        with sqlite3.connect(db) as conn:
            rows = conn.execute("PRAGMA quick_check").fetchall()
        problems = [r[0] for r in rows if r[0] != "ok"]
    except sqlite3.DatabaseError as exc:
        problems = [str(exc)]
    if not problems:
        return
    backup = latest_backup(db)
    remedy = (f"stop the daemon, move {db} aside and copy the last good backup {backup} "
              f"to {db}" if backup else "no backup exists yet; move it aside to start afresh")
    raise StoreError(f"database {db} is corrupt ({'; '.join(problems[:3])}): {remedy}")


def make_backup(db: Path, keep: int = KEEP) -> Path:
    """A consistent copy (SQLite's online backup) in backups/, keeping the newest `keep`."""
    folder = backups_dir(db)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{db.stem}-{time.strftime('%Y%m%dT%H%M%S')}-{time.time_ns() % 10**6:06d}.db"
    with sqlite3.connect(db) as source, sqlite3.connect(target) as copy:
        source.backup(copy)
    for old in sorted(folder.glob(f"{db.stem}-*.db"))[:-keep]:
        old.unlink()
    return target
