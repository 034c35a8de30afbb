"""The machine faults of a hostile run, each waiting for its moment and judging what the
daemon made of it:

- `stop`: the daemon is SIGSTOPped for longer than the node time limit while a working script
  runs, then SIGCONTed: a node that exited meanwhile must not be called timed out;
- `disk-full`: a ballast file fills the state dir's tmpfs for a few seconds: a task must
  pause saying why, then resume once the ballast is gone;
- `wal-loss`: the daemon is SIGKILLed just after a node finished, `mlmaster.db-wal` moved
  aside: a start must refuse, naming the lost work; with the -wal back it must start and
  resume, losing nothing;
- `crash`: the daemon is SIGKILLed while the `trap` attack runs with its links planted where
  the daemon writes, and started again: the node runs again, and nothing may be written
  through the links (the run checks at the end that the key file and both task folders are
  unchanged).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from mlmaster_daemon.api.client import Client
from tools.chaos import FINISHED, NodeKey, read_nodes, read_states
from tools.hostile.model import plan_attack
from tools.hostile.report import HostileReport
from tools.hostile.settings import FAULT_WAIT_S, MIB
from tools.hostile.watched import WatchedDaemon

STATE_FAULT = "cannot write the daemon's state"


@dataclass(frozen=True)
class FaultResult:
    """What a fault came to: `status` "pass", "fail", "skipped" or "not exercised", and
    `detail` in words."""

    status: str
    detail: str


def says_disk_full(error: str) -> bool:
    """Whether a task's error says its disk is full."""
    return "No space left" in error or "disk is full" in error


def _fill(path: Path) -> int:
    """Write `path` until the disk refuses; the bytes written."""
    written = 0
    chunk = b"\1" * MIB
    with path.open("wb") as handle, contextlib.suppress(OSError):
        while True:
            handle.write(chunk)
            handle.flush()
            written += len(chunk)
    return written


def _states_without_wal(db: Path, scratch: Path, task_ids: Iterable[str],
                        ) -> dict[NodeKey, str]:
    """The states of the nodes of `task_ids` that a copy of `db` alone (without its -wal)
    holds."""
    scratch.mkdir(parents=True, exist_ok=True)
    copy = scratch / "mlmaster.db"
    shutil.copyfile(db, copy)
    conn = sqlite3.connect(f"{copy.resolve().as_uri()}?immutable=1", uri=True)
    try:
        return read_states(conn, task_ids)
    except sqlite3.DatabaseError:
        return {}
    finally:
        conn.close()


