"""Hostile run: a prompt-injected model hands the daemon attacks to run while the machine
fails under it, and the run checks that the daemon survived, leaked nothing and lost nothing.

`python -m mlmaster_daemon.hostile` (or `scripts/hostile`) builds two example competitions
with a unique marker in their hidden answers (`prepared/private/test.csv`), writes an API key
(another unique marker) to a key file, mounts a small tmpfs for the daemon's state dir where
it can, starts `InjectedModel` (an OpenAI-compatible server on 127.0.0.1) and runs
`mlmaster daemon` as a subprocess on it. It submits a victim task, whose model writes a working
script each time, then an attacker task, whose model answers each code request with the next
script of `hostile_scripts.ATTACKS`, cycled, a working script after each attack so the task
can find a best submission. While they run, the machine fails (each fault optional):

- `stop`: the daemon is SIGSTOPped for longer than the node time limit while a working script
  runs, then SIGCONTed: a node that exited meanwhile must not be called timed out;
- `disk-full`: a ballast file fills the state dir's tmpfs for a few seconds: a task must
  pause saying why, then resume once the ballast is gone;
- `wal-loss`: the daemon is SIGKILLed just after a node finished, `mlmaster.db-wal` moved
  aside: a start must refuse, naming the lost work; with the -wal back it must start and
  resume, losing nothing;
- `crash`: the daemon is SIGKILLed while the `trap` attack runs with its links planted where
  the daemon writes, and started again: the node runs again, and nothing is written through
  the links (the key file and both task folders are unchanged at the end).

At the end the daemon stops with SIGTERM and the run prints, and checks, `HostileReport`.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import ctypes
import hashlib
import json
import os
import secrets
import shutil
import signal
import sqlite3
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from mlmaster_daemon.api.client import ApiError, Client
from mlmaster_daemon.chaos import (
    FINISHED,
    TERMINAL_TASK,
    ChaosSettings,
    DaemonProcess,
    Ledger,
    NodeKey,
    NodeRow,
    check_best,
    check_submission,
    read_nodes,
    read_tasks,
    stray_processes,
)
from mlmaster_daemon.errors import DaemonUnreachable
from mlmaster_daemon.hostile_scripts import (
    ATTACKER,
    ATTACKS,
    ATTACKS_BY_NAME,
    VICTIM,
    Attack,
    InjectedModel,
    Served,
    Targets,
)
from mlmaster_daemon.llm.offline_recipe import safe_baseline
from mlmaster_daemon.llm.offline_render import render
from mlmaster_daemon.tasks.competition import load_task
from mlmaster_daemon.tasks.examples import build_example

FAULTS = ("stop", "disk-full", "wal-loss", "crash")
MIB = 1024 * 1024
# The daemon needs ~165 MiB through a whole hostile run; 400 MiB leaves it 2.4 times that.
# On a real disk a job's files reach 3 GiB (stderr) and 1 GiB (metrics.json): reading one
# whole goes far past it, and so does a model answer read whole at 64 MiB (held several times
# over). On the run's small tmpfs a job's files stay under a quarter of its free space.
RSS_LIMIT_MB = 400
RSS_POLL_S = 0.2
FAULT_WAIT_S = 120.0
LEDGER_POLL_S = 1.0
# A task paused this long on a full disk after the run's own ballast went stays paused.
STUCK_S = 60.0
STATE_FAULT = "cannot write the daemon's state"


@dataclass(frozen=True)
class HostileSettings:
    attacks: tuple[str, ...] = tuple(a.name for a in ATTACKS)
    faults: tuple[str, ...] = FAULTS
    steps: int = 0  # 0: two per attack (each attack once), plus 6
    victim_steps: int = 8
    parallel: int = 2
    sandbox: str = "auto"
    node_timeout_s: float = 30.0
    tmpfs_mb: int = 512  # 0: the state dir on the temp dir's own disk
    rss_limit_mb: int = RSS_LIMIT_MB
    finish_timeout_s: float = 900.0
    keep: bool = False
    clean: bool = False
    # Run the daemon without root's file override, as the systemd unit's own user runs it.
    drop_dac: bool = True

    @property
    def attacker_steps(self) -> int:
        return self.steps or 2 * len(self.attacks) + 6


def secret_forms(secret: str) -> tuple[str, ...]:
    """The secret as text, as hex, and as the part of its base64 that shows whatever its
    offset in the encoded data (one form per alignment): the ways a job prints what it read."""
    raw = secret.encode()
    forms = [secret, raw.hex()]
    for pad in range(3):
        whole = (len(raw) - pad) // 3 * 3
        forms.append(base64.b64encode(raw[pad:pad + whole]).decode())
    return tuple(dict.fromkeys(forms))


def find_leaks(secrets_by_name: Mapping[str, str],
               sources: Iterable[tuple[str, str | bytes]]) -> list[str]:
    """"<secret> in <source>" for each secret found, in any of its `secret_forms`, in a
    source (text or bytes); each pair once."""
    forms = {name: secret_forms(value) for name, value in secrets_by_name.items()}
    found: dict[str, None] = {}
    for where, content in sources:
        for name, variants in forms.items():
            if isinstance(content, bytes):
                hit = any(v.encode() in content for v in variants)
            else:
                hit = any(v in content for v in variants)
            if hit:
                found[f"{name} in {where}"] = None
    return list(found)


def plant_marker(competition: Path, marker: str) -> None:
    """Add a `note` column holding `marker` to the competition's hidden answers."""
    answers = competition / "prepared" / "private" / "test.csv"
    lines = answers.read_text().splitlines()
    answers.write_text("\n".join([lines[0] + ",note"] + [f"{line},{marker}" for line in lines[1:]])
                       + "\n")


