"""What the daemon reads on a peer's behalf: a task folder only when it lies under an allowed
root, outside the daemon's own state directory, and the peer could read it too, judged from the
mode bits as the kernel judges them (POSIX ACLs are not consulted: a folder shared only through
an ACL is refused). The same holds for everything a job will see in the task's public folder,
links followed.

Everything here touches the filesystem or the user database: blocking, run it in a thread.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from mlmaster_daemon.api.access import Peer, user_name
from mlmaster_daemon.config import DaemonConfig
from mlmaster_daemon.errors import Forbidden, InvalidTaskDir
from mlmaster_daemon.tasks.competition import (
    SAMPLE_SUBMISSION_NAMES,
    TASK_TOML,
    TEST_FILE,
    TRAIN_FILE,
)
from mlmaster_daemon.tasks.grading import ANSWER_FILE_NAMES
from mlmaster_daemon.tasks.spec import TaskSpec

READ, WRITE, SEARCH = 4, 2, 1
DESCRIPTION_FILE = "description.md"
# The kernel's own limit on symlinks followed in one lookup.
MAX_SYMLINKS = 40
PROC = Path("/proc")
# Bounds on the walk through a task's public folder (see check_public_folder).
MAX_PUBLIC_ENTRIES = 5_000_000
MAX_PUBLIC_DEPTH = 40


def permits(mode: int, owner: int, group: int, uid: int, groups: frozenset[int],
            want: int) -> bool:
    """Whether mode bits `mode` of a file owned by `owner`:`group` grant `uid` (a member of
    `groups`) every access in `want` (READ | WRITE | SEARCH).

    The kernel's rule: the owner's bits when uid owns the file, else the group's bits when
    uid is in the file's group, else the others' bits; root is granted everything.
    """
    if uid == 0:
        return True
    if uid == owner:
        granted = (mode >> 6) & 7
    elif group in groups:
        granted = (mode >> 3) & 7
    else:
        granted = mode & 7
    return granted & want == want


class Unreachable(Exception):
    """`uid` lacks `want` on `path` (a directory on the way, or the file itself)."""

    def __init__(self, path: Path, want: int):
        super().__init__(f"{path}: no {_access_words(want)} permission")
        self.path = path
        self.want = want


def reach(path: Path, uid: int, groups: frozenset[int]) -> Path:
    """Where the absolute `path` leads when `uid` (in `groups`) looks it up: the resolved
    path. Like the kernel, it needs search permission on every directory it goes through,
    those that symlinks lead to included.

    Raises `Unreachable` naming the first directory `uid` may not search (or a symlink under
    /proc, which it never follows), FileNotFoundError or NotADirectoryError when a part is
    missing, OSError(ELOOP) on a symlink loop.
    """
    if not path.is_absolute():
        raise ValueError(f"reach() needs an absolute path, got {path}")
    pending = list(reversed(path.parts[1:]))
    current = Path("/")
    links = 0
    while pending:
        name = pending.pop()
        if name in ("", "."):
            continue
        _require(current, os.stat(current), uid, groups, SEARCH)
        if name == "..":
            current = current.parent
            continue
        candidate = current / name
        info = os.lstat(candidate)
        if stat.S_ISLNK(info.st_mode):
            if candidate.is_relative_to(PROC):
                # /proc's links (cwd, root, fd/*) are guarded by ptrace rules, not mode bits:
                # following them for the user could show what the user may not see.
                raise Unreachable(candidate, READ | SEARCH)
            links += 1
            if links > MAX_SYMLINKS:
                raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), str(path))
            target = Path(os.readlink(candidate))
            if target.is_absolute():
                current = Path("/")
                pending.extend(reversed(target.parts[1:]))
            else:
                pending.extend(reversed(target.parts))
        elif pending and not stat.S_ISDIR(info.st_mode):
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(candidate))
        else:
            current = candidate
    return current


def _require(path: Path, info: os.stat_result, uid: int, groups: frozenset[int],
             want: int) -> None:
    if not permits(info.st_mode, info.st_uid, info.st_gid, uid, groups, want):
        raise Unreachable(path, want)


def _access_words(want: int) -> str:
    words = [word for bit, word in ((READ, "read"), (WRITE, "write"), (SEARCH, "search"))
             if want & bit]
    return " and ".join(words)


@dataclass(frozen=True)
class Placement:
    """Where task folders may lie: under one of `roots`, never inside `state_dir`."""

    roots: tuple[Path, ...]
    state_dir: Path

    @classmethod
    def of(cls, daemon: DaemonConfig, state_dir: Path) -> Placement:
        """The placement [daemon] allowed_roots and the state dir give, both resolved."""
        roots = tuple(Path(root).expanduser().resolve() for root in daemon.allowed_roots)
        return cls(roots, state_dir.resolve())

    def check(self, resolved: Path, given: Path) -> None:
        """Raise `Forbidden` unless `resolved` (what `given` leads to) may be read for a task."""
        shown = str(given) if given == resolved else f"{given} (that is, {resolved})"
        if resolved.is_relative_to(self.state_dir):
            raise Forbidden(
                f"{shown} lies inside the daemon's state directory {self.state_dir}; submit a "
                "competition folder of your own, outside it")
        if not any(resolved.is_relative_to(root) for root in self.roots):
            allowed = ", ".join(str(root) for root in self.roots) or "none (the list is empty)"
            raise Forbidden(
                f"{shown} is not under an allowed root (allowed_roots: {allowed}); put the task "
                "under one of them, or ask an admin to add its place to [daemon] allowed_roots")


def check_task_folder(task_dir: Path, peer: Peer, placement: Placement) -> None:
    """Refuse, before anything in it is read, a task folder that is misplaced or that holds
    something `load_task` would read and `peer` may not.

    `task_dir` is absolute text without NUL bytes or lone surrogates (as SubmitRequest
    ensures). Raises `Forbidden` naming the first such path, `InvalidTaskDir` when the daemon
    itself cannot look a path up. A missing folder passes: `load_task` reports it.
    """
    folder = _locate_as(task_dir, peer)
    if folder is None:
        return
    placement.check(folder, task_dir)
    info = os.stat(folder)
    if not stat.S_ISDIR(info.st_mode):
        return
    _check_access(task_dir, folder, info, peer)
    for path in _read_by_load_task(folder, peer):
        _check_path(path, peer, placement)


def check_task_spec(spec: TaskSpec, peer: Peer, placement: Placement) -> None:
    """Check again, on what `load_task` settled on: its root and public folder, the files it
    read, and the hidden answers grading will read. Raises `Forbidden` as above."""
    public = spec.public_dir
    paths = [spec.root, spec.root / TASK_TOML, public, public / DESCRIPTION_FILE,
             public / spec.train_file, public / spec.test_file,
             public / spec.sample_submission_file]
    if spec.private_dir is not None:
        paths += [spec.private_dir, *(spec.private_dir / name for name in ANSWER_FILE_NAMES)]
    for path in paths:
        _check_path(path, peer, placement)
    check_public_folder(public, peer, placement, spec.private_dir)


def check_public_folder(public: Path, peer: Peer, placement: Placement,
                        private: Path | None = None, *, max_entries: int = MAX_PUBLIC_ENTRIES,
                        max_depth: int = MAX_PUBLIC_DEPTH) -> None:
    """Refuse a public folder that shows a job anything `peer` could not read: every file
    and folder under `public`, symlinks followed (into folders too, each folder once), must
    be a regular file or folder that `peer` may read, lie under an allowed root and outside
    the state dir (`placement`), and not be or lie in the hidden answers folder `private`.
    A dangling link must point into an allowed place too (something may appear there later).

    Raises `Forbidden` naming the first such path (as a job names it, and where it leads),
    `InvalidTaskDir` when the folder holds more than `max_entries` entries or nests deeper
    than `max_depth` folders, or the daemon cannot list a folder."""
    top = _locate_as(public, peer)
    if top is None:
        return
    hidden = Path(os.path.realpath(private)) if private is not None else None
    pending = [(public, top, 0)]
    seen = {top}
    count = 0
    while pending:
        shown, real, depth = pending.pop()
        for entry in _entries(real):
            count += 1
            if count > max_entries:
                raise InvalidTaskDir(
                    f"{public} holds more than {max_entries} files and folders (links "
                    "followed); the daemon checks every one a job can see, so split the data "
                    "or pack it into archives")
            given, inside = shown / entry.name, real / entry.name
            try:
                target, info = _entry_target(entry, inside, given, peer, placement)
            except FileNotFoundError:
                continue  # removed while we walked: a job will not see it either
            if target is None:
                continue
            if hidden is not None and target.is_relative_to(hidden):
                raise Forbidden(
                    f"{_shown(given, target)} is the task's hidden answers folder or lies in "
                    "it, where jobs would read it; keep private/ outside the public folder")
            if stat.S_ISDIR(info.st_mode):
                _check_access(given, target, info, peer)
                if target in seen:
                    continue
                if depth + 1 > max_depth:
                    raise InvalidTaskDir(
                        f"{given} nests more than {max_depth} folders deep in {public} (links "
                        "followed); flatten the data, or remove a link that loops")
                seen.add(target)
                pending.append((given, target, depth + 1))
            elif stat.S_ISREG(info.st_mode):
                _check_access(given, target, info, peer)
            else:
                raise Forbidden(
                    f"{_shown(given, target)} is not a regular file or folder; a task's public "
                    "folder may hold only those (and links to them): remove it, submit again")


def _entries(folder: Path) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(folder) as listing:
            return sorted(listing, key=lambda entry: entry.name)
    except OSError as exc:
        raise InvalidTaskDir(f"cannot list {folder}: {exc.strerror or exc}") from None


def _entry_target(entry: os.DirEntry[str], inside: Path, given: Path, peer: Peer,
                  placement: Placement) -> tuple[Path | None, os.stat_result]:
    """Where a public folder's entry leads and what is there; (None, its lstat) for a
    dangling link, after checking where it points."""
    info = entry.stat(follow_symlinks=False)
    if not stat.S_ISLNK(info.st_mode):
        return inside, info
    target = _locate_as(inside, peer)
    if target is None:
        placement.check(Path(os.path.realpath(inside)), given)
        return None, info
    placement.check(target, given)
    return target, os.stat(target)


def _shown(given: Path, resolved: Path) -> str:
    return str(given) if given == resolved else f"{given} (that is, {resolved})"


def _read_by_load_task(folder: Path, peer: Peer) -> list[Path]:
    """Every path `load_task` may read for the resolved `folder` (see competition._locate)."""
    nested = folder / "prepared" / "public"
    found = _locate_as(nested, peer)
    if found is not None and found.is_dir():
        roots, public = [folder], nested
    else:
        roots, public = [folder], folder
        if folder.parent.name == "prepared":
            roots.append(folder.parent.parent)
    paths: list[Path] = []
    for root in roots:
        private = root / "prepared" / "private"
        paths += [root / TASK_TOML, private, *(private / name for name in ANSWER_FILE_NAMES)]
    paths += [public, *(public / name for name in
                        (TRAIN_FILE, TEST_FILE, *SAMPLE_SUBMISSION_NAMES, DESCRIPTION_FILE))]
    return paths


def _check_path(path: Path, peer: Peer, placement: Placement) -> None:
    """Refuse `path` if it exists and is misplaced or unreadable by `peer`."""
    resolved = _locate_as(path, peer)
    if resolved is None:
        return
    placement.check(resolved, path)
    _check_access(path, resolved, os.stat(resolved), peer)


def _check_access(given: Path, resolved: Path, info: os.stat_result, peer: Peer) -> None:
    want = READ | SEARCH if stat.S_ISDIR(info.st_mode) else READ
    if not permits(info.st_mode, info.st_uid, info.st_gid, peer.uid, peer.groups, want):
        raise _unreadable(given, resolved, want, peer)


def _locate_as(path: Path, peer: Peer) -> Path | None:
    """What `path` resolves to for `peer`, or None when it does not exist."""
    try:
        if peer.is_root:
            resolved = Path(os.path.realpath(path, strict=True))
        else:
            resolved = reach(path, peer.uid, peer.groups)
            os.stat(resolved)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except Unreachable as exc:
        raise _unreadable(exc.path, exc.path, exc.want, peer) from None
    except PermissionError:
        daemon_user = user_name(os.getuid())
        raise InvalidTaskDir(
            f"the daemon's user ({daemon_user}) cannot look up {path}: the daemon reads the task "
            f"itself, so give {daemon_user} read access too (e.g. through a group it is in)"
        ) from None
    except OSError as exc:
        raise InvalidTaskDir(f"cannot look up {path}: {exc.strerror or exc}") from None
    return resolved


def _unreadable(given: Path, resolved: Path, want: int, peer: Peer) -> Forbidden:
    shown = str(given) if given == resolved else f"{given} (that is, {resolved})"
    return Forbidden(
        f"{peer} cannot read {shown}: it needs {_access_words(want)} permission there, and the "
        "daemon reads a task only where its submitter could; make it readable for you (chmod, "
        "or a group you are in) or copy the task somewhere you can read, then submit again")
