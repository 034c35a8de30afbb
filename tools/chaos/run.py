"""Chaos run: SIGKILL the daemon at chosen moments while it searches, restart it each time, and
check that nothing was lost, duplicated or left running.

`python -m mlmaster_daemon.chaos` (or `scripts/chaos`) builds an example competition, runs
`mlmaster daemon` as a subprocess (offline coder, private state dir and socket), submits the
task and kills the daemon `--kills` times. Each kill waits for one of these moments, in an
order shuffled by `--seed`, with random delays from the same seed:

- `start-up`: during the daemon's start-up (recovery), before its socket answers;
- `after-ready`: 0-0.2 s after it answers;
- `random`: 0.2-4 s after it answers;
- `generating`, `running`, `evaluating`: as soon as the database shows a node in that state
  (a running node gets another 0-1.5 s), or after 8 s if none shows up;
- `spawning`: as soon as the daemon has a child process for a node the database still shows
  as ready (started, its pid not yet committed), or after 8 s;
- `finished`: as soon as a node is newly done or buggy (its outcome just committed, the best
  submission maybe being copied), or after 8 s.

Between kills the database is read directly (read-only) and every finished node's outcome is
kept; when the task finishes before the kills are spent another is submitted. At the end the
daemon stops with SIGTERM and the run prints, and checks, the figures of `Report`.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import hashlib
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from mlmaster_daemon.api.client import Client
from mlmaster_daemon.errors import DaemonUnreachable
from mlmaster_daemon.tasks.examples import EXAMPLES, build_example

MOMENTS = ("start-up", "after-ready", "random", "generating", "spawning", "running",
           "evaluating", "finished")
FINISHED = ("done", "buggy", "failed")
TERMINAL_TASK = ("finished", "cancelled", "failed")
# A finished node's own outcome. visits and value are not here: backpropagation changes them.
OUTCOME_COLUMNS = ("state", "operator", "parent_id", "parent_ids", "plan", "summary", "code",
                   "metric", "error", "exit_code", "analysis", "pid", "created_at",
                   "started_at", "finished_at", "interrupted")
# What a run leaves in a node's workspace; written again only if the script runs again.
RUN_ARTIFACTS = ("solution.py", "stdout.log", "stderr.log", "metrics.json",
                 "submission/submission.csv")
READY_TIMEOUT_S = 90.0
TARGET_WAIT_S = 8.0
# The windows between commits are a few milliseconds: poll at that pace (a read is ~0.2 ms).
POLL_S = 0.002

NodeKey = tuple[str, int]


@dataclass(frozen=True)
class ChaosSettings:
    example: str = "breast_cancer"
    steps: int = 16
    kills: int = 20
    seed: int = 0
    parallel: int = 2
    sandbox: str = "auto"
    state_dir: Path | None = None
    finish_timeout_s: float = 900.0
    keep: bool = False
    moments: tuple[str, ...] = MOMENTS


@dataclass(frozen=True)
class NodeRow:
    """One node as the database shows it: its state and its own outcome columns."""

    task_id: str
    id: int
    state: str
    outcome: tuple[tuple[str, Any], ...]

    def differences(self, later: NodeRow) -> list[str]:
        return [name for (name, a), (_n, b) in zip(self.outcome, later.outcome, strict=True)
                if a != b]


@dataclass
class Report:
    """The figures a chaos run prints; `passed` when every one holds.

    - kills survived: kills after which the daemon came back ready (a kill during a start-up
      counts once the start-up after it is ready).
    - finished nodes lost: nodes seen done, buggy or failed in any snapshot that a later one
      shows missing or with another outcome (`OUTCOME_COLUMNS`).
    - duplicated nodes: node ids are a primary key, so a duplicate is never a second row but
      one search outcome produced twice: a finished node whose workspace was written after it
      finished (its script ran again), a node listed twice among the search tree's children
      (one node in two search slots), or a task counting more steps (nodes not interrupted
      before their code) than its budget (a step paid twice). A node whose run a kill cut
      short, even in evaluation, and that runs again is no duplicate: it had no outcome yet.
    - orphan processes: right after each restart is ready, processes of the state dir that
      the current daemon did not start; after the final SIGTERM, any process of it.
    - search tree mismatches: the saved search tree and the node rows disagree (`check_tree`).
    - daemon crashes: the daemon exiting by itself, not getting ready, or failing its SIGTERM.
    - tasks finished, valid best submission: every task ended `finished`, with a best
      submission shaped like the sample submission that is its best done node's."""

    kills: int = 0
    survived: int = 0
    lost: dict[NodeKey, str] = field(default_factory=dict)
    duplicates: list[str] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)
    tree_mismatches: list[str] = field(default_factory=list)
    crashes: list[str] = field(default_factory=list)
    tasks: dict[str, str] = field(default_factory=dict)
    bad_submissions: list[str] = field(default_factory=list)
    moments: Counter[str] = field(default_factory=Counter)
    node_states: Counter[str] = field(default_factory=Counter)
    interrupted: int = 0
    wall_s: float = 0.0

    @property
    def finished(self) -> bool:
        return bool(self.tasks) and all(s == "finished" for s in self.tasks.values())

    @property
    def passed(self) -> bool:
        return (self.survived == self.kills and not self.lost and not self.duplicates
                and not self.orphans and not self.tree_mismatches and not self.crashes
                and self.finished and not self.bad_submissions)

    def lines(self) -> list[str]:
        states = ", ".join(f"{n} {s}" for s, n in sorted(self.node_states.items()))
        moments = ", ".join(f"{m} {self.moments[m]}" for m in MOMENTS if self.moments[m])
        finished = sum(1 for s in self.tasks.values() if s == "finished")
        rows = [
            ("kills survived", f"{self.survived}/{self.kills}"),
            ("finished nodes lost", str(len(self.lost))),
            ("duplicated nodes", str(len(self.duplicates))),
            ("orphan processes", str(len(self.orphans))),
            ("search tree mismatches", str(len(self.tree_mismatches))),
            ("daemon crashes", str(len(self.crashes))),
            ("tasks finished", f"{finished}/{len(self.tasks)}"),
            ("valid best submission", "yes" if self.finished and not self.bad_submissions
             else "no"),
            ("nodes", f"{sum(self.node_states.values())} ({states or 'none'}; "
                      f"{self.interrupted} interrupted before code)"),
            ("kill moments", moments or "none"),
            ("wall time", f"{self.wall_s:.1f} s"),
        ]
        out = [f"{name:<24}{value}" for name, value in rows]
        problems = ([f"lost: task {t} node {n}: {why}" for (t, n), why in self.lost.items()]
                    + [f"duplicated: {d}" for d in self.duplicates]
                    + [f"orphan: {o}" for o in self.orphans]
                    + [f"tree: {m}" for m in self.tree_mismatches]
                    + [f"crash: {c}" for c in self.crashes]
                    + [f"submission: {s}" for s in self.bad_submissions])
        return out + problems + [f"chaos: {'PASS' if self.passed else 'FAIL'}"]