def late_writes(state_dir: Path, rows: Mapping[NodeKey, NodeRow], slack_s: float = 1.0,
                max_entries: int = 100_000) -> list[str]:
    """Finished nodes with a file in their workspace written more than `slack_s` after they
    finished: some process of theirs outlived them."""
    found = []
    for (task_id, node_id), row in sorted(rows.items()):
        finished_at = dict(row.outcome)["finished_at"]
        if row.state not in FINISHED or finished_at is None:
            continue
        root = state_dir / "tasks" / task_id / "nodes" / str(node_id)
        seen = 0
        for folder, dirs, files in os.walk(root):
            for name in files:
                seen += 1
                try:
                    mtime = os.lstat(os.path.join(folder, name)).st_mtime
                except OSError:
                    continue
                if mtime > finished_at + slack_s:
                    rel = os.path.relpath(os.path.join(folder, name), root)
                    found.append(f"task {task_id} node {node_id}: {rel} written "
                                 f"{mtime - finished_at:.1f} s after the node finished")
                    break
            if seen > max_entries or (found and found[-1].startswith(
                    f"task {task_id} node {node_id}:")):
                dirs.clear()
                break
    return found


@dataclass
class AttackOutcome:
    """How the nodes that ran one attack ended."""

    nodes: list[str] = field(default_factory=list)


@dataclass
class HostileReport:
    """The figures a hostile run prints; `passed` when every one holds.

    - daemon deaths: the daemon exiting by itself (not killed or stopped by the run), or not
      getting ready again after a fault; each death is followed by a restart.
    - finished nodes lost: nodes seen done, buggy or failed that a later snapshot shows
      missing or changed (chaos.py's `Ledger`).
    - nodes unfinished: nodes not done, buggy or failed when the tasks ended.
    - errors missing: buggy or failed nodes without a non-empty error saying why.
    - nodes timed out: nodes whose error names the time limit, but for the attacks that are
      meant to meet it (`Attack.may_time_out`): every other script ends well within it, so
      one is a job that exited while the daemon was stopped, called timed out.
    - victim task, tasks submitted by jobs: the victim must end `finished`, and the daemon
      must list only the tasks the run submitted.
    - API errors: an answer of the API about the run's tasks and nodes that is an error.
    - answers unaccounted: a task records fewer model calls than the answers it was served
      (or more), beyond those lost with a kill or a full disk (`unaccounted_answers`).
    - internal errors: unexpected exceptions the daemon logged with their traceback (what a
      job or a model wrote reached code that did not expect it), `logged_exceptions`.
    - leaks: the API key or a hidden-answers marker (as text, hex or base64) in a prompt the
      model received, an API answer, the database, the daemon's log or a node's output tail.
    - orphan processes: processes of the state dir the daemon did not start, after each
      restart; after the final SIGTERM, any.
    - late writes: a file in a finished node's workspace written after it finished.
    - files changed outside: the key file or a file of either task folder changed.
    - peak daemon RSS: the most resident memory of any daemon process of the run (its
      high-water mark, read every 0.2 s), against `RSS_LIMIT_MB`.
    - tasks finished, valid best submission: as in chaos.py (`check_submission`,
      `check_best`).
    - faults: each fault exercised and its check held ("skipped" ones, that the machine does
      not allow, do not fail the run; "not exercised" ones do)."""

    deaths: list[str] = field(default_factory=list)
    lost: dict[NodeKey, str] = field(default_factory=dict)
    unfinished: list[str] = field(default_factory=list)
    unexplained: list[str] = field(default_factory=list)
    timed_out: list[str] = field(default_factory=list)
    victim_state: str = "unknown"
    foreign_tasks: list[str] = field(default_factory=list)
    api_errors: list[str] = field(default_factory=list)
    unaccounted: list[str] = field(default_factory=list)
    internal_errors: list[str] = field(default_factory=list)
    leaks: list[str] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)
    late: list[str] = field(default_factory=list)
    outside: list[str] = field(default_factory=list)
    peak_rss_mb: float = 0.0
    rss_limit_mb: int = RSS_LIMIT_MB
    tasks: dict[str, str] = field(default_factory=dict)
    bad_submissions: list[str] = field(default_factory=list)
    faults: dict[str, str] = field(default_factory=dict)
    fault_failures: list[str] = field(default_factory=list)
    attacks: dict[str, AttackOutcome] = field(default_factory=dict)
    node_states: Counter[str] = field(default_factory=Counter)
    notes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    wall_s: float = 0.0

    @property
    def finished(self) -> bool:
        return bool(self.tasks) and all(s == "finished" for s in self.tasks.values())

    @property
    def passed(self) -> bool:
        return (not self.deaths and not self.lost and not self.unfinished
                and not self.unexplained and not self.timed_out
                and self.victim_state == "finished" and not self.foreign_tasks
                and not self.api_errors and not self.unaccounted and not self.internal_errors
                and not self.leaks and not self.orphans and not self.late
                and not self.outside
                and 0 < self.peak_rss_mb <= self.rss_limit_mb and self.finished
                and not self.bad_submissions and not self.fault_failures
                and not self.problems)

    def lines(self) -> list[str]:
        states = ", ".join(f"{n} {s}" for s, n in sorted(self.node_states.items()))
        finished = sum(1 for s in self.tasks.values() if s == "finished")
        rows = [
            ("daemon deaths", str(len(self.deaths))),
            ("finished nodes lost", str(len(self.lost))),
            ("nodes unfinished", str(len(self.unfinished))),
            ("errors missing", str(len(self.unexplained))),
            ("nodes timed out", str(len(self.timed_out))),
            ("victim task", self.victim_state),
            ("tasks submitted by jobs", str(len(self.foreign_tasks))),
            ("API errors", str(len(self.api_errors))),
            ("answers unaccounted", str(len(self.unaccounted))),
            ("internal errors", str(len(self.internal_errors))),
            ("leaks", str(len(self.leaks))),
            ("orphan processes", str(len(self.orphans))),
            ("late writes", str(len(self.late))),
            ("files changed outside", str(len(self.outside))),
            ("peak daemon RSS", f"{self.peak_rss_mb:.0f} MiB (limit {self.rss_limit_mb} MiB)"),
            ("tasks finished", f"{finished}/{len(self.tasks)}"),
            ("valid best submission", "yes" if self.finished and not self.bad_submissions
             else "no"),
            ("faults", ", ".join(f"{k} {v.split(':')[0]}" for k, v in self.faults.items())
             or "none"),
            ("nodes", f"{sum(self.node_states.values())} ({states or 'none'})"),
            ("wall time", f"{self.wall_s:.1f} s"),
        ]
        out = [f"{name:<24}{value}" for name, value in rows]
        out += [f"fault {name}: {what}" for name, what in self.faults.items()]
        for name, outcome in self.attacks.items():
            for node in outcome.nodes or ["never ran"]:
                out.append(f"attack {name:<16}{node}")
        out += [f"note: {n}" for n in self.notes]
        problems = ([f"death: {d}" for d in self.deaths]
                    + [f"lost: task {t} node {n}: {why}" for (t, n), why in self.lost.items()]
                    + [f"unfinished: {u}" for u in self.unfinished]
                    + [f"no error: {u}" for u in self.unexplained]
                    + [f"timed out: {t}" for t in self.timed_out]
                    + [f"foreign task: {t}" for t in self.foreign_tasks]
                    + [f"API error: {e}" for e in self.api_errors]
                    + [f"unaccounted: {u}" for u in self.unaccounted]
                    + [f"internal error: {e}" for e in self.internal_errors]
                    + [f"leak: {leak}" for leak in self.leaks]
                    + [f"orphan: {o}" for o in self.orphans]
                    + [f"late write: {w}" for w in self.late]
                    + [f"changed outside: {o}" for o in self.outside]
                    + [f"submission: {s}" for s in self.bad_submissions]
                    + [f"fault: {f}" for f in self.fault_failures]
                    + [f"problem: {p}" for p in self.problems])
        if self.peak_rss_mb > self.rss_limit_mb:
            problems.append(f"rss: the daemon's peak RSS {self.peak_rss_mb:.0f} MiB is over "
                            f"{self.rss_limit_mb} MiB")
        return out + problems + [f"hostile: {'PASS' if self.passed else 'FAIL'}"]


