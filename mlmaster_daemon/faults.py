"""Faults of the machine, not of a task: a full disk, a quota, a read-only or failing
filesystem under the state directory.

A task that meets one is not failed (nothing is wrong with it) and not relaunched at once (the
disk is still full): it pauses, the scheduler waits with a growing back-off, probes that writes
work again, and resumes it from its last commit.
"""

from __future__ import annotations

import errno
import os
import sqlite3
from pathlib import Path

from mlmaster_daemon.errors import MlmasterError

# errno values that say the storage, not the caller, is at fault.
_STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO})
# SQLite reports the same faults in words (SQLITE_FULL, SQLITE_IOERR, SQLITE_READONLY).
_SQLITE_WORDS = ("database or disk is full", "disk i/o error", "readonly database",
                 "attempt to write a readonly")
PROBE_BYTES = 64 * 1024


class StorageFault(MlmasterError):
    """The daemon could not write its state (disk full, read-only, I/O error)."""

    code = "storage_fault"
    status = 503


def is_storage_fault(exc: BaseException) -> bool:
    """Whether `exc`, or an exception it was raised from, is a fault of the storage."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, StorageFault):
            return True
        if isinstance(current, OSError) and current.errno in _STORAGE_ERRNOS:
            return True
        if isinstance(current, sqlite3.OperationalError | sqlite3.DatabaseError) and any(
                word in str(current).lower() for word in _SQLITE_WORDS):
            return True
        current = current.__cause__ or current.__context__
    return False


def describe(exc: BaseException) -> str:
    """The fault in a few words for a task's state and the log."""
    text = str(exc).strip() or type(exc).__name__
    return f"cannot write the daemon's state: {text}"


def probe_storage(state_dir: Path) -> str | None:
    """Write, sync and remove a small file in `state_dir`: None when that works, else why not.
    Blocking: run it in a thread."""
    probe = state_dir / ".write-probe"
    try:
        with probe.open("wb") as handle:
            handle.write(b"\0" * PROBE_BYTES)
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as exc:
        return exc.strerror or str(exc)
    finally:
        try:
            probe.unlink()
        except OSError:
            pass
    return None


def backoff_s(attempt: int, first_s: float, cap_s: float) -> float:
    """The pause before retry `attempt` (1, 2, ...): `first_s`, doubling up to `cap_s`."""
    return float(min(first_s * 2.0 ** max(attempt - 1, 0), max(cap_s, first_s)))
