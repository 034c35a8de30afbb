"""Before the daemon relies on its state dir: can its user write there? A read-only or
immutable database (or folder) is named with what to do, instead of failing on the first write
deep inside SQLite."""

from __future__ import annotations

import errno
import os
import pwd
import tempfile
from pathlib import Path

from mlmaster_daemon.errors import StoreError

# What SQLite writes beside the database in WAL mode.
DB_SIDE_FILES = ("-wal", "-shm")


class StateNotWritable(StoreError):
    """The daemon's user cannot write a file or folder it must write."""

    code = "state_not_writable"


def daemon_user() -> str:
    uid = os.geteuid()
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def describe_denial(path: Path, exc: OSError, what: str) -> str:
    """One line: which path, why it cannot be written and what to do about it."""
    user = daemon_user()
    name = user.split(" ")[0]
    if exc.errno == errno.EROFS:
        return (f"{what} {path} is on a read-only file system: remount it read-write, or give "
                "the daemon a --state-dir on a writable one")
    if exc.errno == errno.EPERM:
        return (f"{what} {path} cannot be written, not even by its owner: it is immutable or "
                f"append-only (`lsattr -d {path}` shows i or a); clear that with "
                f"`chattr -i -a {path}`, then make it writable by the daemon's user {user}")
    if exc.errno in (errno.EACCES, errno.ENOENT, errno.ENOTDIR):
        return (f"{what} {path} is not writable by the daemon's user {user} "
                f"({exc.strerror}): make it writable by that user, e.g. "
                f"`chown {name} {path} && chmod u+rw{'x' if what.endswith('dir') else ''} "
                f"{path}`, or run the daemon as its owner")
    return (f"{what} {path} cannot be written by the daemon's user {user} ({exc.strerror}): "
            "make it writable by that user")


def check_writable(state_dir: Path, db: Path) -> None:
    """Raise `StateNotWritable` unless the daemon's user may create files in the state dir (and
    its `tasks/` and `backups/` folders) and write the database and its WAL files."""
    for folder, what in ((state_dir, "state dir"), (state_dir / "tasks", "task dir"),
                         (state_dir / "backups", "backup dir")):
        if folder is state_dir or folder.is_dir():
            _probe_folder(folder, what)
    for path in (db, *(db.with_name(db.name + suffix) for suffix in DB_SIDE_FILES)):
        if not os.path.lexists(path):
            continue
        try:
            # Opening for writing changes nothing, but fails the way a write would.
            os.close(os.open(path, os.O_RDWR | os.O_CLOEXEC))
        except OSError as exc:
            raise StateNotWritable(describe_denial(path, exc, "database file")) from None


def _probe_folder(folder: Path, what: str) -> None:
    try:
        fd, name = tempfile.mkstemp(prefix=".mlmaster-write-probe-", dir=folder)
    except OSError as exc:
        raise StateNotWritable(describe_denial(folder, exc, what)) from None
    os.close(fd)
    os.unlink(name)