@dataclass(frozen=True)
class FaultResult:
    """What a fault came to: `status` "pass", "fail", "skipped" or "not exercised", and
    `detail` in words."""

    status: str
    detail: str


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


def _states_without_wal(db: Path, scratch: Path) -> dict[NodeKey, str]:
    """The node states a copy of `db` alone (without its -wal) holds."""
    scratch.mkdir(parents=True, exist_ok=True)
    copy = scratch / "mlmaster.db"
    shutil.copyfile(db, copy)
    conn = sqlite3.connect(f"{copy.resolve().as_uri()}?immutable=1", uri=True)
    try:
        rows = conn.execute("SELECT task_id, id, state FROM nodes").fetchall()
    except sqlite3.DatabaseError:
        rows = []
    finally:
        conn.close()
    return {(task_id, node_id): state for task_id, node_id, state in rows}


def unaccounted_answers(served: Sequence[Served], task: str, recorded: int,
                        windows: Sequence[tuple[float, float]], slack_s: float = 5.0,
                        ) -> str | None:
    """Why the daemon's count of `task`'s model calls (`recorded`) does not match the answers
    it was served (None when it does). An answer that overlaps a window where the daemon
    was killed or could not write (widened by `slack_s` before it) may be lost with it."""
    mine = [a for a in served if a.task == task]
    excused = sum(1 for a in mine if any(a.started <= end and a.ended >= start - slack_s
                                         for start, end in windows))
    if len(mine) - excused <= recorded <= len(mine):
        return None
    return (f"the {task} was served {len(mine)} answers ({excused} about the time of a kill "
            f"or a full disk) and records {recorded} calls")


def file_digests(paths: Iterable[Path]) -> dict[str, str]:
    """The SHA-256 of every file at or under `paths`, by path."""
    found = {}
    for path in paths:
        for file in [path] if path.is_file() else sorted(path.rglob("*")):
            if file.is_file():
                found[str(file)] = hashlib.sha256(file.read_bytes()).hexdigest()
    return found


def changed_files(before: Mapping[str, str], after: Mapping[str, str]) -> list[str]:
    """Files of `before` that are gone or different in `after`, and files new in `after`."""
    changed = [f"{p} {'changed' if p in after else 'removed'}" for p, digest in before.items()
               if after.get(p) != digest]
    return changed + [f"{p} added" for p in after if p not in before]


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


def logged_exceptions(log: bytes) -> list[str]:
    """The unexpected exceptions a daemon log shows: its JSON lines that carry a traceback
    (`log.exception`), as "event: Type: message"."""
    found = []
    for raw in log.splitlines():
        if b'"exception"' not in raw:
            continue
        try:
            entry = json.loads(raw)
        except ValueError:
            continue
        if not isinstance(entry, dict) or not entry.get("exception"):
            continue
        first = entry["exception"][0] if isinstance(entry["exception"], list) else {}
        what = (f"{first.get('exc_type', '?')}: {str(first.get('exc_value', ''))[:120]}"
                if isinstance(first, dict) else str(entry["exception"])[:120])
        where = ", ".join(f"{k} {entry[k]}" for k in ("task_id", "node_id", "path")
                          if k in entry)
        found.append(f"{entry.get('event', '?')} ({where}): {what}")
    return found


