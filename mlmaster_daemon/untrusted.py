"""Reading files that a job or a user wrote: bounded, and never through a link.

A node's script may replace `stdout.log` with a symlink to a key file, make `submission/` a
link to another task's folder, turn `stderr.log` into a FIFO or a 3 GiB sparse file. Every read
of a workspace file goes through here: the path is opened one component at a time below a
directory the daemon owns, each with O_NOFOLLOW (a link anywhere on the way is refused), the
file must be a regular one (checked on the open descriptor, so it cannot change in between),
and only a bounded number of bytes is ever read, from the head, the tail or both.

All of it is blocking file I/O: async callers use `asyncio.to_thread`.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePath
from typing import BinaryIO

from mlmaster_daemon.redact import redact

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: opening a FIFO a job left must not hang the daemon; fstat then refuses it.
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
_COPY_CHUNK = 1 << 20


class UnsafeFile(OSError):
    """A path below a workspace that is a link, not a regular file, or larger than allowed."""


def _parts(relative: str | PurePath) -> tuple[str, ...]:
    path = PurePath(relative)
    if path.is_absolute() or not path.parts or ".." in path.parts:
        raise ValueError(f"expected a path relative to and below its root, got {relative}")
    return path.parts


def open_beneath(root: Path, relative: str | PurePath) -> int:
    """A read-only descriptor of the regular file `root/relative`, opened without following
    any link below `root` (the caller's own directory, trusted as given).

    Raises FileNotFoundError when it is absent, `UnsafeFile` when a component is a link, the
    file is not a regular one, or it cannot be opened at all (a socket, a mode the job set to
    lock the daemon out): whatever a job left there is its own failure, never the daemon's."""
    parts = _parts(relative)
    shown = str(root / relative)
    try:
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise UnsafeFile(exc.errno, f"its folder cannot be opened ({exc.strerror})",
                         shown) from None
    try:
        for part in parts[:-1]:
            try:
                inner = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                raise
            except OSError as exc:
                why = ("a link or not a folder" if exc.errno in (errno.ELOOP, errno.ENOTDIR)
                       else f"cannot be opened ({exc.strerror})")
                raise UnsafeFile(exc.errno, f"{part}/ is {why}", shown) from None
            os.close(fd)
            fd = inner
        try:
            found = os.open(parts[-1], _FILE_FLAGS, dir_fd=fd)
        except FileNotFoundError:
            raise
        except OSError as exc:
            why = ("a symbolic link, not a regular file" if exc.errno == errno.ELOOP
                   else f"not a file that can be opened ({exc.strerror})")
            raise UnsafeFile(exc.errno, why, shown) from None
    finally:
        os.close(fd)
    if not stat.S_ISREG(os.fstat(found).st_mode):
        os.close(found)
        raise UnsafeFile(errno.EINVAL, "not a regular file", str(root / relative))
    os.set_blocking(found, True)
    return found


@contextmanager
def open_file(root: Path, relative: str | PurePath) -> Iterator[BinaryIO]:
    """`open_beneath` as a binary file object, closed on leaving."""
    with os.fdopen(open_beneath(root, relative), "rb") as handle:
        yield handle


def size_of(root: Path, relative: str | PurePath) -> int:
    """The size in bytes of the regular file `root/relative` (as `open_beneath` finds it)."""
    fd = open_beneath(root, relative)
    try:
        return os.fstat(fd).st_size
    finally:
        os.close(fd)


def read_bounded(root: Path, relative: str | PurePath, max_bytes: int) -> bytes:
    """The whole file, or `UnsafeFile` when it holds more than `max_bytes`."""
    with open_file(root, relative) as handle:
        size = os.fstat(handle.fileno()).st_size
        if size > max_bytes:
            raise UnsafeFile(errno.EFBIG, f"{size} bytes, more than the {max_bytes} allowed",
                             str(root / relative))
        data = handle.read(max_bytes + 1)
    if len(data) > max_bytes:
        # It grew while being read (a job still writing it).
        raise UnsafeFile(errno.EFBIG, f"more than the {max_bytes} bytes allowed",
                         str(root / relative))
    return data


def head_and_tail(handle: BinaryIO, limit: int) -> tuple[bytes, int, bytes]:
    """(first bytes, bytes left out, last bytes) of an open file, at most `limit` bytes read
    in all: the whole file when it fits. Reads by offset, so a sparse or growing file costs
    no more than `limit` bytes of memory."""
    fd = handle.fileno()
    size = os.fstat(fd).st_size
    if size <= limit:
        return os.pread(fd, limit, 0)[:limit], 0, b""
    half = limit // 2
    head = os.pread(fd, half, 0)
    tail = os.pread(fd, half, size - half)
    return head, size - len(head) - len(tail), tail


def text_excerpt(root: Path, relative: str | PurePath, limit: int) -> str:
    """The file as text, at most about `limit` characters: its head and tail around a marker
    saying how much was left out; "" when it is absent or unsafe. Known secrets are redacted."""
    try:
        with open_file(root, relative) as handle:
            head, cut, tail = head_and_tail(handle, limit)
    except OSError:
        return ""
    text = _decode(head)
    if cut:
        text += f"\n... [{cut} bytes cut] ...\n" + _decode(tail)
    return redact(text)


def text_tail(root: Path, relative: str | PurePath, limit: int) -> str:
    """The last `limit` bytes of the file as text ("" when absent or unsafe), redacted."""
    try:
        with open_file(root, relative) as handle:
            fd = handle.fileno()
            size = os.fstat(fd).st_size
            data = os.pread(fd, limit, max(size - limit, 0))
    except OSError:
        return ""
    return redact(_decode(data))


def _decode(data: bytes) -> str:
    # NUL bytes (a sparse file's holes) carry nothing and upset prompts and JSON consumers.
    return data.replace(b"\0", b"").decode(errors="replace")


def copy_out(root: Path, relative: str | PurePath, target: Path, max_bytes: int) -> None:
    """Copy the file to `target` (which the daemon owns), refusing links and more than
    `max_bytes`; the copy is made from the descriptor that was checked."""
    with open_file(root, relative) as source:
        size = os.fstat(source.fileno()).st_size
        if size > max_bytes:
            raise UnsafeFile(errno.EFBIG, f"{size} bytes, more than the {max_bytes} allowed",
                             str(root / relative))
        with target.open("wb") as sink:
            shutil.copyfileobj(source, sink, _COPY_CHUNK)