class Ledger:
    """Every finished node's outcome as first seen; each later snapshot must still show it,
    unchanged. A node that went missing or changed is lost (the first reason is kept)."""

    def __init__(self) -> None:
        self.first: dict[NodeKey, NodeRow] = {}
        self.lost: dict[NodeKey, str] = {}

    def observe(self, rows: Mapping[NodeKey, NodeRow], when: str) -> None:
        for key, seen in self.first.items():
            now = rows.get(key)
            if now is None:
                self.lost.setdefault(key, f"missing {when}")
            elif now != seen:
                self.lost.setdefault(key, f"{', '.join(seen.differences(now))} changed {when}")
        for key, row in rows.items():
            if row.state in FINISHED and key not in self.first:
                self.first[key] = row


def _connect(db: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True, timeout=10)


def read_nodes(db: Path, task_ids: Iterable[str]) -> dict[NodeKey, NodeRow]:
    """Every node of `task_ids`, read-only; the code is kept as its SHA-256."""
    ids = list(task_ids)
    query = (f"SELECT task_id, id, {', '.join(OUTCOME_COLUMNS)} FROM nodes "
             f"WHERE task_id IN ({', '.join('?' * len(ids))})")
    with _connect(db) as conn:
        rows = conn.execute(query, ids).fetchall()
    conn.close()
    nodes = {}
    for task_id, node_id, *values in rows:
        outcome = dict(zip(OUTCOME_COLUMNS, values, strict=True))
        if outcome["code"] is not None:
            outcome["code"] = hashlib.sha256(outcome["code"].encode()).hexdigest()
        nodes[(task_id, node_id)] = NodeRow(task_id, node_id, outcome["state"],
                                            tuple(outcome.items()))
    return nodes