def _says_disk_full(error: str) -> bool:
    return "No space left" in error or "disk is full" in error


def _plan_attack(row: NodeRow) -> str:
    plan = str(dict(row.outcome)["plan"] or "")
    if plan.startswith("Injected attack: "):
        return plan.removeprefix("Injected attack: ").split(".")[0]
    return "working" if plan.startswith("Working script") else "?"


class HostileRun:
    """One hostile run: the model server, the daemon, the tasks, the faults, what was seen."""

    def __init__(self, settings: HostileSettings, workdir: Path) -> None:
        self.settings = settings
        self.workdir = workdir
        self.state_dir = workdir / "state"
        self.db = self.state_dir / "mlmaster.db"
        self.key_file = workdir / "keys" / "api_key"
        self.key = "sk-hostile-" + secrets.token_hex(16)
        self.competitions = {"attacker": workdir / "attacker", "victim": workdir / "victim"}
        self.markers = {role: f"HIDDEN-ANSWERS-{role}-{secrets.token_hex(12)}"
                        for role in self.competitions}
        self.daemon = DaemonProcess(
            ChaosSettings(parallel=settings.parallel, sandbox=settings.sandbox),
            self.state_dir, workdir / "d.sock", workdir / "daemon.log")
        self.task_ids: dict[str, str] = {}
        self.ledger = Ledger()
        self.report = HostileReport(rss_limit_mb=settings.rss_limit_mb)
        self.report.attacks = {name: AttackOutcome() for name in settings.attacks}
        self.mounted = False
        self.working = ""
        self.api_answers: list[tuple[str, str]] = []
        self.output_tails: list[tuple[str, str]] = []
        self.outside: dict[str, str] = {}
        self.said: dict[NodeKey, str] = {}
        self.recorded: dict[str, int] = {}  # role -> model calls the daemon records
        self.windows: list[tuple[float, float]] = []  # kills and full disks, monotonic
        self.control = asyncio.Lock()

    def snapshot(self, when: str) -> dict[NodeKey, NodeRow]:
        rows = read_nodes(self.db, self.task_ids.values()) if self.task_ids else {}
        self.ledger.observe(rows, when)
        return rows

    async def run(self) -> HostileReport:
        started = time.monotonic()
        self._prepare()
        model = InjectedModel(self.working)
        await model.start()
        self._configure(model)
        try:
            async with Client(self.daemon.socket) as client:
                try:
                    self.daemon.spawn()
                    await self._ready(client, "start")
                    guard = asyncio.create_task(self._guard(client))
                    try:
                        try:
                            await self._submit(client, model)
                            await self._faults(client)
                            await self._finish(client)
                        finally:
                            with contextlib.suppress(DaemonUnreachable):
                                await self._inspect(client)
                    finally:
                        guard.cancel()
                        with contextlib.suppress(asyncio.CancelledError):
                            await guard
                except RuntimeError as exc:
                    self.report.problems.append(str(exc))
                finally:
                    self._stop()
        finally:
            await model.stop()
        self._scan(model)
        for role, name in (("attacker", ATTACKER), ("victim", VICTIM)):
            if role in self.recorded:
                why = unaccounted_answers(model.answers, name, self.recorded[role],
                                          self.windows)
                if why is not None:
                    self.report.unaccounted.append(why)
        self.report.wall_s = time.monotonic() - started
        return self.report

    def _prepare(self) -> None:
        self.state_dir.mkdir(parents=True)
        if self.settings.tmpfs_mb > 0:
            done = subprocess.run(["mount", "-t", "tmpfs", "-o",
                                   f"size={self.settings.tmpfs_mb}m,mode=0700", "tmpfs",
                                   str(self.state_dir)], capture_output=True, check=False)
            self.mounted = done.returncode == 0
            why = done.stderr.decode().strip() or "mount failed"
            if not self.mounted:
                self.report.notes.append(
                    f"no tmpfs for the state dir ({why}): the disk-full fault and the disk "
                    "filler are left out")
        else:
            self.report.notes.append("no tmpfs asked for: the disk-full fault and the disk "
                                     "filler are left out")
        for role, folder in self.competitions.items():
            build_example("breast_cancer", folder)
            plant_marker(folder, self.markers[role])
        self.key_file.parent.mkdir(mode=0o700)
        self.key_file.write_text(self.key + "\n")
        self.key_file.chmod(0o600)
        self.working = render(safe_baseline(7), load_task(self.competitions["victim"]))
        self.outside = file_digests([self.key_file, *self.competitions.values()])
        if self.settings.drop_dac:
            kept = drop_file_override()
            if kept is not None:
                self.report.notes.append(f"the daemon keeps root's file override ({kept})")
        else:
            self.report.notes.append("the daemon runs with root's file override: a job cannot "
                                     "lock it out of its files, as it could a daemon run by "
                                     "an ordinary user")

    def _configure(self, model: InjectedModel) -> None:
        self.daemon.env.update({
            "MLMASTER_LLM__CODE__BASE_URL": model.base_url,
            "MLMASTER_LLM__CODE__MODEL": "injected",
            "MLMASTER_LLM__CODE__API_KEY_FILE": str(self.key_file),
            "MLMASTER_LLM__CODE__MAX_RETRIES": "2",
            "MLMASTER_LLM__CODE__BACKOFF_S": "0.2",
            "MLMASTER_LLM__CODE__TIMEOUT_S": "60",
            "MLMASTER_EXECUTION__NODE_TIMEOUT_S": str(self.settings.node_timeout_s),
            "MLMASTER_EXECUTION__KILL_GRACE_S": "1",
            "MLMASTER_DAEMON__FAULT_RETRY_S": "0.5",
            "MLMASTER_DAEMON__FAULT_RETRY_MAX_S": "2",
            "MLMASTER_DAEMON__STOP_GRACE_S": "0",
        })

    async def _ready(self, client: Client, when: str) -> None:
        await self.daemon.wait_ready(client)
        self.report.orphans += [f"{s} alive after the {when}" for s in stray_processes(
            self.state_dir, self.task_ids.values(), self.daemon.pid)]
        self.snapshot(f"after the {when}")

    def _sample_rss(self) -> None:
        pid = self.daemon.pid
        if pid is not None:
            self.report.peak_rss_mb = max(self.report.peak_rss_mb, peak_rss_mb(pid))

    async def _guard(self, client: Client) -> None:
        """Sample the daemon's RSS; restart it when it died by itself; keep the ledger."""
        last_snapshot = 0.0
        while True:
            await asyncio.sleep(RSS_POLL_S)
            self._sample_rss()
            if self.control.locked():
                continue
            async with self.control:
                code = self.daemon.exited()
                if code is not None:
                    self.report.deaths.append(f"the daemon exited by itself with code {code}; "
                                              f"see {self.daemon.log}")
                    self.daemon.spawn()
                    try:
                        await self._ready(client, "restart after a death")
                    except RuntimeError as exc:
                        self.report.deaths.append(str(exc))
                        return
                if time.monotonic() - last_snapshot > LEDGER_POLL_S:
                    last_snapshot = time.monotonic()
                    await asyncio.to_thread(self.snapshot, "while running")

    async def _submit(self, client: Client, model: InjectedModel) -> None:
        settings = self.settings
        victim = await client.submit({
            "task_dir": str(self.competitions["victim"]), "steps": settings.victim_steps,
            "name": VICTIM, "node_timeout_s": settings.node_timeout_s})
        self.task_ids["victim"] = victim["id"]
        targets = Targets(
            socket=str(self.daemon.socket), key_file=str(self.key_file),
            state_dir=str(self.state_dir), database=str(self.db),
            own_task_dir=str(self.competitions["attacker"]),
            victim_task_dir=str(self.competitions["victim"]), victim_id=victim["id"],
            fill_cap_bytes=(settings.tmpfs_mb + 64) * MIB)
        scripts: list[tuple[str, str]] = []
        for name in settings.attacks:
            attack: Attack = ATTACKS_BY_NAME[name]
            if attack.needs_small_disk and not self.mounted:
                self.report.attacks.pop(name, None)
                continue
            scripts += [(name, attack.script(targets)), ("working", self.working)]
        model.attacker_scripts = scripts
        model.padding_mb = {a.name: a.answer_mb for a in ATTACKS if a.answer_mb}
        attacker = await client.submit({
            "task_dir": str(self.competitions["attacker"]), "steps": settings.attacker_steps,
            "name": ATTACKER, "node_timeout_s": settings.node_timeout_s})
        self.task_ids["attacker"] = attacker["id"]
        _say(f"submitted the victim {victim['id']} ({settings.victim_steps} steps) and the "
             f"attacker {attacker['id']} ({settings.attacker_steps} steps, "
             f"{len(scripts) // 2} attacks)")

    async def _faults(self, client: Client) -> None:
        runs = {"stop": self._fault_stop, "disk-full": self._fault_disk_full,
                "wal-loss": self._fault_wal_loss, "crash": self._fault_crash}
        for name in FAULTS:
            if name not in self.settings.faults:
                continue
            _say(f"fault {name}: waiting for its moment")
            result = await runs[name](client)
            self.report.faults[name] = f"{result.status}: {result.detail}"
            if result.status in ("fail", "not exercised"):
                self.report.fault_failures.append(f"{name}: {result.detail}")
            _say(f"fault {name}: {result.status}: {result.detail}")

    async def _wait_node(self, wanted: Callable[[NodeKey, NodeRow], bool],
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

    def _tasks_active(self) -> bool:
        tasks = read_tasks(self.db, self.task_ids.values())
        return any(t["state"] not in TERMINAL_TASK for t in tasks.values())

    async def _fault_stop(self, _client: Client) -> FaultResult:
        """SIGSTOP the daemon past the node time limit while a working script runs."""
        found = await self._wait_node(
            lambda _k, r: r.state == "running" and _plan_attack(r) == "working")
        if found is None:
            return FaultResult("not exercised", "no working script ran within "
                                                f"{FAULT_WAIT_S:.0f} s")
        key, _row = found
        pause = self.settings.node_timeout_s + 3.0
        async with self.control:
            pid = self.daemon.pid
            if pid is None:
                return FaultResult("not exercised", "the daemon was not running")
            os.kill(pid, signal.SIGSTOP)
            try:
                await asyncio.sleep(pause)
            finally:
                os.kill(pid, signal.SIGCONT)
        ended = await self._wait_node(lambda k, r: k == key and r.state in FINISHED)
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
                                   f"{self.settings.node_timeout_s:.0f} s) while {where} ran; "
                                   f"it ended {row.state} ({error or 'no error'})")

    async def _task_paused(self, client: Client) -> tuple[str, str] | None:
        for role, task_id in self.task_ids.items():
            task = await client.task(task_id)
            if task["state"] == "paused":
                return role, str(task["error"] or "")
        return None

    async def _fault_disk_full(self, client: Client) -> FaultResult:
        """Fill the state dir's tmpfs with a ballast file, then remove it."""
        if not self.mounted:
            return FaultResult("skipped", "the state dir is not a tmpfs of the run's own")
        if not await asyncio.to_thread(self._tasks_active):
            return FaultResult("not exercised", "no task was running any more")
        ballast = self.state_dir / "ballast"
        filling = time.monotonic()
        filled = await asyncio.to_thread(_fill, ballast)
        began = time.monotonic()
        paused = None
        try:
            while paused is None and time.monotonic() - began < 60:
                paused = await self._task_paused(client)
                await asyncio.sleep(0.2)
            pause_s = time.monotonic() - began
            await asyncio.sleep(2.0)
        finally:
            ballast.unlink()
        freed = time.monotonic()
        self.windows.append((filling, freed))
        resumed = None
        while time.monotonic() - freed < FAULT_WAIT_S:
            if await self._task_paused(client) is None:
                resumed = time.monotonic() - freed
                break
            await asyncio.sleep(0.2)
        if paused is None:
            return FaultResult("fail", f"no task paused within 60 s of the disk filling "
                                       f"({filled // MIB} MiB of ballast)")
        role, error = paused
        if not _says_disk_full(error):
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

    async def _exit_or_ready(self, client: Client, timeout_s: float = 60.0) -> int | None:
        """The daemon's exit code if it exits during its start-up, None once it answers."""
        began = time.monotonic()
        while time.monotonic() - began < timeout_s:
            code = self.daemon.exited()
            if code is not None:
                return code
            try:
                await client.health()
                return None
            except DaemonUnreachable:
                await asyncio.sleep(0.1)
        raise RuntimeError(f"the daemon neither started nor exited within {timeout_s:.0f} s")

    async def _fault_wal_loss(self, client: Client) -> FaultResult:
        """SIGKILL the daemon just after a node finished, start it without its -wal (it must
        refuse), then with it back (it must resume)."""
        seen = {k for k, r in (await asyncio.to_thread(
            read_nodes, self.db, self.task_ids.values())).items() if r.state in FINISHED}
        found = await self._wait_node(
            lambda k, r: r.state in ("done", "buggy") and k not in seen)
        if found is None:
            return FaultResult("not exercised", "no node finished within "
                                                f"{FAULT_WAIT_S:.0f} s")
        wal = self.db.with_name(self.db.name + "-wal")
        aside = self.workdir / "mlmaster.db-wal.aside"
        async with self.control:
            self.snapshot("before the WAL loss")
            self._sample_rss()
            self.daemon.kill()
            self.windows.append((time.monotonic(), time.monotonic()))
            if not wal.exists() or wal.stat().st_size == 0:
                self.daemon.spawn()
                await self._ready(client, "restart after a kill without a -wal")
                return FaultResult("not exercised", "the SIGKILL left no -wal")
            await asyncio.to_thread(shutil.move, wal, aside)
            alone = await asyncio.to_thread(_states_without_wal, self.db, self.workdir / "alone")
            lacking = [k for k, r in self.ledger.first.items() if alone.get(k) != r.state]
            mark = self.daemon.log.stat().st_size
            self.daemon.spawn()
            code = await self._exit_or_ready(client)
            said = self.daemon.log.read_bytes()[mark:].decode(errors="replace").strip()
            if code is None:
                self.daemon.terminate()
                aside.unlink()
                self.daemon.spawn()
                await self._ready(client, "restart after a start without the -wal")
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
            self.daemon.spawn()
            await self._ready(client, "start with the -wal back")
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

    async def _fault_crash(self, client: Client) -> FaultResult:
        """SIGKILL the daemon while the trap runs, its links planted; start it again."""
        if "trap" not in self.report.attacks:
            return FaultResult("skipped", "the trap attack is not in the run")
        found = await self._wait_node(
            lambda _k, r: r.state == "running" and _plan_attack(r) == "trap",
            timeout_s=3 * FAULT_WAIT_S)
        if found is None:
            return FaultResult("not exercised", "the trap did not run within "
                                                f"{3 * FAULT_WAIT_S:.0f} s")
        key = found[0]
        where = f"task {key[0]} node {key[1]}"
        # The trap plants its links within a second of starting.
        await asyncio.sleep(2.0)
        async with self.control:
            self.snapshot("before the crash")
            self._sample_rss()
            self.daemon.kill()
            self.windows.append((time.monotonic(), time.monotonic()))
            self.daemon.spawn()
            await self._ready(client, "restart after the crash")
        ended = await self._wait_node(lambda k, r: k == key and r.state in FINISHED)
        if ended is None:
            return FaultResult("fail", f"{where}, the trap, did not end within "
                                       f"{FAULT_WAIT_S:.0f} s of the restart")
        error = str(dict(ended[1].outcome)["error"] or "")
        return FaultResult("pass", f"SIGKILLed while {where} (the trap) ran; after the "
                                   f"restart it ended {ended[1].state} ({error or 'no error'})")

    async def _finish(self, client: Client) -> None:
        """Wait for both tasks to end; a task paused on a full disk for `STUCK_S` (the run's
        own ballast is long gone by then) will not come back by itself: fail at once."""
        deadline = time.monotonic() + self.settings.finish_timeout_s
        paused_since: float | None = None
        while True:
            tasks = await asyncio.to_thread(read_tasks, self.db, self.task_ids.values())
            if all(t["state"] in TERMINAL_TASK for t in tasks.values()):
                return
            if time.monotonic() > deadline:
                states = ", ".join(f"{t['id']} {t['state']} ({t['error']})"
                                   for t in tasks.values())
                raise RuntimeError(f"the tasks did not end within "
                                   f"{self.settings.finish_timeout_s:.0f} s: {states}")
            paused = None
            with contextlib.suppress(DaemonUnreachable):
                paused = await self._task_paused(client)
            if paused is None or not _says_disk_full(paused[1]):
                paused_since = None
            elif paused_since is None:
                paused_since = time.monotonic()
            elif time.monotonic() - paused_since > STUCK_S:
                raise RuntimeError(
                    f"the {paused[0]} has been paused {STUCK_S:.0f} s on a full disk that no "
                    f"fault of the run fills ({paused[1]}); what fills it: "
                    f"{await asyncio.to_thread(self._what_fills)}")
            await asyncio.sleep(0.5)

    def _what_fills(self, count: int = 3) -> str:
        """The biggest node workspaces and the database's files, and the space left."""
        sizes = [(p.stat().st_size, f"{p.name} {p.stat().st_size // MIB} MiB")
                 for p in self.state_dir.glob("mlmaster.db*") if p.is_file()]
        for ws in self.state_dir.glob("tasks/*/nodes/*"):
            size = sum(f.stat().st_size for f in ws.rglob("*") if f.is_file()
                       and not f.is_symlink())
            role = next((r for r, t in self.task_ids.items() if t == ws.parent.parent.name), "?")
            sizes.append((size, f"the {role}'s node {ws.name} workspace {size // MIB} MiB"))
        free = shutil.disk_usage(self.state_dir).free // MIB
        return ", ".join(text for _size, text in sorted(sizes, reverse=True)[:count]) + \
            f"; {free} MiB free"

    async def _inspect(self, client: Client) -> None:
        """Every API answer about the run, for the leak scan; who submitted what."""
        listed = await client.request("GET", "/v1/tasks")
        self.api_answers.append(("GET /v1/tasks", json.dumps(listed)))
        ours = set(self.task_ids.values())
        self.report.foreign_tasks += [f"{t['id']} ({t['name']}, by {t['submitter']})"
                                      for t in listed["tasks"] if t["id"] not in ours]
        if listed["total"] > len(ours) and not self.report.foreign_tasks:
            self.report.foreign_tasks.append(f"{listed['total'] - len(ours)} unlisted")
        for role, task_id in self.task_ids.items():
            task = await client.task(task_id)
            self.api_answers.append((f"GET the {role} task", json.dumps(task)))
            self.recorded[role] = int(task["usage"]["calls"])
            if role == "victim":
                self.report.victim_state = task["state"]
            for node in await client.nodes(task_id):
                where = f"the {role}'s node {node['id']}"
                try:
                    full = await client.node(task_id, node["id"])
                except ApiError as exc:
                    self.report.api_errors.append(f"GET {where} ({node['status']}: "
                                                  f"{node['error']}) answered {exc.status} "
                                                  f"{exc.code}: {exc.message}")
                    continue
                self.api_answers.append((f"GET {where}", json.dumps(full)))
                tail = str(full.get("output_tail") or "")
                self.output_tails.append((f"the output tail of {where}", tail))
                said = [line for line in tail.splitlines() if line.startswith("HOSTILE ")]
                if said:
                    self.said[(task_id, node["id"])] = said[-1].split(":", 1)[-1].strip()

    def _stop(self) -> None:
        self._sample_rss()
        code = self.daemon.terminate()
        if code != 0:
            self.report.deaths.append(f"the daemon exited with code {code} on SIGTERM")
        self.report.orphans += [f"{s} alive after the final stop" for s in stray_processes(
            self.state_dir, self.task_ids.values(), None)]
        if not self.task_ids or not self.db.exists():
            return
        rows = self.snapshot("after the final stop")
        self._judge(rows, read_tasks(self.db, self.task_ids.values()))

    def _judge(self, rows: Mapping[NodeKey, NodeRow], tasks: Mapping[str, Any]) -> None:
        report = self.report
        report.lost = dict(self.ledger.lost)
        report.node_states = Counter(r.state for r in rows.values())
        role_of = {task_id: role for role, task_id in self.task_ids.items()}
        for (task_id, node_id), row in sorted(rows.items()):
            where = f"the {role_of[task_id]}'s node {node_id}"
            error = str(dict(row.outcome)["error"] or "")
            if row.state not in FINISHED:
                report.unfinished.append(f"{where} is {row.state}")
            elif row.state in ("buggy", "failed") and not error.strip():
                report.unexplained.append(f"{where} is {row.state} without a reason")
            attack = _plan_attack(row)
            slow = attack in ATTACKS_BY_NAME and ATTACKS_BY_NAME[attack].may_time_out
            if "time limit" in error and not slow:
                report.timed_out.append(f"{where} ({attack}): {error}")
            if task_id == self.task_ids.get("attacker") and attack in report.attacks:
                said = self.said.get((task_id, node_id))
                report.attacks[attack].nodes.append(
                    f"node {node_id:<3} {row.state}: {' '.join(error.split())[:110] or '-'}"
                    + (f" | it said: {said[:110]}" if said else ""))
        report.late += late_writes(self.state_dir, rows)
        report.outside += changed_files(self.outside, file_digests(
            [self.key_file, *self.competitions.values()]))
        for role, task_id in self.task_ids.items():
            task = tasks[task_id]
            report.tasks[role] = task["state"]
            if task["state"] != "finished":
                report.bad_submissions.append(f"the {role} ended {task['state']}: "
                                              f"{task['error']}")
                continue
            for problem in (check_submission(self.state_dir, task),
                            check_best(self.state_dir, task, rows)):
                if problem is not None:
                    report.bad_submissions.append(problem)

    def _scan(self, model: InjectedModel) -> None:
        """The key and the hidden-answer markers in anything that left a job."""
        sources: list[tuple[str, str | bytes]] = [
            (f"prompt {i} the model received", json.dumps(body))
            for i, body in enumerate(model.requests)]
        sources += [(f"the API answer to {what}", text) for what, text in self.api_answers]
        sources += self.output_tails
        stores = sorted(self.state_dir.glob("mlmaster.db*")) + sorted(
            (self.state_dir / "backups").glob("*"))
        sources += [(f"the database file {p.name}", p.read_bytes()) for p in stores
                    if p.is_file()]
        if self.daemon.log.exists():
            log = self.daemon.log.read_bytes()
            sources.append(("the daemon's log", log))
            self.report.internal_errors += logged_exceptions(log)
        found = find_leaks({"the API key": self.key,
                            "the attacker's hidden answers": self.markers["attacker"],
                            "the victim's hidden answers": self.markers["victim"]}, sources)
        self.report.leaks += found
        self.report.notes.append(f"scanned {len(model.requests)} prompts, "
                                 f"{len(self.api_answers)} API answers, "
                                 f"{len(self.output_tails)} output tails, {len(stores)} "
                                 "database files and the daemon's log")

    def cleanup(self) -> None:
        """Unmount the tmpfs and remove the run's files."""
        if self.mounted:
            subprocess.run(["umount", "-l", str(self.state_dir)], capture_output=True,
                           check=False)
            self.mounted = False
        shutil.rmtree(self.workdir, ignore_errors=True)


