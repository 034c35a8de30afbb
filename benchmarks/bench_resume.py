"""Daemon start-up with a big task to resume: spawn -> READY=1 of the real daemon process with a
10k-node MCTS task in its database, side by side with an empty database, printed as medians, a
ratio and the absolute figure against the issue's target (< 2 s to ready).

The state dir is built once with the project's own parts: the mcts policy grows the tree by
select/add/complete with `parallel + prefetch` expansions in flight, as TaskSearch does; the
offline coder writes every node's code (5-6 KB) from its parent's; a seeded landscape decides
each outcome (done, buggy with a real-looking error, or failed: the model gave no code); the
hierarchical memory records every finished node; the Store API writes it all, with one code call
(answer and reasoning) and one judge call per node. The saved search_state has the shape of
SearchState.saved(). The last three expansions stay in flight: generating, ready with code, and
running with a pid that is dead, so recovery has work. steps = the node count, so nothing new is
expanded after the start but the one that replaces the node a stop interrupted before it had
code (such a node is not a step); every run starts on a fresh copy of the database file.

Per run, from spawn: READY=1 on NOTIFY_SOCKET (sent after migrations, recovery and listen), the
first 200 from GET /v1/health, the runner's restore done (its first resumed node, in the log),
the start-up backup done (the "daemon ready" log line), the longest /v1/health round trip after
the first (how long the restore blocks the event loop), and SIGTERM -> exit (kill_grace_s = 0, so
the resumed nodes' grace does not count). Each round also times the floor every start pays: an
interpreter that imports the daemon and loads the tokenizer. Then, in-process, the recovery step
by step and the size of the saved search state; with --profile, cProfile of one real start.

Every start on the big database is also checked, and the script exits with status 1 when one is
wrong, so a broken resume cannot pass for a fast one: the API shows the task going on with its
nodes and a best at least as good as before; afterwards the database still holds every node,
the finished ones as they were, the in-flight ones with code resumed (one log line each) and
none failed as unknown to the saved state, the steps within the task's budget, and a search
state with the whole tree; and every figure printed is a finite number.

Usage: .venv/bin/python benchmarks/bench_resume.py [--nodes 10000] [--runs 5] [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import math
import os
import pstats
import random
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import aiohttp
import psutil

from mlmaster_daemon.artefacts import best_dir, copy_best, node_dir
from mlmaster_daemon.bus import EventBus
from mlmaster_daemon.clock import SystemClock
from mlmaster_daemon.coders.offline.coder import OfflineCoder
from mlmaster_daemon.coders.protocol import CodeRequest
from mlmaster_daemon.config import Config, Settings, load_config
from mlmaster_daemon.execution.executor import LocalExecutor
from mlmaster_daemon.execution.gpu import read_boot_id
from mlmaster_daemon.execution.leftovers import reconcile_processes
from mlmaster_daemon.execution.slots import SlotPool
from mlmaster_daemon.execution.workspace import Workspace
from mlmaster_daemon.models import CallRecord, NodeState, Operator, TaskState
from mlmaster_daemon.policy_config import make_policy, restore_policy
from mlmaster_daemon.scheduler import SearchParts
from mlmaster_daemon.scheduler.resume import repair_best, restore
from mlmaster_daemon.scheduler.search_state import SearchState
from mlmaster_daemon.search.hcc import HierarchicalCache, StagnationDetector
from mlmaster_daemon.search.memory import MemoryEntry
from mlmaster_daemon.search.policy import Pick
from mlmaster_daemon.search.tree import ROWS_APART
from mlmaster_daemon.store import NodeRecord, Store, TaskRecord
from mlmaster_daemon.store.backup import check_integrity, make_backup
from mlmaster_daemon.store.records import SavedSearch
from mlmaster_daemon.tasks.competition import load_task
from mlmaster_daemon.tasks.examples import build_example
from mlmaster_daemon.tasks.preview import data_preview
from mlmaster_daemon.tasks.profile import task_profile
from mlmaster_daemon.tasks.spec import TaskSpec
from mlmaster_daemon.tokenizer import TiktokenCounter

TARGET_S = 2.0
TASK_ID = "tbe0c4000001"  # the form new_task_id() gives: the API refuses others
RESUMED = "running code generated before the restart"
ERRORS = (
    "script exited with code 1: ValueError: Input X contains NaN. LogisticRegression does not "
    "accept missing values encoded as NaN natively. For supervised learning, you might want to "
    "consider sklearn.ensemble.HistGradientBoostingClassifier and Regressor which accept missing "
    "values encoded as NaNs natively.",
    "script exited with code 1: KeyError: \"['mean_area_band'] not in index\"",
    "submission invalid: 141 rows but the sample submission has 142; ids missing: [417]",
    "killed after its 600 s time limit",
    "metrics.json missing: the script must write {\"validation_metric\": <float>}",
    "script exited with code 1: lightgbm.basic.LightGBMError: Check failed: (num_data) > (0)",
)
WORDS = ("the", "model", "validation", "fold", "split", "feature", "missing", "values", "so",
         "we", "should", "impute", "encode", "categorical", "learning", "rate", "trees", "depth",
         "overfit", "score", "improve", "baseline", "because", "target", "leakage", "check")


class Landscape:
    """Seeded outcomes: a draft draws a ceiling, improves climb towards it (as bench_search)."""

    def __init__(self, seed: int):
        self.rng = random.Random(seed)
        self.latent: dict[int, tuple[float, float]] = {}

    def metric(self, node_id: int, pick: Pick) -> float | None:
        rng = self.rng
        if pick.operator is Operator.DRAFT:
            ceiling = rng.uniform(0.4, 1.0)
            q, p_bug = rng.uniform(0.2, 0.5) * ceiling, 0.3
        else:
            q, ceiling = self.latent[pick.parent_id]
            if pick.operator is Operator.IMPROVE:
                q = min(ceiling, max(0.0, q + (ceiling - q) * rng.gauss(0.2, 0.3)))
            p_bug = 0.4 if pick.operator is Operator.DEBUG else 0.2
        self.latent[node_id] = (q, ceiling)
        # roc_auc of the breast_cancer example lives between about 0.90 and 0.999.
        return None if rng.random() < p_bug else round(0.9 + 0.099 * q, 6)


@dataclass
class Grown:
    """A task's nodes, their model calls and the search state, as a real run leaves them."""

    rows: dict[int, NodeRecord]
    calls: dict[int, list[CallRecord]]
    state: dict[str, object]
    best: NodeRecord | None


