"""One daemon per state dir: an exclusive `flock` on `<state_dir>/mlmaster.lock`, held for the
daemon's whole life, with the holder's pid written in it for the next one to name."""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

from mlmaster_daemon.errors import StoreError
from mlmaster_daemon.store.writable import StateNotWritable, daemon_user, describe_denial

LOCK_NAME = "mlmaster.lock"


class StateDirInUse(StoreError):
    """Another process (a daemon) holds the state dir's lock."""

    code = "state_dir_in_use"
    status = 409


class StateDirLock:
    """Held while the file descriptor is open; the kernel drops it when the process dies, so a
    daemon killed with SIGKILL never leaves a stale lock behind."""

    def __init__(self, path: Path, fd: int):
        self.path = path
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, state_dir: Path) -> StateDirLock:
        """Take the lock or raise `StateDirInUse` naming the holder; nothing else is touched."""
        path = state_dir / LOCK_NAME
        if not state_dir.is_dir():
            try:
                state_dir.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StateNotWritable(
                    f"state dir {state_dir} cannot be made ({exc.strerror}): create it and "
                    f"make it writable by the daemon's user {daemon_user()}") from None
        try:
            # Not inherited by the node processes the daemon starts: they must not hold it.
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise StateNotWritable(
                    f"{path} is a symbolic link; remove it (the daemon makes its own lock "
                    "file there)") from None
            if os.path.lexists(path):
                raise StateNotWritable(describe_denial(path, exc, "lock file")) from None
            raise StateNotWritable(describe_denial(state_dir, exc, "state dir")) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            who = f"pid {holder}" if holder else "another process (its pid is not written yet)"
            stop = f"`kill -TERM {holder}`" if holder else "stopping it"
            raise StateDirInUse(
                f"state dir {state_dir} is in use by {who}: another mlmaster daemon runs on "
                f"it; stop that one first (`systemctl stop mlmaster` or {stop}), or give this "
                "one its own --state-dir") from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return cls(path, fd)

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        """Clear the pid and drop the lock. The file stays: unlinking a lock file lets two
        processes each lock a different inode."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)
        finally:
            os.close(fd)


def _holder(fd: int) -> int | None:
    """The pid the holder wrote, read bounded; None while it has not written it yet."""
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None
