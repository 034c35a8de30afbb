"""One chaos run: start the daemon, submit tasks, kill it at the chosen moments, restart it
each time, then stop it and judge what the database and the state dir show."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import psutil

from mlmaster_daemon.api.client import Client
from mlmaster_daemon.models import NodeState, TaskState
from mlmaster_daemon.tasks.examples import build_example
from tools.chaos.checks import (
    Ledger,
    check_best,
    check_submission,
    check_tree,
    reruns_after_finish,
)
from tools.chaos.daemon import DaemonProcess
from tools.chaos.database import (
    NodeKey,
    NodeRow,
    connect,
    read_nodes,
    read_states,
    read_tasks,
    task_ended,
)
from tools.chaos.processes import process_cwd, stray_processes
from tools.chaos.report import Report
from tools.chaos.settings import POLL_S, TARGET_WAIT_S, ChaosSettings

# The node states each moment that waits for the database kills at (`finished`: a node newly
# done or buggy). `spawning` watches the daemon's children instead.
MOMENT_STATES: dict[str, frozenset[NodeState]] = {
    "generating": frozenset({NodeState.PENDING, NodeState.GENERATING}),
    "running": frozenset({NodeState.RUNNING}),
    "evaluating": frozenset({NodeState.EVALUATING}),
    "finished": frozenset({NodeState.DONE, NodeState.BUGGY}),
}


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
            say(f"{'':>8}ready again in {ready_s:.1f} s")

    def _kill(self, number: int, moment: str, waited: float) -> None:
        rows = self.snapshot(f"before kill {number}")
        self.daemon.kill()
        self.report.moments[moment] += 1
        busy = Counter(r.state for r in rows.values() if not r.finished)
        busy_text = ", ".join(f"{n} {s}" for s, n in sorted(busy.items())) or "none busy"
        finished = len(rows) - sum(busy.values())
        say(f"kill {number:>2}/{self.settings.kills}  {moment:<11} at {waited:5.2f} s  "
             f"nodes: {finished} finished, {busy_text}")

    async def _ready(self, client: Client, when: str) -> float:
        """Wait until the daemon answers; then no process of an earlier daemon may be left."""
        self.last_ready_s = await self.daemon.wait_ready(client)
        rows = self.snapshot(f"after the {when}")
        # On a Ray cluster an unfinished node's script outlives the daemon, to be re-attached.
        live = [f"tasks/{task}/nodes/{node}" for (task, node), row in rows.items()
                if not row.finished] if self.settings.ray_address is not None else []
        self.report.orphans += [f"{s} alive after the {when}" for s in stray_processes(
            self.state_dir, self.task_ids, self.daemon.pid, live)]
        return self.last_ready_s

    async def _submit(self, client: Client) -> None:
        task = await client.submit({"task_dir": str(self.competition),
                                    "steps": self.settings.steps})
        self.task_ids.append(task["id"])
        say(f"submitted task {task['id']}: {self.settings.example}, "
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
        targets = MOMENT_STATES.get(moment, frozenset())
        extra = self.rng.uniform(0.0, 1.5) if moment == "running" else 0.0
        conn = connect(self.db)
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
            # On a Ray cluster the scripts are not the daemon's children: any process counts.
            children = list(psutil.process_iter()) if self.settings.ray_address is not None \
                else psutil.Process(pid).children()
        except psutil.Error:
            return False
        for child in children:
            parts = Path(process_cwd(child)).parts[len(nodes.parts):]
            if len(parts) == 3 and parts[1] == "nodes" and parts[2].isdigit() and \
                    states.get((parts[0], int(parts[2]))) == NodeState.READY:
                return True
        return False

    async def _keep_busy(self, client: Client) -> bool:
        """Submit another task when all are done, so the kills land in work; True if it did."""
        tasks = read_tasks(self.db, self.task_ids)
        if all(task_ended(t) for t in tasks.values()):
            await self._submit(client)
            return True
        return False

    async def _finish(self, client: Client) -> None:
        deadline = time.monotonic() + self.settings.finish_timeout_s
        while True:
            tasks = read_tasks(self.db, self.task_ids)
            if all(task_ended(t) for t in tasks.values()):
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
            if task["state"] != TaskState.FINISHED:
                continue
            duplicates, mismatches = check_tree(task, rows)
            report.duplicates += duplicates
            report.tree_mismatches += mismatches
            for problem in (check_submission(self.state_dir, task),
                            check_best(self.state_dir, task, rows)):
                if problem is not None:
                    report.bad_submissions.append(problem)


def say(line: str) -> None:
    print(line, flush=True)
