"""Processes a job is made of: proving a pid is still the process the daemon started (PIDs get
reused), and signalling a process or its group without failing when it is already gone.

Blocking (a pidfd poll, /proc reads): async callers use `asyncio.to_thread`.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import signal

from mlmaster_daemon.execution.gpu import process_start_time, read_boot_id
from mlmaster_daemon.execution.lease import ProcessIdentity


def identity_of(pid: int) -> ProcessIdentity:
    # Our unreaped child always has a /proc entry (a zombie keeps one).
    return ProcessIdentity(pid=pid, start_time=process_start_time(pid) or 0.0,
                           boot_id=read_boot_id())


def kill_identity(identity: ProcessIdentity, wait_s: float = 2.0) -> bool:
    """SIGKILL the process (and its process group) only if it provably is the one recorded:
    alive, same boot, same start time (PIDs get reused). True if it was killed; waits up to
    `wait_s` for it to exit. A pidfd pins the process between the check and the signal."""
    pidfd: int | None = None
    try:
        if identity.boot_id != read_boot_id():
            return False
        pidfd = os.pidfd_open(identity.pid)
    except OSError as exc:
        # Kernels before 5.3 have no pidfd: check, then kill, with a tiny window for pid reuse.
        if exc.errno != errno.ENOSYS:
            return False
    try:
        start = process_start_time(identity.pid)
        # Start times are whole clock ticks (10 ms): anything but the same tick is another process.
        if start is None or abs(start - identity.start_time) > 0.005:
            return False
        if group_of(identity.pid) == identity.pid:
            signal_group(identity.pid, signal.SIGKILL)
        if pidfd is None:
            signal_process(identity.pid, signal.SIGKILL)
            return True
        with contextlib.suppress(ProcessLookupError):
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        poller.poll(wait_s * 1000)
        return True
    finally:
        if pidfd is not None:
            os.close(pidfd)


def signal_process(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def group_of(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except OSError:
        return None


def group_members(pgid: int) -> set[int]:
    return {int(e) for e in os.listdir("/proc") if e.isdigit() and group_of(int(e)) == pgid}