def _say(line: str) -> None:
    print(line, flush=True)


def _names(raw: str, known: Sequence[str], what: str,
           parser: argparse.ArgumentParser) -> tuple[str, ...]:
    if raw.strip() == "none":
        return ()
    names = tuple(n.strip() for n in raw.split(",") if n.strip())
    unknown = sorted(set(names) - set(known))
    if unknown:
        parser.error(f"--{what}: unknown {', '.join(unknown)}; choose from {', '.join(known)} "
                     "or none")
    return names


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m mlmaster_daemon.hostile",
        description="Run the daemon on a prompt-injected model whose scripts attack it, while "
                    "the machine fails under it, and check that it survives, leaks no secret "
                    "or hidden answer and loses no finished work. Exit code 0 when all hold.")
    attacks = [a.name for a in ATTACKS]
    parser.add_argument("--attacks", default=",".join(attacks),
                        help=f"comma list of attacks, or none (default: all of "
                             f"{', '.join(attacks)})")
    parser.add_argument("--light", action="store_true",
                        help="leave out the heavy attacks (memory hog, disk filler)")
    parser.add_argument("--faults", default=",".join(FAULTS),
                        help=f"comma list of machine faults, or none (default: all of "
                             f"{', '.join(FAULTS)})")
    parser.add_argument("--steps", type=int, default=0,
                        help="steps of the attacker (default: two per attack, plus 6)")
    parser.add_argument("--victim-steps", type=int, default=8, help="steps of the victim")
    parser.add_argument("--parallel", type=int, default=2, help="nodes run at once")
    parser.add_argument("--sandbox", default="auto", choices=("auto", "bwrap", "none"),
                        help="the daemon's [execution] sandbox")
    parser.add_argument("--node-timeout", type=float, default=30.0,
                        help="each node's time limit in seconds (the stop fault lasts 3 s "
                             "longer)")
    parser.add_argument("--tmpfs-mb", type=int, default=512,
                        help="size of the tmpfs mounted for the state dir (0: none; then no "
                             "disk-full fault or disk filler)")
    parser.add_argument("--keep-file-override", action="store_true",
                        help="run the daemon as root with root's file override; by default "
                             "it runs without CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH, held "
                             "to files' modes as the systemd unit's own user is")
    parser.add_argument("--rss-limit-mb", type=int, default=RSS_LIMIT_MB,
                        help="the most the daemon's resident memory may reach")
    parser.add_argument("--finish-timeout", type=float, default=900.0,
                        help="seconds the tasks may take to end after the faults")
    files = parser.add_mutually_exclusive_group()
    files.add_argument("--keep", action="store_true",
                       help="keep the temp dir (state, daemon log) even when the run passes")
    files.add_argument("--clean", action="store_true",
                       help="remove the temp dir (and unmount its tmpfs) even when the run "
                            "fails")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    attacks = _names(args.attacks, [a.name for a in ATTACKS], "attacks", parser)
    if args.light:
        attacks = tuple(a for a in attacks if not ATTACKS_BY_NAME[a].heavy)
    settings = HostileSettings(
        attacks=attacks, faults=_names(args.faults, FAULTS, "faults", parser),
        steps=args.steps, victim_steps=args.victim_steps, parallel=args.parallel,
        sandbox=args.sandbox, node_timeout_s=args.node_timeout, tmpfs_mb=args.tmpfs_mb,
        rss_limit_mb=args.rss_limit_mb, finish_timeout_s=args.finish_timeout, keep=args.keep,
        clean=args.clean, drop_dac=not args.keep_file_override)
    # A short path: the socket lives here and Unix socket paths must fit in 107 bytes.
    workdir = Path(tempfile.mkdtemp(prefix="mlm-hostile-"))
    run = HostileRun(settings, workdir)
    _say(f"hostile: {len(attacks)} attacks ({', '.join(attacks) or 'none'}), faults "
         f"{', '.join(settings.faults) or 'none'}, sandbox {settings.sandbox}, node time "
         f"limit {settings.node_timeout_s:.0f} s, state dir {run.state_dir}")
    try:
        report = asyncio.run(run.run())
    except BaseException:
        if not settings.keep:
            run.cleanup()
        raise
    for line in report.lines():
        _say(line)
    if settings.clean or (report.passed and not settings.keep):
        run.cleanup()
    else:
        mounted = f"; the state dir is a tmpfs: `umount {run.state_dir}` when done" \
            if run.mounted else ""
        _say(f"the run's files (daemon log, competitions, state) are in {workdir}{mounted}")
    return 0 if report.passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
