"""Who may use the API: the kernel vouches for the process at the other end of the Unix socket
(SO_PEERCRED); the daemon admits root, its own user and the users and groups [daemon] lists,
but never one of its own jobs (see job_peers.py), and lets a task be cancelled by its submitter,
root, the daemon's user and [daemon] admin_groups. What the daemon reads for a peer is checked
in folders.py.

Everything here that touches the user database blocks: run it in a thread.
"""

from __future__ import annotations

import grp
import os
import pwd
import socket
import struct
from collections.abc import Iterable
from dataclasses import dataclass

from mlmaster_daemon.config import DaemonConfig
from mlmaster_daemon.errors import Forbidden

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
