"""The daemon under a hostile run as the run sees it: started without root's file override,
its peak memory sampled, restarted when it dies by itself, its finished nodes kept in a
ledger, and waited on until a node or a task reaches a state."""

from __future__ import annotations

import asyncio
import ctypes
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import psutil

from mlmaster_daemon.api.client import Client
from mlmaster_daemon.errors import DaemonUnreachable
from tools.chaos import (
    TERMINAL_TASK,
    DaemonProcess,
    Ledger,
    NodeKey,
    NodeRow,
    read_nodes,
    read_tasks,
    stray_processes,
)
from tools.hostile.report import HostileReport
from tools.hostile.settings import FAULT_WAIT_S, LEDGER_POLL_S, MIB, RSS_POLL_S

PR_CAPBSET_DROP = 24
CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH = 1, 2


def drop_file_override() -> str | None:
    """Drop CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH from this process's bounding set: the
    programs it starts from now on (the daemon) are held to files' modes as an ordinary user
    is, while this process keeps its own rights. None when done, else why not."""
    if os.geteuid() != 0:
        return "not root: the daemon has no file override to drop"
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH):
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            return f"prctl(PR_CAPBSET_DROP) failed: {os.strerror(ctypes.get_errno())}"
    return None


def peak_rss_mb(pid: int) -> float:
    """The process's resident memory in MiB: the kernel's high-water mark (VmHWM), which no
    spike between two samples escapes, or the current RSS where that is not shown; 0 when
    the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        pass
    try:
        return float(psutil.Process(pid).memory_info().rss / MIB)
    except psutil.Error:
        return 0.0


class WatchedDaemon:
    """`process`, the daemon of a hostile run, and what the run sees of it: the `ledger` of
    its finished nodes, the `windows` in which it was killed or could not write (monotonic
    start and end), and, in `report`, its peak RSS, its deaths and the orphans found at each
    start. A fault holds `control` while it stops or kills the daemon; the guard then leaves
    it alone. `task_ids` (the run's tasks by role) is the run's own, filled as it submits."""

    def __init__(self, process: DaemonProcess, task_ids: Mapping[str, str],
                 report: HostileReport) -> None:
        self.process = process
        self.state_dir = process.state_dir
        self.db = self.state_dir / "mlmaster.db"
        self.task_ids = task_ids
        self.report = report
        self.ledger = Ledger()
        self.windows: list[tuple[float, float]] = []
        self.control = asyncio.Lock()

    def snapshot(self, when: str) -> dict[NodeKey, NodeRow]:
        """The run's nodes as the database shows them now, checked against the ledger."""
        rows = read_nodes(self.db, self.task_ids.values()) if self.task_ids else {}
        self.ledger.observe(rows, when)
        return rows

    async def ready(self, client: Client, when: str) -> None:
        """Wait until the daemon answers; then no process of an earlier daemon may be left."""
        await self.process.wait_ready(client)
        self.report.orphans += [f"{s} alive after the {when}" for s in stray_processes(
            self.state_dir, self.task_ids.values(), self.process.pid)]
        self.snapshot(f"after the {when}")

    def sample_rss(self) -> None:
        pid = self.process.pid
        if pid is not None:
            self.report.peak_rss_mb = max(self.report.peak_rss_mb, peak_rss_mb(pid))

    async def guard(self, client: Client) -> None:
        """Sample the daemon's RSS; restart it when it died by itself; keep the ledger."""
        last_snapshot = 0.0
        while True:
            await asyncio.sleep(RSS_POLL_S)
            self.sample_rss()
            if self.control.locked():
                continue
            async with self.control:
                code = self.process.exited()
                if code is not None:
                    self.report.deaths.append(f"the daemon exited by itself with code {code}; "
                                              f"see {self.process.log}")
                    self.process.spawn()
                    try:
                        await self.ready(client, "restart after a death")
                    except RuntimeError as exc:
                        self.report.deaths.append(str(exc))
                        return
                if time.monotonic() - last_snapshot > LEDGER_POLL_S:
                    last_snapshot = time.monotonic()
                    await asyncio.to_thread(self.snapshot, "while running")

    async def wait_node(self, wanted: Callable[[NodeKey, NodeRow], bool],
                        timeout_s: float = FAULT_WAIT_S,
                        ) -> tuple[NodeKey, NodeRow] | None:
        """The first node for which `wanted(key, row)` holds, polled every 50 ms."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            rows = await asyncio.to_thread(read_nodes, self.db, self.task_ids.values())
            for key, row in sorted(rows.items()):
                if wanted(key, row):
                    return key, row
            await asyncio.sleep(0.05)
        return None

    def tasks_active(self) -> bool:
        tasks = read_tasks(self.db, self.task_ids.values())
        return any(t["state"] not in TERMINAL_TASK for t in tasks.values())

    async def task_paused(self, client: Client) -> tuple[str, str] | None:
        """(role, reason) of the first of the run's tasks the API shows paused."""
        for role, task_id in self.task_ids.items():
            task = await client.task(task_id)
            if task["state"] == "paused":
                return role, str(task["error"] or "")
        return None

    async def exit_or_ready(self, client: Client, timeout_s: float = 60.0) -> int | None:
        """The daemon's exit code if it exits during its start-up, None once it answers."""
        began = time.monotonic()
        while time.monotonic() - began < timeout_s:
            code = self.process.exited()
            if code is not None:
                return code
            try:
                await client.health()
                return None
            except DaemonUnreachable:
                await asyncio.sleep(0.1)
        raise RuntimeError(f"the daemon neither started nor exited within {timeout_s:.0f} s")
