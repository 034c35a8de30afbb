"""Who may use the API, and what the daemon will read on a peer's behalf.

The kernel vouches for the process at the other end of the Unix socket (SO_PEERCRED); the
daemon admits root, its own user and the users and groups [daemon] lists, but never one of its
own jobs: generated code runs as the daemon's user, so the user alone cannot tell it from the
CLI (see `job_process_reason`). It reads a task folder for a peer only when the folder lies under
an allowed root, outside its own state directory, and the peer could read it too, judged from
the mode bits as the kernel judges them (POSIX ACLs are not consulted: a folder shared only
through an ACL is refused). The same holds for everything a job will see in the task's public
folder, links followed.

Everything here that touches the filesystem or the user database blocks: run it in a thread.
"""

from __future__ import annotations

import errno
import grp
import os
import pwd
import signal
import socket
import stat
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from mlmaster_daemon.config import DaemonConfig
from mlmaster_daemon.errors import Forbidden, InvalidTaskDir
from mlmaster_daemon.execution.cgroups import DAEMON_LEAF, GROUP_DIR
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
# SO_PEERPIDFD (Linux 6.5): a pidfd for the very process that connected. Python names it
# only from 3.13 on.
SO_PEERPIDFD = getattr(socket, "SO_PEERPIDFD", 77)
# How far up the parent chain a peer is followed looking for the daemon.
MAX_ANCESTORS = 1024
# Bounds on the walk through a task's public folder (see check_public_folder).
MAX_PUBLIC_ENTRIES = 5_000_000
MAX_PUBLIC_DEPTH = 40


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


class JobProcess(Forbidden):
    """One of the daemon's jobs (generated code) used the API: it may not, whoever runs it."""

    code = "job_process"


def job_refusal(pid: int, reason: str) -> JobProcess:
    """The 403 for a peer `job_process_reason` found to be a job, with that reason."""
    return JobProcess(
        f"generated code may not use the daemon's API: the process that connected (pid {pid}) "
        f"{reason}; use the API from a shell or program of your own, not from a node's script")


def peer_job_reason(sock: socket.socket, pid: int, uid: int) -> str | None:
    """`job_process_reason` for the peer (`pid`, `uid`) of the Unix socket `sock`, the
    process pinned by a pidfd where the kernel gives one (SO_PEERPIDFD, Linux 6.5)."""
    try:
        pidfd: int | None = sock.getsockopt(socket.SOL_SOCKET, SO_PEERPIDFD)
    except OSError:
        pidfd = None
    try:
        return job_process_reason(pid, uid, pidfd)
    finally:
        if pidfd is not None:
            os.close(pidfd)


def job_process_reason(pid: int, uid: int, pidfd: int | None = None,
                       daemon_pid: int | None = None) -> str | None:
    """Why the process `pid` of user `uid`, which connected to the daemon (`daemon_pid`, by
    default this process), is one of its jobs, or must be taken for one; None if it is not.

    A job is a process that runs in a pid namespace nested in the daemon's (bubblewrap gives
    every job its own), that descends from the daemon through a child the daemon started in
    a session of its own (the runner starts every job so; anything else it starts, such as
    the bubblewrap probe, stays in its session), or that is in a job cgroup (under the
    `mlmaster` folder of the daemon's own cgroup). A job that left all three (an unsandboxed
    job that double-forked out of the daemon's tree while cgroups are unusable) goes unseen.

    pid 0 is what the kernel reports for a peer in a pid namespace the daemon cannot see; no
    job is there (a job's namespace is the daemon's or nested in it), so it is not one. A peer
    that could be a job (it runs as the daemon's user, or the daemon is root) but cannot be
    checked is taken for one: its /proc entry is gone (it exited after connecting, handing
    the connection on) or unreadable, or `pidfd` (SO_PEERPIDFD's, which pins the very process
    that connected) says it exited during the check, so what was read may describe a
    process that took over its pid. Without a pidfd that last race stays open. Reads /proc:
    blocking."""
    if pid <= 0:
        return None
    me = os.getpid() if daemon_pid is None else daemon_pid
    try:
        reason = _job_evidence(pid, me)
        if pidfd is not None:
            _signal_pidfd(pidfd)
    except OSError:
        if os.getuid() in (uid, 0):
            return "has exited or is hidden in /proc, so the daemon cannot tell it from a job"
        return None
    return reason