def read_states(conn: sqlite3.Connection, task_ids: Iterable[str]) -> dict[NodeKey, str]:
    """Just the state of every node of `task_ids`, on an open read-only connection (cheap
    enough to poll every few milliseconds)."""
    ids = list(task_ids)
    rows = conn.execute("SELECT task_id, id, state FROM nodes "
                        f"WHERE task_id IN ({', '.join('?' * len(ids))})", ids).fetchall()
    return {(task_id, node_id): state for task_id, node_id, state in rows}


def read_tasks(db: Path, task_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
    """state, error, steps, best node and metric, spec and search state of each task."""
    ids = list(task_ids)
    with _connect(db) as conn:
        conn.row_factory = sqlite3.Row
        rows = conn.execute(
            "SELECT id, state, error, steps, best_node_id, best_metric, spec, search_state "
            "FROM tasks "
            f"WHERE id IN ({', '.join('?' * len(ids))})", ids).fetchall()
    conn.close()
    return {row["id"]: dict(row) for row in rows}


def stray_processes(state_dir: Path, task_ids: Iterable[str], daemon_pid: int | None,
                    ) -> list[str]:
    """Live processes of this state dir that the daemon `daemon_pid` did not start: cwd or
    command line under `state_dir`, or a job cgroup of one of `task_ids`, and not the daemon
    or one of its descendants (None: any such process is a stray). Zombies are dead and not
    counted."""
    root = str(state_dir.resolve())
    tasks = tuple(task_ids)
    mine = {os.getpid(), *(p.pid for p in psutil.Process().parents())}
    strays = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        if proc.pid in mine or proc.pid == daemon_pid:
            continue
        try:
            if proc.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            cmdline, cwd = " ".join(proc.info["cmdline"] or []), _cwd(proc)
            if not (root in cmdline or cwd.startswith(root)
                    or any(t in _cgroup(proc.pid) for t in tasks)):
                continue
            if daemon_pid is not None and daemon_pid in (p.pid for p in proc.parents()):
                continue
            strays.append(f"pid {proc.pid} in {cwd.removeprefix(root + '/') or '?'} "
                          f"({cmdline[:60]})")
        except psutil.Error:
            continue
    return strays


def _cwd(proc: psutil.Process) -> str:
    try:
        return proc.cwd()
    except psutil.Error:
        return ""


def _cgroup(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cgroup").read_text()
    except OSError:
        return ""


def reruns_after_finish(state_dir: Path, rows: Mapping[NodeKey, NodeRow]) -> list[str]:
    """Finished nodes whose workspace was written after they finished: their script ran
    again (a duplicated run). The run writes its artifacts before the outcome is recorded."""
    found = []
    for (task_id, node_id), row in rows.items():
        finished_at = dict(row.outcome)["finished_at"]
        if row.state not in FINISHED or finished_at is None:
            continue
        ws = state_dir / "tasks" / task_id / "nodes" / str(node_id)
        for name in RUN_ARTIFACTS:
            try:
                mtime = (ws / name).stat().st_mtime
            except OSError:
                continue
            if mtime > finished_at + 0.01:
                found.append(f"task {task_id} node {node_id}: {name} written "
                             f"{mtime - finished_at:.2f} s after the node finished")
    return found


def check_tree(task: Mapping[str, Any], rows: Mapping[NodeKey, NodeRow],
               ) -> tuple[list[str], list[str]]:
    """(duplicates, mismatches) between the task's saved search tree and its node rows.

    A duplicate is a node listed twice among the tree's children (one node in two search
    slots). A mismatch is a done/buggy node the tree lacks or records with another parent or
    outcome, or a node the tree has as finished that the database does not."""
    if not task["search_state"]:
        return [], [f"task {task['id']} has no saved search state"]
    tree = json.loads(task["search_state"])["policy"]["tree"]["nodes"]
    by_id = {raw[0]: raw for raw in tree}
    listed = Counter(child for raw in tree for child in raw[5])
    duplicates = [f"task {task['id']} node {n} is listed {k} times in the search tree"
                  for n, k in sorted(listed.items()) if k > 1]
    mismatches = []
    mine = {n: r for (t, n), r in rows.items() if t == task["id"]}
    for node_id, row in sorted(mine.items()):
        if row.state not in ("done", "buggy"):
            continue
        raw = by_id.get(node_id)
        parent = dict(row.outcome)["parent_id"] or 0
        outcome = "good" if row.state == "done" else "buggy"
        if raw is None:
            mismatches.append(f"task {task['id']} node {node_id} ({row.state}) is not in the tree")
        elif raw[1][0] != parent or raw[3] != outcome:
            mismatches.append(f"task {task['id']} node {node_id}: tree says parent {raw[1][0]} "
                              f"{raw[3]}, database parent {parent} {row.state}")
    for node_id, raw in by_id.items():
        if node_id != 0 and raw[3] != "pending" and (
                node_id not in mine or mine[node_id].state not in ("done", "buggy")):
            mismatches.append(f"task {task['id']} node {node_id} is {raw[3]} in the tree but "
                              "not finished in the database")
    return duplicates, mismatches


def check_submission(state_dir: Path, task: Mapping[str, Any]) -> str | None:
    """Why the task's best submission is not valid (None when it is): it must exist and have
    the sample submission's columns, row count and ids."""
    spec = json.loads(task["spec"])
    sample = Path(spec["public_dir"]) / spec["sample_submission_file"]
    best = state_dir / "tasks" / task["id"] / "best" / "submission.csv"
    if task["best_node_id"] is None or not best.exists():
        return f"task {task['id']} has no best submission ({task['error']})"
    want, got = _read_csv(sample), _read_csv(best)
    if got[0] != want[0]:
        return f"task {task['id']}: columns {got[0]} instead of {want[0]}"
    if len(got[1]) != len(want[1]):
        return f"task {task['id']}: {len(got[1])} rows instead of {len(want[1])}"
    key = want[0].index(spec["id_column"]) if spec["id_column"] in want[0] else 0
    if sorted(r[key] for r in got[1]) != sorted(r[key] for r in want[1]):
        return f"task {task['id']}: the ids differ from the sample submission's"
    if any(not value.strip() for r in got[1] for value in r):
        return f"task {task['id']}: empty values in the submission"
    return None


def check_best(state_dir: Path, task: Mapping[str, Any], rows: Mapping[NodeKey, NodeRow],
               ) -> str | None:
    """Why the task's recorded best is not its best done node (None when it is): the task's
    best metric must be the best of its done nodes' metrics, and `best/` must hold that
    node's submission."""
    spec = json.loads(task["spec"])
    metrics = {n: dict(r.outcome)["metric"] for (t, n), r in rows.items()
               if t == task["id"] and r.state == "done" and dict(r.outcome)["metric"] is not None}
    if not metrics:
        return None
    pick = min if spec["lower_is_better"] else max
    best_id = pick(metrics, key=lambda n: metrics[n])
    if task["best_node_id"] is None or task["best_metric"] != metrics[best_id]:
        return (f"task {task['id']}: best recorded is node {task['best_node_id']} "
                f"({task['best_metric']}), the best done node is {best_id} ({metrics[best_id]})")
    best = state_dir / "tasks" / task["id"] / "best"
    try:
        copied = json.loads((best / "node.json").read_text())["node_id"]
        same = (best / "submission.csv").read_bytes() == (
            state_dir / "tasks" / task["id"] / "nodes" / str(copied) / "submission"
            / "submission.csv").read_bytes()
    except (OSError, ValueError, KeyError) as exc:
        return f"task {task['id']}: best/ is unreadable ({exc})"
    if copied != task["best_node_id"] or not same:
        return (f"task {task['id']}: best/ holds node {copied}'s files, the task records node "
                f"{task['best_node_id']}")
    return None


def _read_csv(path: Path) -> tuple[list[str], list[list[str]]]:
    with path.open(newline="") as handle:
        rows = list(csv.reader(handle))
    return (rows[0], rows[1:]) if rows else ([], [])


class DaemonProcess:
    """`mlmaster daemon` as a subprocess on a private socket and state dir."""

    def __init__(self, settings: ChaosSettings, state_dir: Path, socket: Path, log: Path):
        self.state_dir, self.socket, self.log = state_dir, socket, log
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("MLMASTER_")}
        self.env.update({
            "MLMASTER_SEARCH__PARALLEL": str(settings.parallel),
            "MLMASTER_EXECUTION__MAX_CONCURRENT_NODES": str(settings.parallel),
            "MLMASTER_EXECUTION__SANDBOX": settings.sandbox,
            # The kills are the harness's, not a node's doing: none is failed as a daemon killer.
            "MLMASTER_EXECUTION__MAX_NODE_CRASHES": str(settings.kills + 1),
        })
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0

    def spawn(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "mlmaster_daemon", "daemon", "--socket", str(self.socket),
                 "--state-dir", str(self.state_dir)],
                stdout=out, stderr=subprocess.STDOUT, env=self.env)
        self.started_at = time.monotonic()

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None

    def exited(self) -> int | None:
        """The exit code if the daemon has exited by itself, else None."""
        return None if self.proc is None else self.proc.poll()

    async def wait_ready(self, client: Client) -> float:
        """Seconds from spawn until the socket answered; raises RuntimeError if it died."""
        while True:
            code = self.exited()
            if code is not None:
                raise RuntimeError(f"the daemon exited with code {code} during start-up; "
                                   f"see {self.log}")
            if time.monotonic() - self.started_at > READY_TIMEOUT_S:
                raise RuntimeError(f"the daemon was not ready after {READY_TIMEOUT_S:.0f} s")
            try:
                await client.health()
                return time.monotonic() - self.started_at
            except DaemonUnreachable:
                await asyncio.sleep(0.05)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def terminate(self, timeout_s: float = 60.0) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc is not None else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return -signal.SIGKILL