async def grow(spec: TaskSpec, nodes: int, config: Config) -> Grown:
    """Expand `nodes` nodes as TaskSearch does: `parallel + 1` picks in flight, each
    finished one completed in the policy and recorded in the memory; the last ones stay in
    flight."""
    search, memory = config.search, config.memory
    policy = make_policy("mcts", search, spec.lower_is_better, nodes, search.seed)
    cache = HierarchicalCache(detector=StagnationDetector(
        memory.stagnation_window, memory.stagnation_min_gain, memory.stagnation_relative),
        l1_cap=memory.l1_cap)
    coder, landscape, rng = OfflineCoder(search.seed), Landscape(search.seed), random.Random(7)
    preview = data_preview(spec)
    reasonings = [" ".join(rng.choice(WORDS) for _ in range(500)) for _ in range(64)]
    t0 = time.time() - nodes * 6.0
    rows: dict[int, NodeRecord] = {}
    calls: dict[int, list[CallRecord]] = {}
    inflight: deque[tuple[int, Pick]] = deque()
    next_id = 1
    while True:
        # One generation ahead of the running nodes, as a task whose model answers about as
        # fast as its scripts run keeps (the prefetch depth adapts to that ratio).
        while len(inflight) < search.parallel + 1 and next_id <= nodes:
            pick = policy.select()
            if pick is None:
                raise SystemExit("the tree closed before reaching the size asked for")
            policy.add(next_id, pick)
            parent = rows.get(pick.parent_id)
            response = await coder.generate(CodeRequest(
                pick.operator, spec, next_id, preview,
                parent_code=parent.code if parent else None,
                parent_output="loaded train (427, 33), test (142, 32)" if parent else None,
                parent_error=parent.error if parent else None))
            rows[next_id] = NodeRecord(
                task_id=TASK_ID, id=next_id, parent_id=pick.parent_ids[0] if pick.parent_ids
                else None, operator=pick.operator, state=NodeState.READY,
                created_at=t0 + next_id * 6.0, plan=response.plan, summary=response.summary,
                code=response.code, parent_ids=pick.parent_ids)
            answer = f"{response.plan}\n\n```python\n{response.code}\n```"
            calls[next_id] = [CallRecord("code", "deepseek-r1", "code", 3500, 2600, 900, 41.0,
                                         0.006, 1, answer, reasonings[next_id % 64])]
            inflight.append((next_id, pick))
            next_id += 1
        if next_id > nodes:
            break
        node_id, pick = inflight.popleft()
        row = rows[node_id]
        if rng.random() < 0.03:
            # Generation failed: the node leaves the tree, its row stays as a spent step.
            policy.abort(node_id, pick)
            rows[node_id] = replace(row, state=NodeState.FAILED, code=None, plan=None,
                                    summary=None, finished_at=row.created_at + 5.0,
                                    error="NoCodeInAnswer: no code block after 3 answers")
            calls[node_id] = []
            continue
        metric = landscape.metric(node_id, pick)
        error = None if metric is not None else rng.choice(ERRORS)
        parent_metric = policy.tree[pick.parent_id].metric if pick.parent_ids else None
        policy.complete(node_id, pick, metric)
        cache.record(MemoryEntry(node_id, pick.operator, pick.parent_ids, row.summary or "",
                                 metric, metric is None, error, created=node_id),
                     parent_metric, spec.lower_is_better)
        analysis = (f"The run {'failed' if error else 'completed'}; {row.summary}. "
                    f"Validation {metric}. No leakage: the holdout is split before encoding.")
        rows[node_id] = replace(
            row, state=NodeState.BUGGY if metric is None else NodeState.DONE, metric=metric,
            error=error, analysis=analysis, exit_code=1 if metric is None else 0,
            started_at=row.created_at + 2.0, finished_at=row.created_at + 5.0,
            pid=40000 + node_id, boot_id="b00t", slot="cpu0")
        calls[node_id].append(CallRecord("feedback", "qwen", "feedback", 4100, 180, 0, 6.0,
                                         0.001, 1, json.dumps({"analysis": analysis})))
    # The three in flight: running (its process since gone), ready with code, generating.
    dead = await asyncio.create_subprocess_exec("true")
    await dead.wait()
    (running, _), _ready, (generating, _) = inflight
    rows[running] = replace(rows[running], state=NodeState.RUNNING, pid=dead.pid,
                            pid_start_time=time.time() - 60, boot_id=read_boot_id(),
                            slot="cpu0", started_at=time.time() - 60)
    rows[generating] = replace(rows[generating], state=NodeState.GENERATING, code=None,
                               plan=None, summary=None)
    calls[generating] = []
    for node_id, row in rows.items():
        if node_id in policy.tree:
            node = policy.tree[node_id]
            rows[node_id] = replace(row, visits=node.visits, value=node.value)
    # The shape of SearchState.saved().
    state: dict[str, object] = {"policy": policy.to_state(),
                                "inflight": {str(k): p.to_state() for k, p in inflight},
                                "memory": cache.to_state()}
    good = [n for n in rows.values() if n.metric is not None]
    best = max(good, key=lambda n: n.metric or 0.0) if good else None
    return Grown(rows, calls, state, best)