def _signal_pidfd(pidfd: int) -> None:
    """Raise ProcessLookupError if the pidfd's process has exited."""
    try:
        signal.pidfd_send_signal(pidfd, 0)
    except PermissionError:
        pass  # alive, only not ours to signal


def _job_evidence(pid: int, me: int) -> str | None:
    """What makes `pid` a job of the daemon `me`, or None; OSError when `pid` cannot be read."""
    if _namespace_depth(pid) > _namespace_depth(me):
        return ("runs in a pid namespace nested in the daemon's, as a sandboxed job does (a "
                "client in a container needs the daemon's, e.g. `docker run --pid=host`)")
    cgroup = job_cgroup(_read_proc(pid, "cgroup"), _read_proc(me, "cgroup"))
    if cgroup is not None:
        return f"is in the job cgroup {cgroup}"
    ancestor = _job_ancestor(pid, me)
    if ancestor is not None:
        return f"descends from the daemon through the job it started as pid {ancestor}"
    return None


def _read_proc(pid: int, name: str) -> str:
    return (PROC / str(pid) / name).read_text()


def _namespace_depth(pid: int) -> int:
    """How many pid namespaces, counted from /proc's own, hold `pid` (NSpid in its status:
    world-readable, unlike /proc/<pid>/ns/pid); OSError when it cannot be told."""
    for line in _read_proc(pid, "status").splitlines():
        if line.startswith("NSpid:"):
            return len(line.split()) - 1
    raise OSError(errno.ENOTSUP, f"no NSpid in /proc/{pid}/status (Linux before 4.1)")


def job_cgroup(peer: str, own: str) -> str | None:
    """The job cgroup the peer's /proc/<pid>/cgroup text `peer` puts it in, judged from the
    daemon's own text `own` (jobs live in <own cgroup>/mlmaster/<job>, per hierarchy; on v2
    the daemon itself may have moved down into <own cgroup>/daemon), or None."""
    theirs = _cgroup_paths(peer)
    for controllers, path in _cgroup_paths(own).items():
        base = path
        if controllers == "" and path.endswith(f"/{DAEMON_LEAF}"):
            base = path[:-len(DAEMON_LEAF) - 1]
        prefix = f"{base.rstrip('/')}/{GROUP_DIR}/"
        if theirs.get(controllers, "").startswith(prefix):
            return theirs[controllers]
    return None


def _cgroup_paths(text: str) -> dict[str, str]:
    """controllers ("" for v2) -> cgroup path, from a /proc/<pid>/cgroup text."""
    paths = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3:
            paths[parts[1]] = parts[2]
    return paths


def _job_ancestor(pid: int, me: int) -> int | None:
    """The child of `me` that `pid` descends from (or is), if that child leads a session of
    its own, as every job does; None otherwise. OSError when `pid` itself cannot be read."""
    child: tuple[int, int] | None = None  # (pid, session) of the last process climbed
    current = pid
    for _ in range(MAX_ANCESTORS):
        if current == me:
            return child[0] if child is not None and child[0] == child[1] else None
        if current <= 1:
            return None
        try:
            ppid, session = _parent_and_session(current)
        except OSError:
            if current == pid:
                raise
            return None  # an ancestor exited while we climbed: the chain is broken
        child, current = (current, session), ppid
    return None


def _parent_and_session(pid: int) -> tuple[int, int]:
    # The command name in parentheses may hold spaces and parentheses: split after the last.
    fields = _read_proc(pid, "stat").rpartition(")")[2].split()
    return int(fields[1]), int(fields[3])


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
