"""Telling the daemon's own jobs from its users: generated code runs as the daemon's user, so
the uid alone cannot tell a node's script from the CLI, and a job must never use the API.

Everything here reads /proc: blocking, run it in a thread.
"""

from __future__ import annotations

import errno
import os
import signal
import socket
from pathlib import Path

from mlmaster_daemon.errors import Forbidden
from mlmaster_daemon.execution.cgroups import DAEMON_LEAF, GROUP_DIR

PROC = Path("/proc")
# SO_PEERPIDFD (Linux 6.5): a pidfd for the very process that connected. Python names it
# only from 3.13 on.
SO_PEERPIDFD = getattr(socket, "SO_PEERPIDFD", 77)
# How far up the parent chain a peer is followed looking for the daemon.
MAX_ANCESTORS = 1024


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