def saved_search(state: dict[str, Any]) -> SavedSearch:
    """A whole saved state as the store keeps it: the head, and the tree's nodes as rows."""
    head = json.loads(json.dumps(state))
    tree = head["policy"]["tree"]
    nodes = tree.pop("nodes")
    tree["rows"] = ROWS_APART
    return SavedSearch(head, {raw[0]: raw for raw in nodes})


async def build_state(state_dir: Path, spec: TaskSpec, grown: Grown) -> None:
    """The daemon's state dir holding the grown task: the database written through the Store
    API, best/ as the runner leaves it, and the workspaces of the best and in-flight nodes
    (start-up reads no others)."""
    store = await Store.open(state_dir / "mlmaster.db")
    # Building only: the daemon itself commits with synchronous=FULL.
    await store._writer.execute("PRAGMA synchronous = OFF")
    started = min(n.created_at for n in grown.rows.values())
    await store.insert_task(TaskRecord(
        id=TASK_ID, name=spec.name, task_dir=str(spec.root), spec=spec, policy="mcts",
        steps=len(grown.rows), time_limit_s=30 * 86400.0, node_timeout_s=600.0,
        state=TaskState.RUNNING, created_at=started, started_at=started))
    for node_id, row in grown.rows.items():
        await store.insert_node(row)
        await store.record_calls(TASK_ID, node_id, grown.calls[node_id], row.created_at)
    last = max(n.id for n in grown.rows.values() if n.state.terminal)
    await store.finish_node(TASK_ID, last, {}, [], saved_search(grown.state))
    for row in grown.rows.values():
        if row.code is not None and (row is grown.best or not row.state.terminal):
            ws = Workspace.create(node_dir(state_dir, TASK_ID, row.id), spec.public_dir,
                                  row.code)
            ws.stdout.write_text("loaded train (427, 33), test (142, 32)\n")
    best = grown.best
    if best is not None and best.metric is not None:
        ws = Workspace(node_dir(state_dir, TASK_ID, best.id))
        shutil.copyfile(spec.public_dir / spec.sample_submission_file, ws.submission)
        ws.metrics.write_text(json.dumps({"validation_metric": best.metric}))
        copy_best(ws, best_dir(state_dir, TASK_ID), best.id, best.metric, best.code or "")
        await store.update_task(TASK_ID, best_node_id=best.id, best_metric=best.metric)
    await store.close()


