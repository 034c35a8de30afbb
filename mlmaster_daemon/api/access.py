"""Who may use the API, and what the daemon will read on a peer's behalf.

The kernel vouches for the process at the other end of the Unix socket (SO_PEERCRED); the
daemon admits root, its own user and the users and groups [daemon] lists. It reads a task
folder for a peer only when the folder lies under an allowed root, outside its own state
directory, and the peer could read it too, judged from the mode bits as the kernel judges them
(POSIX ACLs are not consulted: a folder shared only through an ACL is refused).

Everything here that touches the filesystem or the user database blocks: run it in a thread.
"""

from __future__ import annotations

import errno
import grp
import os
import pwd
import socket
import stat
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

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
_CRED = struct.Struct("3i")


@dataclass(frozen=True)
class Peer:
    """The process at the other end of a connection, as the kernel reports it."""

    pid: int
    uid: int
    gid: int
    groups: frozenset[int]
    # The user name, or str(uid) when the uid has no passwd entry.
    name: str

    @property
    def is_root(self) -> bool:
        return self.uid == 0

    def __str__(self) -> str:
        return f"uid {self.uid}" if self.name == str(self.uid) else f"{self.name} (uid {self.uid})"


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process connected to the Unix socket `sock` (SO_PEERCRED)."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CRED.size)
    pid, uid, gid = _CRED.unpack(raw)
    return pid, uid, gid


def identify(pid: int, uid: int, gid: int) -> Peer:
    """The peer with its groups: `gid` plus, when the uid has a passwd entry, every group
    the user database gives that user. The groups are the ones the user would have at a fresh
    login, which is what an admin changes; `newgrp` in a running shell is not seen."""
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        return Peer(pid, uid, gid, frozenset({gid}), str(uid))
    try:
        groups = frozenset(os.getgrouplist(name, gid)) | {gid}
    except OSError:
        groups = frozenset({gid})
    return Peer(pid, uid, gid, groups, name)


def user_name(uid: int) -> str:
    """The name of `uid` in the user database, or str(uid) when it has none."""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def group_ids(names: Iterable[str]) -> frozenset[int]:
    """The gids of the named groups; a name with no group entry is skipped."""
    ids: set[int] = set()
    for name in names:
        try:
            ids.add(grp.getgrnam(name).gr_gid)
        except KeyError:
            continue
    return frozenset(ids)


def may_connect(peer: Peer, daemon: DaemonConfig, own_uid: int) -> bool:
    """Root, the daemon's own user, `allowed_uids` and members of `allowed_groups` may."""
    if peer.uid in (0, own_uid) or peer.uid in daemon.allowed_uids:
        return True
    return bool(peer.groups & group_ids(daemon.allowed_groups))


def connect_refusal(peer: Peer, daemon: DaemonConfig) -> Forbidden:
    """The 403 for a peer `may_connect` turned away, saying what would let them in."""
    name = peer.name if peer.name != str(peer.uid) else "<user>"
    # Name a group that exists when one does: that is the one an admin can add the user to.
    groups = sorted(daemon.allowed_groups, key=lambda g: not group_ids([g]))
    if groups:
        group = groups[0]
        how = (f"ask an admin to add you to the group '{group}' (`usermod -aG {group} {name}`, "
               f"then log in again) or your uid {peer.uid} to [daemon] allowed_uids")
    else:
        how = f"ask an admin to add your uid {peer.uid} to [daemon] allowed_uids"
    return Forbidden(f"{peer} may not use this daemon: {how}")


def may_cancel(peer: Peer, submitter_uid: int | None, daemon: DaemonConfig,
               own_uid: int) -> bool:
    """The submitter, root, the daemon's user and members of `admin_groups` may cancel a
    task; a task from before submitters were recorded (`submitter_uid` None) anybody may."""
    if submitter_uid is None or peer.uid in (0, own_uid, submitter_uid):
        return True
    return bool(peer.groups & group_ids(daemon.admin_groups))


def cancel_refusal(task_id: str, submitter: str, daemon: DaemonConfig,
                   own_uid: int) -> Forbidden:
    """The 403 for a peer `may_cancel` turned away, saying who may."""
    admins = (f", and members of {', '.join(daemon.admin_groups)}" if daemon.admin_groups
              else "; an admin can name groups that may in [daemon] admin_groups")
    return Forbidden(
        f"task {task_id} was submitted by {submitter}: only its submitter may cancel it, "
        f"besides root and the daemon's user ({user_name(own_uid)}){admins}")


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