class ChaosRun:
    """One chaos run: the daemon, the tasks it was given, and what was observed."""

    def __init__(self, settings: ChaosSettings, workdir: Path):
        self.settings = settings
        self.rng = random.Random(settings.seed)
        self.workdir = workdir
        self.state_dir = (settings.state_dir or workdir / "state").resolve()
        self.db = self.state_dir / "mlmaster.db"
        self.daemon = DaemonProcess(settings, self.state_dir, workdir / "d.sock",
                                    workdir / "daemon.log")
        self.competition = workdir / "competition"
        self.task_ids: list[str] = []
        self.ledger = Ledger()
        self.report = Report(kills=settings.kills)
        self.last_ready_s = 1.0

    def snapshot(self, when: str) -> dict[NodeKey, NodeRow]:
        rows = read_nodes(self.db, self.task_ids) if self.task_ids else {}
        self.ledger.observe(rows, when)
        return rows

    async def run(self) -> Report:
        started = time.monotonic()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        build_example(self.settings.example, self.competition)
        async with Client(self.daemon.socket) as client:
            try:
                self.daemon.spawn()
                await self._ready(client, "start")
                await self._submit(client)
                await self._kill_all(client)
                await self._finish(client)
            except RuntimeError as exc:
                self.report.crashes.append(str(exc))
            finally:
                self._stop()
        self.report.wall_s = time.monotonic() - started
        return self.report

    def _moments(self) -> list[str]:
        """Each moment about as often, shuffled; the first kill never lands in a start-up
        (a start-up kill follows another kill, before the restart is ready)."""
        kinds = self.settings.moments
        moments = [kinds[i % len(kinds)] for i in range(self.settings.kills)]
        self.rng.shuffle(moments)
        later = [i for i, m in enumerate(moments) if m != "start-up"]
        if moments and moments[0] == "start-up" and later:
            moments[0], moments[later[0]] = moments[later[0]], moments[0]
        return moments

    async def _kill_all(self, client: Client) -> None:
        moments = self._moments()
        number = 0
        while number < len(moments):
            moment = moments[number]
            number += 1
            waited = await self._wait_for(client, moment)
            self._kill(number, moment, waited)
            chain = 1
            self.daemon.spawn()
            while number < len(moments) and moments[number] == "start-up":
                # Part way into the start-up (recovery): kill it again before it answers.
                delay = self.rng.uniform(0.3, 0.9) * self.last_ready_s
                await asyncio.sleep(delay)
                number += 1
                chain += 1
                self._kill(number, "start-up", delay)
                self.daemon.spawn()
            try:
                ready_s = await self._ready(client, f"restart after kill {number}")
            except RuntimeError as exc:
                raise RuntimeError(f"kill {number}: {exc}") from None
            self.report.survived += chain
            _say(f"{'':>8}ready again in {ready_s:.1f} s")

    def _kill(self, number: int, moment: str, waited: float) -> None:
        rows = self.snapshot(f"before kill {number}")
        self.daemon.kill()
        self.report.moments[moment] += 1
        busy = Counter(r.state for r in rows.values() if r.state not in FINISHED)
        busy_text = ", ".join(f"{n} {s}" for s, n in sorted(busy.items())) or "none busy"
        finished = len(rows) - sum(busy.values())
        _say(f"kill {number:>2}/{self.settings.kills}  {moment:<11} at {waited:5.2f} s  "
             f"nodes: {finished} finished, {busy_text}")

    async def _ready(self, client: Client, when: str) -> float:
        """Wait until the daemon answers; then no process of an earlier daemon may be left."""
        self.last_ready_s = await self.daemon.wait_ready(client)
        self.report.orphans += [f"{s} alive after the {when}" for s in stray_processes(
            self.state_dir, self.task_ids, self.daemon.pid)]
        self.snapshot(f"after the {when}")
        return self.last_ready_s

    async def _submit(self, client: Client) -> None:
        task = await client.submit({"task_dir": str(self.competition),
                                    "steps": self.settings.steps})
        self.task_ids.append(task["id"])
        _say(f"submitted task {task['id']}: {self.settings.example}, "
             f"{self.settings.steps} steps")

    async def _wait_for(self, client: Client, moment: str) -> float:
        """Wait, from ready, for the kill's moment; returns the seconds waited."""
        began = time.monotonic()
        if moment == "after-ready":
            await asyncio.sleep(self.rng.uniform(0.0, 0.2))
        elif moment == "random":
            await asyncio.sleep(self.rng.uniform(0.2, 4.0))
        else:
            await self._wait_for_node(client, moment)
        await self._keep_busy(client)
        if self.daemon.exited() is not None:
            raise RuntimeError(f"the daemon exited by itself with code {self.daemon.exited()}")
        return time.monotonic() - began

    async def _wait_for_node(self, client: Client, moment: str) -> None:
        """Poll the node states until one is in the moment's state (for `finished`: a node
        newly done or buggy), for at most TARGET_WAIT_S."""
        began = time.monotonic()
        targets = {"generating": ("pending", "generating"),
                   "finished": ("done", "buggy")}.get(moment, (moment,))
        extra = self.rng.uniform(0.0, 1.5) if moment == "running" else 0.0
        conn = _connect(self.db)
        try:
            before = {k for k, state in read_states(conn, self.task_ids).items()
                      if state in targets} if moment == "finished" else set()
            last_check = 0.0
            while time.monotonic() - began < TARGET_WAIT_S:
                if time.monotonic() - last_check > 0.5:
                    last_check = time.monotonic()
                    await self._keep_busy(client)
                states = read_states(conn, self.task_ids)
                if moment == "spawning":
                    if self._spawning(states):
                        return
                elif any(s in targets and k not in before for k, s in states.items()):
                    await asyncio.sleep(extra)
                    return
                await asyncio.sleep(POLL_S)
        finally:
            conn.close()

    def _spawning(self, states: Mapping[NodeKey, str]) -> bool:
        """Whether the daemon has a child process for a node the database still shows as
        ready: its script was started but its pid is not committed yet."""
        pid = self.daemon.pid
        if pid is None:
            return False
        nodes = self.state_dir / "tasks"
        try:
            children = psutil.Process(pid).children()
        except psutil.Error:
            return False
        for child in children:
            parts = Path(_cwd(child)).parts[len(nodes.parts):]
            if len(parts) == 3 and parts[1] == "nodes" and parts[2].isdigit() and \
                    states.get((parts[0], int(parts[2]))) == "ready":
                return True
        return False

    async def _keep_busy(self, client: Client) -> bool:
        """Submit another task when all are done, so the kills land in work; True if it did."""
        tasks = read_tasks(self.db, self.task_ids)
        if all(t["state"] in TERMINAL_TASK for t in tasks.values()):
            await self._submit(client)
            return True
        return False

    async def _finish(self, client: Client) -> None:
        deadline = time.monotonic() + self.settings.finish_timeout_s
        while True:
            tasks = read_tasks(self.db, self.task_ids)
            if all(t["state"] in TERMINAL_TASK for t in tasks.values()):
                break
            if self.daemon.exited() is not None:
                raise RuntimeError(f"the daemon exited by itself with code "
                                   f"{self.daemon.exited()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the tasks did not finish within "
                                   f"{self.settings.finish_timeout_s:.0f} s")
            await asyncio.sleep(0.5)
        self.snapshot("when the tasks ended")

    def _stop(self) -> None:
        code = self.daemon.terminate()
        if code != 0 and not self.report.crashes:
            self.report.crashes.append(f"the daemon exited with code {code} on SIGTERM")
        self.report.orphans += [f"{s} alive after the final stop" for s in stray_processes(
            self.state_dir, self.task_ids, None)]
        if not self.task_ids or not self.db.exists():
            return
        rows = self.snapshot("after the final stop")
        self._judge(rows, read_tasks(self.db, self.task_ids))

    def _judge(self, rows: Mapping[NodeKey, NodeRow], tasks: Mapping[str, Any]) -> None:
        report = self.report
        report.lost = dict(self.ledger.lost)
        report.duplicates += reruns_after_finish(self.state_dir, rows)
        report.node_states = Counter(r.state for r in rows.values())
        report.interrupted = sum(1 for r in rows.values() if dict(r.outcome)["interrupted"])
        for task_id in self.task_ids:
            task = tasks[task_id]
            report.tasks[task_id] = task["state"]
            counted = sum(1 for (t, _n), r in rows.items()
                          if t == task_id and not dict(r.outcome)["interrupted"])
            if counted > task["steps"]:
                report.duplicates.append(f"task {task_id} counts {counted} steps of a budget "
                                         f"of {task['steps']}")
            if task["state"] != "finished":
                continue
            duplicates, mismatches = check_tree(task, rows)
            report.duplicates += duplicates
            report.tree_mismatches += mismatches
            for problem in (check_submission(self.state_dir, task),
                            check_best(self.state_dir, task, rows)):
                if problem is not None:
                    report.bad_submissions.append(problem)