@dataclass(frozen=True)
class StartRun:
    """Seconds from spawn (CPU: the daemon's, threads and children included, at that moment);
    `resumed` counts the nodes the runner said it resumed, and `task` is GET /v1/tasks/<id>
    once the daemon was up (None when it has no such task)."""

    ready_s: float
    ready_cpu_s: float
    health_s: float
    restored_s: float | None
    restored_cpu_s: float | None
    backed_up_s: float
    worst_health_ms: float
    stop_s: float
    resumed: int = 0
    task: dict[str, Any] | None = field(default=None, compare=False)

    def figures(self) -> dict[str, float]:
        """Every timing this run measured (those it did not are left out)."""
        values = {"ready_s": self.ready_s, "ready_cpu_s": self.ready_cpu_s,
                  "health_s": self.health_s, "restored_s": self.restored_s,
                  "restored_cpu_s": self.restored_cpu_s, "backed_up_s": self.backed_up_s,
                  "worst_health_ms": self.worst_health_ms, "stop_s": self.stop_s}
        return {k: v for k, v in values.items() if v is not None}


@dataclass(frozen=True)
class Saved:
    """What the big task held before the restart, read from its database."""

    nodes: dict[int, tuple[str, float | None]]  # id -> (state, metric)
    steps: int
    best_node_id: int | None
    best_metric: float | None
    tree_nodes: int

    @property
    def with_code_in_flight(self) -> list[int]:
        """The nodes a start resumes: those that had code and had not finished."""
        return [i for i, (state, _) in self.nodes.items()
                if state in (NodeState.READY, NodeState.RUNNING, NodeState.EVALUATING)]

    @property
    def generating(self) -> list[int]:
        return [i for i, (state, _) in self.nodes.items()
                if state in (NodeState.PENDING, NodeState.GENERATING)]


def read_saved(db: Path) -> Saved:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        rows = conn.execute("SELECT id, state, metric FROM nodes WHERE task_id = ?",
                            (TASK_ID,)).fetchall()
        steps, best_id, best_metric = conn.execute(
            "SELECT steps, best_node_id, best_metric FROM tasks WHERE id = ?",
            (TASK_ID,)).fetchone()
        (tree,) = conn.execute("SELECT COUNT(*) FROM search_nodes WHERE task_id = ?",
                               (TASK_ID,)).fetchone()
    return Saved({i: (state, metric) for i, state, metric in rows}, steps, best_id,
                 best_metric, tree)


