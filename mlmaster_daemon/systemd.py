"""sd_notify on the datagram protocol itself (no libsystemd), and the watchdog it feeds.

systemd sets NOTIFY_SOCKET (a path, or an abstract name starting with '@') for Type=notify
services, and WATCHDOG_USEC (with WATCHDOG_PID) when WatchdogSec= is set. Outside systemd
every call is a no-op.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Awaitable, Callable, Mapping, MutableMapping

from mlmaster_daemon.logs import get_logger

log = get_logger("mlmaster.systemd")


class Notifier:
    def __init__(self, environ: Mapping[str, str] | None = None):
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        # An abstract socket is written with a leading '@' that stands for a NUL byte.
        self.address = "\0" + address[1:] if address.startswith("@") else address
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        mine = not pid or pid == str(os.getpid())
        self.watchdog_s = int(usec) / 1e6 if usec.isdigit() and mine else None

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    def notify(self, *lines: str) -> bool:
        """Send one datagram of `KEY=value` lines; False outside systemd or on failure."""
        if not self.address:
            return False
        payload = "\n".join(lines).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto(payload, self.address)
        except OSError as exc:
            log.warning("sd_notify failed", error=str(exc))
            return False
        return True

    def ready(self, status: str) -> bool:
        return self.notify("READY=1", f"STATUS={status}")

    def status(self, status: str) -> bool:
        return self.notify(f"STATUS={status}")

    def stopping(self) -> bool:
        return self.notify("STOPPING=1", "STATUS=stopping")

    def extend_timeout(self, seconds: float) -> bool:
        return self.notify(f"EXTEND_TIMEOUT_USEC={int(seconds * 1e6)}")

    def reloading(self) -> bool:
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={usec}", "STATUS=reloading config")


# The first file descriptor systemd passes (sd_listen_fds(3): SD_LISTEN_FDS_START).
LISTEN_FDS_START = 3


def listen_sockets(environ: MutableMapping[str, str] | None = None) -> list[socket.socket]:
    """Sockets passed by socket activation (a .socket unit): LISTEN_FDS counts them from fd 3,
    and LISTEN_PID must be us, or they were meant for another process. The variables are
    removed so nothing started later inherits them."""
    env = os.environ if environ is None else environ
    count, pid = env.get("LISTEN_FDS", ""), env.get("LISTEN_PID", "")
    for name in ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"):
        env.pop(name, None)
    if not count.isdigit() or pid != str(os.getpid()):
        return []
    sockets = []
    for fd in range(LISTEN_FDS_START, LISTEN_FDS_START + int(count)):
        os.set_inheritable(fd, False)
        sockets.append(socket.socket(fileno=fd))
    return sockets


class Heartbeat:
    """The scheduler side ticks it; the watchdog pets systemd only while ticks are recent, so
    a stuck event loop or a dead scheduler lets systemd restart the daemon."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self.last = clock()

    def tick(self) -> None:
        self.last = self.clock()

    def alive(self, within_s: float) -> bool:
        return self.clock() - self.last <= within_s


async def run_watchdog(notifier: Notifier, heartbeat: Heartbeat, status: Callable[[], str],
                       sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
    """Until cancelled: send WATCHDOG=1 (with STATUS) every half watchdog period while the
    heartbeat, ticked by the scheduler, is alive; outside a watchdog, STATUS every 10 s."""
    period = notifier.watchdog_s
    interval = period / 2 if period else 10.0
    while True:
        if period is None or heartbeat.alive(period / 2):
            lines = [f"STATUS={status()}"]
            if period is not None:
                lines.insert(0, "WATCHDOG=1")
            notifier.notify(*lines)
        await sleep(interval)