def _say(line: str) -> None:
    print(line, flush=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m mlmaster_daemon.chaos",
        description="SIGKILL the daemon at random moments while it searches an example task, "
                    "restart it each time, and check that no finished node is lost or "
                    "duplicated and no node process is orphaned. Exit code 0 when all hold.")
    parser.add_argument("--example", default="breast_cancer", choices=sorted(EXAMPLES))
    parser.add_argument("--steps", type=int, default=16, help="steps of each task")
    parser.add_argument("--kills", type=int, default=20, help="SIGKILLs of the daemon")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill moments")
    parser.add_argument("--parallel", type=int, default=2, help="nodes run at once")
    parser.add_argument("--sandbox", default="auto", choices=("auto", "bwrap", "none"),
                        help="the daemon's [execution] sandbox")
    parser.add_argument("--moments", default=",".join(MOMENTS),
                        help=f"comma list of kill moments to use (default: all of "
                             f"{', '.join(MOMENTS)})")
    parser.add_argument("--state-dir", type=Path,
                        help="the daemon's state dir (default: a fresh one in a temp dir)")
    parser.add_argument("--finish-timeout", type=float, default=900.0,
                        help="seconds the tasks may take to finish after the last kill")
    parser.add_argument("--keep", action="store_true",
                        help="keep the temp dir (state, daemon log) even when the run passes")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    moments = tuple(m.strip() for m in args.moments.split(",") if m.strip())
    if not moments or set(moments) - set(MOMENTS) or moments == ("start-up",):
        parser.error(f"--moments: choose from {', '.join(MOMENTS)} (not start-up alone)")
    settings = ChaosSettings(
        example=args.example, steps=args.steps, kills=args.kills, seed=args.seed,
        parallel=args.parallel, sandbox=args.sandbox, state_dir=args.state_dir,
        finish_timeout_s=args.finish_timeout, keep=args.keep, moments=moments)
    # A short path: the socket lives here and Unix socket paths must fit in 107 bytes.
    workdir = Path(tempfile.mkdtemp(prefix="mlm-chaos-"))
    run = ChaosRun(settings, workdir)
    _say(f"chaos: {settings.example}, {settings.steps} steps, {settings.kills} kills "
         f"(seed {settings.seed}), parallel {settings.parallel}, sandbox {settings.sandbox}, "
         f"state dir {run.state_dir}")
    report = asyncio.run(run.run())
    for line in report.lines():
        _say(line)
    if report.passed and not settings.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        _say(f"the run's files (daemon log, competition, state) are in {workdir}")
    return 0 if report.passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