def resume_problems(before: Saved, run: StartRun, db: Path) -> list[str]:
    """What is wrong with a start on the big task, judged by the API while it was up and the
    database it left; [] when the resume did what it should."""
    problems: list[str] = []
    view = run.task
    if view is None:
        return ["GET /v1/tasks/<id> did not answer with the task"]
    if view["state"] not in (TaskState.RUNNING, TaskState.FINISHED):
        problems.append(f"the task is {view['state']} after the restart ({view['error']})")
    if view["nodes_total"] < len(before.nodes):
        problems.append(f"the API shows {view['nodes_total']} nodes, the task had "
                        f"{len(before.nodes)}")
    best = view["best"]
    if before.best_metric is not None:
        sign = -1.0 if view["lower_is_better"] else 1.0
        if best is None or sign * (best["metric"] - before.best_metric) < 0:
            problems.append(f"the best after the restart is {best}, before it was node "
                            f"{before.best_node_id} at {before.best_metric}")
    want = len(before.with_code_in_flight)
    if run.resumed != want:
        problems.append(f"{run.resumed} nodes resumed ({RESUMED!r}), {want} had code in flight")
    after = read_saved(db)
    lost = sorted(before.nodes.keys() - after.nodes.keys())
    if lost:
        problems.append(f"nodes lost by the restart: {lost}")
    finished = {i: row for i, row in before.nodes.items() if NodeState(row[0]).terminal}
    changed = [i for i, row in finished.items() if after.nodes.get(i, row) != row]
    if changed:
        problems.append(f"finished nodes rewritten by the restart: {changed}")
    still = [i for i in before.generating if after.nodes.get(i, ("",))[0] != NodeState.FAILED]
    if still:
        problems.append(f"nodes interrupted while generating did not fail: {still}")
    with contextlib.closing(sqlite3.connect(db)) as conn:
        unknown = conn.execute("SELECT id FROM nodes WHERE task_id = ? AND error = ?",
                               (TASK_ID, "interrupted before it could run")).fetchall()
        (steps_used,) = conn.execute("SELECT COUNT(*) FROM nodes WHERE task_id = ? AND "
                                     "interrupted = 0", (TASK_ID,)).fetchone()
    if unknown:
        problems.append("ready nodes failed as unknown to the saved search state: "
                        f"{[i for (i,) in unknown]}")
    if steps_used > before.steps:
        problems.append(f"{steps_used} steps used of the task's {before.steps}")
    if after.tree_nodes < before.tree_nodes:
        problems.append(f"the saved search tree has {after.tree_nodes} nodes, it had "
                        f"{before.tree_nodes}")
    return problems


def figure_problems(runs: list[StartRun], floors: list[Floor]) -> list[str]:
    """Every figure the table prints must be a number: a NaN would hide a failed measure."""
    problems = [f"{name} = {value} in a start" for run in runs
                for name, value in run.figures().items() if not math.isfinite(value)]
    problems += [f"floor {value}" for f in floors
                 for value in (f.total_s, f.imports_s, f.tokenizer_s) if not math.isfinite(value)]
    return problems


def fresh_state(run_dir: Path, template: Path) -> Path:
    """A copy of the state dir `template` in `run_dir`, and a config for a daemon on it."""
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    shutil.copytree(template, run_dir / "state", symlinks=True)
    config = run_dir / "c.toml"
    # No grace for the resumed nodes at the stop: SIGTERM -> exit is the daemon's own.
    config.write_text(f'[daemon]\nstate_dir = "{run_dir / "state"}"\n'
                      f'socket = "{run_dir / "d.sock"}"\nstop_grace_s = 0\n'
                      "[execution]\nkill_grace_s = 0\n")
    return config


async def start_daemon(run_dir: Path, template: Path, expect_resume: bool,
                       profile_to: Path | None = None) -> StartRun:
    config = fresh_state(run_dir, template)
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(run_dir / "n.sock"))
    notify.setblocking(False)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLMASTER_")}
    env["NOTIFY_SOCKET"] = str(run_dir / "n.sock")
    profiler = ["-m", "cProfile", "-o", str(profile_to)] if profile_to else []
    marks: dict[str, float] = {}
    log: list[str] = []
    resumed = 0
    view: dict[str, Any] | None = None
    started = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, *profiler, "-m", "mlmaster_daemon", "daemon", "--config", str(config),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=env)

    def done() -> bool:
        return {"ready", "health", "backed_up"} <= marks.keys() and (
            "restored" in marks or not expect_resume)

    async def read_notify() -> None:
        loop = asyncio.get_running_loop()
        while "ready" not in marks:
            if b"READY=1" in (await loop.sock_recv(notify, 4096)).split(b"\n"):
                marks["ready"] = time.perf_counter() - started
                marks["ready_cpu"] = cpu_used(proc.pid)

    async def read_log() -> None:
        nonlocal resumed
        assert proc.stdout is not None
        async for raw in proc.stdout:
            log.append(raw.decode(errors="replace"))
            with contextlib.suppress(ValueError):
                event = json.loads(raw).get("event")
                resumed += event == RESUMED
                key = {"daemon ready": "backed_up", RESUMED: "restored"}.get(event, "")
                if key and key not in marks:
                    marks[key] = time.perf_counter() - started
                    marks[f"{key}_cpu"] = cpu_used(proc.pid)

    worst = 0.0

    async def poll_health() -> None:
        nonlocal worst, view
        connector = aiohttp.UnixConnector(path=str(run_dir / "d.sock"))
        async with aiohttp.ClientSession(connector=connector) as session:
            while not done():
                asked = time.perf_counter()
                with contextlib.suppress(aiohttp.ClientConnectionError):
                    async with session.get("http://daemon/v1/health") as resp:
                        if resp.status == 200:
                            marks.setdefault("health", time.perf_counter() - started)
                            worst = max(worst, time.perf_counter() - asked)
                await asyncio.sleep(0.005)
            # Up: what the API says of the task, for the resume check (not timed).
            async with session.get(f"http://daemon/v1/tasks/{TASK_ID}") as resp:
                if resp.status == 200:
                    view = await resp.json()

    reader = asyncio.create_task(read_log())
    side = [asyncio.create_task(read_notify()), reader]
    try:
        poller = asyncio.create_task(poll_health())
        side.append(poller)
        await asyncio.wait([poller, asyncio.create_task(proc.wait())], timeout=180,
                           return_when=asyncio.FIRST_COMPLETED)
        if not poller.done():
            raise SystemExit(f"the daemon {'exited' if proc.returncode is not None else 'hung'}"
                             " before it was up:\n" + "".join(log[-20:]))
        poller.result()
        stopping = time.perf_counter()
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(60):
            await proc.wait()
        stop_s = time.perf_counter() - stopping
        async with asyncio.timeout(60):
            await reader  # to the end of the log: every resumed node is counted
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        for task in side:
            task.cancel()
        notify.close()
    return StartRun(marks["ready"], marks["ready_cpu"], marks["health"], marks.get("restored"),
                    marks.get("restored_cpu"), marks["backed_up"], worst * 1000, stop_s,
                    resumed, view)