class Faults:
    """The faults, run one at a time against `daemon` (`run`). What they notice besides
    their verdict goes to `report.notes`; whether the trap runs, `report.attacks` tells."""

    def __init__(self, daemon: WatchedDaemon, report: HostileReport, workdir: Path,
                 node_timeout_s: float, mounted: bool) -> None:
        self.daemon = daemon
        self.report = report
        self.workdir = workdir
        self.node_timeout_s = node_timeout_s
        self.mounted = mounted

    async def run(self, name: str, client: Client) -> FaultResult:
        """Wait for the moment of the fault `name` (one of `FAULTS`), cause it, judge it."""
        runs = {"stop": self.stop, "disk-full": self.disk_full, "wal-loss": self.wal_loss,
                "crash": self.crash}
        return await runs[name](client)

    async def stop(self, _client: Client) -> FaultResult:
        """SIGSTOP the daemon past the node time limit while a working script runs."""
        found = await self.daemon.wait_node(
            lambda _k, r: r.state == "running" and plan_attack(r) == "working")
        if found is None:
            return FaultResult("not exercised", "no working script ran within "
                                                f"{FAULT_WAIT_S:.0f} s")
        key, _row = found
        pause = self.node_timeout_s + 3.0
        async with self.daemon.control:
            pid = self.daemon.process.pid
            if pid is None:
                return FaultResult("not exercised", "the daemon was not running")
            os.kill(pid, signal.SIGSTOP)
            try:
                await asyncio.sleep(pause)
            finally:
                os.kill(pid, signal.SIGCONT)
        ended = await self.daemon.wait_node(lambda k, r: k == key and r.state in FINISHED)
        where = f"task {key[0]} node {key[1]}"
        if ended is None:
            return FaultResult("fail", f"{where}, running when the daemon was stopped "
                                       f"{pause:.0f} s, did not end within "
                                       f"{FAULT_WAIT_S:.0f} s of the SIGCONT")
        row = ended[1]
        error = str(dict(row.outcome)["error"] or "")
        if "time limit" in error:
            return FaultResult("fail", f"{where} exited within its time limit while the "
                                       f"daemon was stopped, and was called timed out: {error}")
        return FaultResult("pass", f"the daemon stopped {pause:.0f} s (time limit "
                                   f"{self.node_timeout_s:.0f} s) while {where} ran; "
                                   f"it ended {row.state} ({error or 'no error'})")

    async def disk_full(self, client: Client) -> FaultResult:
        """Fill the state dir's tmpfs with a ballast file, then remove it."""
        if not self.mounted:
            return FaultResult("skipped", "the state dir is not a tmpfs of the run's own")
        if not await asyncio.to_thread(self.daemon.tasks_active):
            return FaultResult("not exercised", "no task was running any more")
        ballast = self.daemon.state_dir / "ballast"
        filling = time.monotonic()
        filled = await asyncio.to_thread(_fill, ballast)
        began = time.monotonic()
        paused = None
        try:
            while paused is None and time.monotonic() - began < 60:
                paused = await self.daemon.task_paused(client)
                await asyncio.sleep(0.2)
            pause_s = time.monotonic() - began
            await asyncio.sleep(2.0)
        finally:
            ballast.unlink()
        freed = time.monotonic()
        self.daemon.windows.append((filling, freed))
        resumed = None
        while time.monotonic() - freed < FAULT_WAIT_S:
            if await self.daemon.task_paused(client) is None:
                resumed = time.monotonic() - freed
                break
            await asyncio.sleep(0.2)
        if paused is None:
            return FaultResult("fail", f"no task paused within 60 s of the disk filling "
                                       f"({filled // MIB} MiB of ballast)")
        role, error = paused
        if not says_disk_full(error):
            return FaultResult("fail", f"the {role} paused saying {error!r}, not that the "
                                       "disk is full")
        if resumed is None:
            return FaultResult("fail", f"the {role} was still paused {FAULT_WAIT_S:.0f} s "
                                       "after the ballast was removed")
        if error.count(STATE_FAULT) > 1:
            return FaultResult("fail", f"the {role} paused and resumed, but its reason says "
                                       f"{STATE_FAULT!r} twice: {error!r}")
        return FaultResult("pass", f"{filled // MIB} MiB of ballast; the {role} paused after "
                                   f"{pause_s:.1f} s ({error}); resumed {resumed:.1f} s after "
                                   "the ballast went")

    async def wal_loss(self, client: Client) -> FaultResult:
        """SIGKILL the daemon just after a node finished, start it without its -wal (it must
        refuse), then with it back (it must resume)."""
        daemon = self.daemon
        seen = {k for k, r in (await asyncio.to_thread(
            read_nodes, daemon.db, daemon.task_ids.values())).items() if r.state in FINISHED}
        found = await daemon.wait_node(
            lambda k, r: r.state in ("done", "buggy") and k not in seen)
        if found is None:
            return FaultResult("not exercised", "no node finished within "
                                                f"{FAULT_WAIT_S:.0f} s")
        wal = daemon.db.with_name(daemon.db.name + "-wal")
        aside = self.workdir / "mlmaster.db-wal.aside"
        async with daemon.control:
            daemon.snapshot("before the WAL loss")
            daemon.sample_rss()
            daemon.process.kill()
            daemon.windows.append((time.monotonic(), time.monotonic()))
            if not wal.exists() or wal.stat().st_size == 0:
                daemon.process.spawn()
                await daemon.ready(client, "restart after a kill without a -wal")
                return FaultResult("not exercised", "the SIGKILL left no -wal")
            await asyncio.to_thread(shutil.move, wal, aside)
            alone = await asyncio.to_thread(_states_without_wal, daemon.db,
                                            self.workdir / "alone", daemon.task_ids.values())
            lacking = [k for k, r in daemon.ledger.first.items() if alone.get(k) != r.state]
            mark = daemon.process.log.stat().st_size
            daemon.process.spawn()
            code = await daemon.exit_or_ready(client)
            said = daemon.process.log.read_bytes()[mark:].decode(errors="replace").strip()
            if code is None:
                daemon.process.terminate()
                aside.unlink()
                daemon.process.spawn()
                await daemon.ready(client, "restart after a start without the -wal")
                if lacking:
                    return FaultResult("fail", f"the daemon started without its -wal though "
                                               f"the database alone lacks {len(lacking)} "
                                               "finished nodes")
                return FaultResult("not exercised", "the database alone held every finished "
                                                    "node: starting without the -wal was right")
            if wal.exists():
                self.report.notes.append(f"the refused start left a -wal of "
                                         f"{wal.stat().st_size} bytes (replaced by the real one)")
            await asyncio.to_thread(shutil.move, aside, wal)
            daemon.process.spawn()
            await daemon.ready(client, "start with the -wal back")
        refused = code != 0 and "lost committed work" in said
        excerpt = said.splitlines()[-1][:160] if said else "nothing"
        if not refused:
            return FaultResult("fail", f"without its -wal (the database alone lacking "
                                       f"{len(lacking)} finished nodes) the daemon exited with "
                                       f"code {code} saying {excerpt!r}")
        if not lacking:
            self.report.notes.append("the refused start lacked no finished node the run had "
                                     "seen (the proofs held newer commits)")
        return FaultResult("pass", f"SIGKILLed after task {found[0][0]} node {found[0][1]} "
                                   f"finished; without its -wal ({len(lacking)} finished "
                                   f"nodes missing) the start exited {code}: {excerpt[:90]}...; "
                                   "with it back the daemon resumed")

    async def crash(self, client: Client) -> FaultResult:
        """SIGKILL the daemon while the trap runs, its links planted; start it again."""
        if "trap" not in self.report.attacks:
            return FaultResult("skipped", "the trap attack is not in the run")
        found = await self.daemon.wait_node(
            lambda _k, r: r.state == "running" and plan_attack(r) == "trap",
            timeout_s=3 * FAULT_WAIT_S)
        if found is None:
            return FaultResult("not exercised", "the trap did not run within "
                                                f"{3 * FAULT_WAIT_S:.0f} s")
        key = found[0]
        where = f"task {key[0]} node {key[1]}"
        # The trap plants its links within a second of starting.
        await asyncio.sleep(2.0)
        async with self.daemon.control:
            self.daemon.snapshot("before the crash")
            self.daemon.sample_rss()
            self.daemon.process.kill()
            self.daemon.windows.append((time.monotonic(), time.monotonic()))
            self.daemon.process.spawn()
            await self.daemon.ready(client, "restart after the crash")
        ended = await self.daemon.wait_node(lambda k, r: k == key and r.state in FINISHED)
        if ended is None:
            return FaultResult("fail", f"{where}, the trap, did not end within "
                                       f"{FAULT_WAIT_S:.0f} s of the restart")
        error = str(dict(ended[1].outcome)["error"] or "")
        return FaultResult("pass", f"SIGKILLed while {where} (the trap) ran; after the "
                                   f"restart it ended {ended[1].state} ({error or 'no error'})")
