"""How fast the API answers its list endpoints, side by side with a bare aiohttp endpoint.

The real API app (`build_app`, both middlewares) serves a real SQLite store holding 100 tasks,
one of them with a 1000-node tree, on a temporary Unix socket; the same process serves a bare
aiohttp handler returning a small fixed JSON on a second socket, the reference. A client
process (this script with --drive) runs 1, 10 and 50 concurrent clients against

  tasks        GET /v1/tasks
  nodes        GET /v1/tasks/{id}/nodes                       (the default page)
  nodes_fields GET /v1/tasks/{id}/nodes?fields=id,status,metric
  health       GET /v1/health       (the API's fixed cost: routing, the peer checks)
  bare         GET /bare                                      (the reference)

in short time-boxed batches, the endpoints interleaved round by round so the machine's noise
hits them all alike, and prints throughput, p50 and p99 latency for each, and each list
endpoint's throughput and p50 as a ratio to the bare one's. The clients run in their own
process, as the CLI does, so the daemon's peer checks see a real other process.

It runs twice: with the store idle, where the API answers the listings from its cache after
the first request (read_cache.py), and with the store committing 10 times a second, as under
busy searches, where each commit makes the next listing be built again.

Targets (issue 18): the list endpoints within 3x of the bare one; p99 under 50 ms at 50
clients on an idle machine. This prints what it measures; it asserts nothing about time.

  python benchmarks/bench_api.py            # about 100 s
  python benchmarks/bench_api.py --quick    # a few seconds: the same figures, rough
  python benchmarks/bench_api.py --json out.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from mlmaster_daemon.api.app import ApiParts, build_app
from mlmaster_daemon.bus import EventBus
from mlmaster_daemon.coders.offline.coder import OfflineCoder
from mlmaster_daemon.config import Settings, load_config
from mlmaster_daemon.execution.executor import LocalExecutor
from mlmaster_daemon.execution.slots import SlotPool
from mlmaster_daemon.models import CallRecord, NodeState, Operator, TaskState
from mlmaster_daemon.scheduler import TaskQueue
from mlmaster_daemon.scheduler.parts import SearchParts
from mlmaster_daemon.store import Store, TaskRecord
from mlmaster_daemon.store.records import NodeRecord
from mlmaster_daemon.tasks.spec import Metric, TaskSpec
from mlmaster_daemon.tokenizer import TiktokenCounter

TASKS = 100
TREE_NODES = 1000
# The big tree's task id: fixed, so the client process knows the path without asking.
BIG_TASK = "t0000000000a"
LEVELS = (1, 10, 50)
LISTS = ("tasks", "nodes", "nodes_fields")
ENDPOINTS = (*LISTS, "health", "bare")
# How often the store changes in the "busy" half of the run: a daemon whose searches commit a
# node state every 100 ms or so (many parallel nodes of short scripts).
BUSY_COMMITS_PER_S = 10.0
BARE_BODY = {"status": "ok", "version": "bench", "items": [1, 2, 3]}
CODE = "import pandas as pd\n" + "# a line of generated code, as long as a real one is\n" * 40


def targets(big_task: str) -> dict[str, tuple[str, str]]:
    """Endpoint name -> (socket: "api" or "bare", path)."""
    return {
        "tasks": ("api", "/v1/tasks"),
        "nodes": ("api", f"/v1/tasks/{big_task}/nodes"),
        "nodes_fields": ("api", f"/v1/tasks/{big_task}/nodes?fields=id,status,metric"),
        "health": ("api", "/v1/health"),
        "bare": ("bare", "/bare"),
    }


def spec_for(index: int) -> TaskSpec:
    root = Path(f"/srv/competitions/c{index}")
    return TaskSpec(name=f"competition-{index}", root=root, public_dir=root / "public",
                    private_dir=None, description="Predict the target.",
                    metric=Metric.ROC_AUC, lower_is_better=False, target="target",
                    id_column="id")


async def fill_store(store: Store) -> None:
    """100 finished tasks with a few nodes and model calls each; one holds 1000 nodes."""
    now = time.time()
    for index in range(TASKS):
        task_id = BIG_TASK if index == 0 else f"t{index + 0x100:011x}"
        await store.insert_task(TaskRecord(
            id=task_id, name=f"competition-{index}", task_dir=f"/srv/competitions/c{index}",
            spec=spec_for(index), policy="mcts", steps=20, time_limit_s=3600.0,
            node_timeout_s=600.0, state=TaskState.FINISHED, created_at=now - 10_000 + index,
            best_node_id=1, best_metric=0.9, started_at=now - 9_000 + index,
            finished_at=now - 1_000 + index, submitter_uid=os.getuid(), submitter="bench"))
        nodes = TREE_NODES if index == 0 else 3
        for node_id in range(1, nodes + 1):
            parent = None if node_id <= 5 else node_id // 2
            await store.insert_node(NodeRecord(
                task_id=task_id, id=node_id, parent_id=parent,
                operator=Operator.DRAFT if parent is None else Operator.IMPROVE,
                state=NodeState.DONE if node_id % 7 else NodeState.BUGGY,
                created_at=now, plan="Gradient boosting on the numeric columns. " * 5,
                summary="validation AUC 0.91 with 5-fold CV", code=CODE,
                metric=0.8 + (node_id % 100) / 1000, visits=node_id % 9, value=0.5,
                parent_ids=() if parent is None else (parent,), finished_at=now))
        await store.record_calls(task_id, 1, [CallRecord(
            "code", "bench-model", "http://localhost:1", 1000, 500, 0, 1.5, 0.01, 1)
            for _ in range(3)], now)


def bare_app() -> web.Application:
    async def bare(request: web.Request) -> web.Response:
        return web.json_response(BARE_BODY)

    app = web.Application()
    app.router.add_get("/bare", bare)
    return app


async def serve(root: Path, rounds: int, batch_s: float) -> dict[str, Any]:
    """Build the store, serve both sockets, run the client process with the store idle and
    then busy; the figures of each."""
    config = load_config(None, environ={}, overrides={
        "daemon.state_dir": str(root / "state"), "daemon.socket": str(root / "api.sock")})
    settings, state_dir = Settings(config), config.state_dir()
    store = await Store.open(state_dir / "mlmaster.db")
    runners: list[web.AppRunner] = []
    try:
        started = time.perf_counter()
        await fill_store(store)
        print(f"store: {TASKS} tasks, one with {TREE_NODES} nodes "
              f"(filled in {time.perf_counter() - started:.1f} s)", flush=True)
        bus = EventBus()
        queue = TaskQueue(SearchParts(
            store, bus, OfflineCoder(), LocalExecutor(settings, SlotPool([], 2, 1), state_dir),
            settings, state_dir, TiktokenCounter()))
        parts = ApiParts(store, bus, queue, settings, state_dir, time.time())
        for app, name in ((build_app(parts), "api.sock"), (bare_app(), "bare.sock")):
            runner = web.AppRunner(app, handle_signals=False)
            await runner.setup()
            await web.UnixSite(runner, str(root / name)).start()
            runners.append(runner)
        figures = {"idle": await run_clients(root, rounds, batch_s)}
        churn = asyncio.create_task(commit_steadily(store, BUSY_COMMITS_PER_S))
        try:
            figures["busy"] = await run_clients(root, rounds, batch_s)
        finally:
            churn.cancel()
        return figures
    finally:
        for runner in runners:
            await runner.cleanup()
        await store.close()


async def run_clients(root: Path, rounds: int, batch_s: float) -> dict[str, Any]:
    """Run the client process (this script with --drive); its figures."""
    drive = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--drive", str(root), "--rounds", str(rounds),
        "--batch-s", str(batch_s), stdout=asyncio.subprocess.PIPE)
    out, _ = await drive.communicate()
    if drive.returncode != 0:
        raise SystemExit(f"the client process failed (exit {drive.returncode})")
    figures: dict[str, Any] = json.loads(out)
    return figures


async def commit_steadily(store: Store, per_s: float) -> None:
    """Commit to the store `per_s` times a second, as a daemon running searches does: each
    commit outdates every answer the API keeps, so the listings are built again."""
    task_id = f"t{TASKS - 1 + 0x100:011x}"
    while True:
        await store.update_task(task_id, active_s=time.time())
        await asyncio.sleep(1 / per_s)


async def batch(sessions: dict[str, aiohttp.ClientSession], target: tuple[str, str],
                clients: int, seconds: float) -> tuple[list[float], int, float]:
    """`clients` clients asking `target` back to back for `seconds`: (latencies, errors,
    wall seconds)."""
    socket, path = target
    session = sessions[socket]
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds

    async def client() -> None:
        nonlocal errors
        while time.perf_counter() < deadline:
            sent = time.perf_counter()
            async with session.get(f"http://localhost{path}") as resp:
                await resp.read()
                if resp.status != 200:
                    errors += 1
            latencies.append(time.perf_counter() - sent)

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    return latencies, errors, time.perf_counter() - started


async def drive(root: Path, rounds: int, batch_s: float) -> dict[str, Any]:
    """Every level's figures, endpoints interleaved: each round runs each endpoint once, in an
    order rotated round by round."""
    paths = targets(BIG_TASK)
    sessions = {name: aiohttp.ClientSession(
        connector=aiohttp.UnixConnector(path=str(root / f"{name}.sock"), limit=max(LEVELS)))
        for name in ("api", "bare")}
    figures: dict[str, Any] = {}
    try:
        for name in ENDPOINTS:  # warm up: connections, caches, the first page's code paths
            await batch(sessions, paths[name], 4, min(batch_s, 0.3))
        for clients in LEVELS:
            seen: dict[str, list[float]] = {name: [] for name in ENDPOINTS}
            wall = dict.fromkeys(ENDPOINTS, 0.0)
            errors = dict.fromkeys(ENDPOINTS, 0)
            for turn in range(rounds):
                order = ENDPOINTS[turn % len(ENDPOINTS):] + ENDPOINTS[:turn % len(ENDPOINTS)]
                for name in order:
                    latencies, failed, took = await batch(sessions, paths[name], clients,
                                                          batch_s)
                    seen[name] += latencies
                    wall[name] += took
                    errors[name] += failed
            figures[str(clients)] = {name: summary(seen[name], wall[name], errors[name])
                                     for name in ENDPOINTS}
    finally:
        for session in sessions.values():
            await session.close()
    return figures


def summary(latencies: list[float], wall_s: float, errors: int) -> dict[str, Any]:
    ordered = sorted(latencies)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return {"requests": len(ordered), "errors": errors, "rps": len(ordered) / wall_s,
            "p50_ms": statistics.median(ordered) * 1000, "p99_ms": p99 * 1000}


def report(phase: str, figures: dict[str, Any]) -> list[str]:
    lines = [f"{phase}:",
             f"{'clients':>7}  {'endpoint':<13}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}"
             f"{'bare/rps':>10}{'p50/bare':>10}{'errors':>8}"]
    for clients, row in figures.items():
        bare = row["bare"]
        for name in ENDPOINTS:
            got = row[name]
            lines.append(
                f"{clients:>7}  {name:<13}{got['rps']:>9.0f}{got['p50_ms']:>9.1f}"
                f"{got['p99_ms']:>9.1f}{bare['rps'] / got['rps']:>9.1f}x"
                f"{got['p50_ms'] / bare['p50_ms']:>9.1f}x{got['errors']:>8}")
    top = figures[str(max(LEVELS))]
    worst = max(top[name]["p99_ms"] for name in LISTS)
    slowest = max(top["bare"]["rps"] / top[name]["rps"] for name in LISTS)
    lines.append(f"at {max(LEVELS)} clients: worst list p99 {worst:.1f} ms (target < 50 ms); "
                 f"slowest list endpoint {slowest:.1f}x below the bare throughput "
                 "(target within 3x)")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one short round per level")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--drive", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--rounds", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--batch-s", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    rounds = args.rounds or (1 if args.quick else 3)
    batch_s = args.batch_s or (0.25 if args.quick else 1.0)
    if args.drive is not None:
        print(json.dumps(asyncio.run(drive(args.drive, rounds, batch_s))))
        return
    # A short path: a Unix socket's must fit in 107 bytes.
    root = Path(tempfile.mkdtemp(prefix="mlm-api-"))
    try:
        figures = asyncio.run(serve(root, rounds, batch_s))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    for phase, title in (("idle", "store idle (every answer but the first from the API's "
                                   "cache)"),
                         ("busy", f"store committing {BUSY_COMMITS_PER_S:.0f} times a second "
                                  "(answers built again after each commit)")):
        for line in report(title, figures[phase]):
            print(line)
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