def cpu_used(pid: int) -> float:
    """CPU seconds a process has used so far: every thread, and the children it reaped."""
    with contextlib.suppress(psutil.Error):
        times = psutil.Process(pid).cpu_times()
        return times.user + times.system + times.children_user + times.children_system
    return float("nan")


FLOOR = """import time
started = time.perf_counter()
import mlmaster_daemon.cli, mlmaster_daemon.daemon
imported = time.perf_counter()
from mlmaster_daemon.tokenizer import TiktokenCounter
TiktokenCounter().load()
print(imported - started, time.perf_counter() - imported)
"""


@dataclass(frozen=True)
class Floor:
    """What every start pays before it reads the database."""

    total_s: float
    imports_s: float
    tokenizer_s: float


def floor() -> Floor:
    """An interpreter that imports the daemon, loads the tokenizer (as Daemon.start does) and
    exits: spawn -> exit, and the two parts as it timed them."""
    started = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", FLOOR], check=True, capture_output=True,
                         text=True).stdout
    total = time.perf_counter() - started
    imports, tokenizer = (float(x) for x in out.split())
    return Floor(total, imports, tokenizer)


async def recovery_pieces(run_dir: Path, template: Path, config: Config, collect: bool,
                          before: Saved) -> tuple[dict[str, float], list[str]]:
    """The start-up's recovery steps one by one, in the order Daemon.start and TaskSearch.run
    take them, each timed on its own (seconds); `collect` False runs them with the cyclic
    garbage collector off, to show its share. Also what is wrong with the restored search
    (untimed): [] when it continues the saved tree with the in-flight nodes that had code."""
    fresh_state(run_dir, template)
    gc.collect()
    if not collect:
        gc.disable()
    db = run_dir / "state" / "mlmaster.db"
    took: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        took[name] = now - clock
        clock = now

    # The daemon command runs this on a thread of its own while it imports the daemon.
    await asyncio.to_thread(check_integrity, db)
    lap("integrity check (overlaps the imports)")
    store = await Store.open(db)
    lap("Store.open + migrate")
    await reconcile_processes(store)
    await store.interrupt_unfinished("interrupted", time.time())
    lap("reconcile processes + interrupt_unfinished")
    task = await store.get_task(TASK_ID)
    nodes = await store.list_nodes(TASK_ID)
    lap(f"list_nodes ({len(nodes)} rows, code included)")
    saved = await store.search_state(TASK_ID)
    assert saved is not None
    lap("search_state read + json.loads")
    restore_policy(task.policy, config.search, saved["policy"])
    lap("restore_policy (mcts from_state)")
    HierarchicalCache.from_state(saved["memory"])
    lap("HierarchicalCache.from_state")
    settings, state_dir = Settings(config), run_dir / "state"
    parts = SearchParts(store, EventBus(), OfflineCoder(), LocalExecutor(
        settings, SlotPool([], 2, 1), state_dir), settings, state_dir,
        TiktokenCounter(config.memory.encoding), None, SystemClock())
    search = SearchState(task, parts)
    clock = time.perf_counter()
    await restore(search, nodes)
    lap("scheduler restore (the three above + memory items)")
    await repair_best(search, nodes)
    lap("scheduler repair_best (best/ is up to date)")
    await asyncio.to_thread(data_preview, task.spec)
    await asyncio.to_thread(task_profile, task.spec)
    lap("data preview + task profile")
    await store.close()
    clock = time.perf_counter()
    await asyncio.to_thread(make_backup, db)
    lap("make_backup (SQLite online backup)")
    gc.enable()
    problems: list[str] = []
    resumed, want = sorted(search.open_picks), sorted(before.with_code_in_flight)
    if resumed != want:
        problems.append(f"restore resumed nodes {resumed}, those with code in flight were {want}")
    # The saved tree, less the places of the nodes interrupted before they had code.
    tree = len(search.policy.to_state()["tree"]["nodes"])
    if tree != before.tree_nodes - len(before.generating):
        problems.append(f"the restored tree has {tree} nodes, the saved one {before.tree_nodes} "
                        f"with {len(before.generating)} given up")
    return took, problems


def print_profile(path: Path, limit: int) -> None:
    stats = pstats.Stats(str(path))
    stats.sort_stats("cumulative").print_stats("mlmaster_daemon", limit)
    stats.sort_stats("tottime").print_stats(limit // 2)


def _median(values: list[float]) -> float:
    return statistics.median(values)


def _cell(values: list[float], unit: str) -> str:
    if not values:
        return f"{'-':>7}{'':<21}"
    text = f"{_median(values):7.3f} {unit} ({min(values):.3f}-{max(values):.3f})"
    return f"{text:<28}"


def print_starts(empty: list[StartRun], big: list[StartRun], floors: list[Floor],
                 nodes: int) -> None:
    print(f"\nspawn -> ..., median (min-max) of {len(big)} rounds, interleaved; the last column "
          "is the median of each round's difference")
    print(f"  {'':<26}{'empty db':<28}{f'{nodes}-node db':<28}{'ratio':<8}difference")
    rows: list[tuple[str, str, Callable[[StartRun], float | None]]] = [
        ("READY=1 (sd_notify)", "s", lambda r: r.ready_s),
        ("  CPU used by then", "s", lambda r: r.ready_cpu_s),
        ("first 200 /v1/health", "s", lambda r: r.health_s),
        ("runner restored (log)", "s", lambda r: r.restored_s),
        ("  CPU used by then", "s", lambda r: r.restored_cpu_s),
        ("backup done (log)", "s", lambda r: r.backed_up_s),
        ("worst /v1/health trip", "ms", lambda r: r.worst_health_ms),
        ("SIGTERM -> exit", "s", lambda r: r.stop_s),
    ]
    for name, unit, get in rows:
        a = [v for v in map(get, empty) if v is not None]
        b = [v for v in map(get, big) if v is not None]
        line = f"  {name:<26}{_cell(a, unit)}{_cell(b, unit)}"
        if a and b:
            paired = [y - x for x, y in zip(a, b, strict=True)]
            line += f"{_median(b) / _median(a):5.2f}x  {_median(paired):+.3f} {unit}"
        print(line)
    print(f"  {'floor: spawn -> exit':<26}{_cell([f.total_s for f in floors], 's')}"
          "(an interpreter that imports the daemon and loads the tokenizer)")
    print(f"  {'  of which imports':<26}{_cell([f.imports_s for f in floors], 's')}")
    print(f"  {'  of which tokenizer':<26}{_cell([f.tokenizer_s for f in floors], 's')}")
    ready = _median([r.ready_s for r in big])
    verdict = "within" if ready < TARGET_S else "OVER"
    print(f"{nodes}-node db: start -> READY=1 {ready:.3f} s, {verdict} the {TARGET_S:.0f} s "
          f"target ({ready / TARGET_S:.0%} of it); load average now "
          + " ".join(f"{x:.2f}" for x in os.getloadavg()) + f" on {os.cpu_count()} CPUs")


def state_sizes(db: Path) -> None:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        (raw,) = conn.execute("SELECT search_state FROM tasks").fetchone()
        rows, row_bytes = conn.execute(
            "SELECT COUNT(*), COALESCE(SUM(length(row)), 0) FROM search_nodes").fetchone()
        counts = conn.execute("SELECT state, COUNT(*) FROM nodes GROUP BY state").fetchall()
        code = conn.execute("SELECT SUM(length(code)) FROM nodes").fetchone()[0]
    saved = json.loads(raw)
    parts = {k: len(json.dumps(v)) for k, v in saved.items()}
    print(f"database {db.stat().st_size / 2**20:.1f} MiB (code {code / 2**20:.1f} MiB); nodes: "
          + ", ".join(f"{s} {n}" for s, n in counts))
    print(f"saved search state: head {len(raw) / 2**10:.0f} KiB of JSON, rewritten by every "
          "commit ("
          + ", ".join(f"{k} {v / 2**10:.0f} KiB" for k, v in parts.items())
          + f"; {len(saved['memory']['l2'])} L2 phase summaries), and {rows} tree rows "
          f"({row_bytes / 2**20:.2f} MiB), of which a commit rewrites those that changed")


async def main(nodes: int, runs: int, profile: bool) -> None:
    config = load_config(None, environ={})
    with tempfile.TemporaryDirectory(prefix="mlmb-") as tmp:
        root = Path(tmp)
        example = build_example("breast_cancer", root / "breast_cancer")
        empty_dir, big_dir, run_dir = root / "empty", root / "big", root / "run"
        empty_dir.mkdir()
        await (await Store.open(empty_dir / "mlmaster.db")).close()
        big_dir.mkdir()
        building = time.perf_counter()
        spec = load_task(example)
        grown = await grow(spec, nodes, config)
        await build_state(big_dir, spec, grown)
        print(f"built {len(grown.rows)} nodes and "
              f"{sum(len(c) for c in grown.calls.values())} model calls in "
              f"{time.perf_counter() - building:.1f} s; load average "
              + " ".join(f"{x:.2f}" for x in os.getloadavg()) + f" on {os.cpu_count()} CPUs")
        del grown  # Its objects would weigh on the garbage collector in the timings below.
        state_sizes(big_dir / "mlmaster.db")
        before = read_saved(big_dir / "mlmaster.db")
        problems: list[str] = []
        empty: list[StartRun] = []
        big: list[StartRun] = []
        floors: list[Floor] = []
        floor()  # Warm the page cache: a restart finds the libraries in memory.
        for round_ in range(runs):
            # Interleaved, the order alternating, so machine noise hits both alike.
            floors.append(await asyncio.to_thread(floor))
            for state_dir in (big_dir, empty_dir) if round_ % 2 else (empty_dir, big_dir):
                started = await start_daemon(run_dir, state_dir, state_dir is big_dir)
                (big if state_dir is big_dir else empty).append(started)
                if state_dir is big_dir:
                    problems += [f"round {round_ + 1}: {p}" for p in resume_problems(
                        before, started, run_dir / "state" / "mlmaster.db")]
        print_starts(empty, big, floors, nodes)
        problems += figure_problems(empty + big, floors)
        on: list[dict[str, float]] = []
        off: list[dict[str, float]] = []
        for _ in range(runs):
            for collect, pieces in ((True, on), (False, off)):
                took, wrong = await recovery_pieces(run_dir, big_dir, config, collect, before)
                pieces.append(took)
                problems += [f"in-process restore: {p}" for p in wrong]
        print(f"\nrecovery step by step, in-process on the {nodes}-node db, median (min) of "
              f"{runs}, interleaved:")
        print(f"  {'':<54}{'gc on (as the daemon)':<24}gc off")
        for name in on[0]:
            a, b = [p[name] for p in on], [p[name] for p in off]
            print(f"  {name:<54}{_median(a):7.3f} s ({min(a):.3f})      "
                  f"{_median(b):7.3f} s ({min(b):.3f})")
        if profile:
            prof = root / "start.prof"
            await start_daemon(run_dir, big_dir, True, profile_to=prof)
            print(f"\ncProfile of one daemon start on the {nodes}-node db, main thread "
                  "only (threads show as waits):")
            print_profile(prof, 25)
        if problems:
            print("\nresume check FAILED:\n  " + "\n  ".join(problems), file=sys.stderr)
            raise SystemExit(1)
        print(f"\nresume checks passed in {runs} starts: every node kept, "
              f"{len(before.with_code_in_flight)} resumed, best at least {before.best_metric}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=10000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--profile", action="store_true",
                        help="also profile one start (cProfile) and print the hot spots")
    args = parser.parse_args()
    asyncio.run(main(args.nodes, args.runs, args.profile))
