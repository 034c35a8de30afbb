"""A database that lost its write-ahead log (deleted, or cut short) after a crash is refused at
start, before anything writes, by what the task folders prove was committed; with
--accept-lost-work the daemon starts, and what the database does not know is moved aside."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import signal
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from conftest import start_refused, wait_terminal
from openai_server import FakeOpenAI

from mlmaster_daemon.api.client import Client
from mlmaster_daemon.config import Config
from mlmaster_daemon.daemon import Daemon
from mlmaster_daemon.errors import DaemonUnreachable
from mlmaster_daemon.models import NodeState, Operator, TaskState, new_task_id
from mlmaster_daemon.store import NodeRecord, Store, TaskRecord
from mlmaster_daemon.store.backup import make_backup
from mlmaster_daemon.store.evidence import find_gaps, read_disk
from mlmaster_daemon.store.lost import LostWork
from mlmaster_daemon.tasks.competition import load_task


class StateWriter:
    """Writes a state dir as the scheduler does: each folder or proof only after its commit."""

    def __init__(self, state: Path, store: Store, breast_cancer: Path):
        self.state, self.store, self.task_dir = state, store, breast_cancer

    @classmethod
    async def open(cls, state: Path, breast_cancer: Path) -> StateWriter:
        return cls(state, await Store.open(state / "mlmaster.db"), breast_cancer)

    async def task(self, steps: int) -> str:
        task_id = new_task_id()
        await self.store.insert_task(TaskRecord(
            id=task_id, name="t", task_dir=str(self.task_dir), spec=load_task(self.task_dir),
            policy="greedy", steps=steps, time_limit_s=3600, node_timeout_s=60,
            state=TaskState.RUNNING, created_at=1.0, started_at=1.0))
        return task_id

    async def node(self, task_id: str, node_id: int) -> None:
        """A node that got its code and started running."""
        await self.store.insert_node(NodeRecord(task_id, node_id, None, Operator.DRAFT,
                                                NodeState.PENDING, created_at=1.0))
        folder = self.state / "tasks" / task_id / "nodes" / str(node_id)
        (folder / "submission").mkdir(parents=True)
        await self.store.update_node(task_id, node_id, state=NodeState.RUNNING,
                                     code="print('hi')\n")
        (folder / "submission" / "submission.csv").write_text(f"id,target\n1,{node_id}\n")

    async def finish(self, task_id: str, node_id: int, metric: float, finished: int,
                     best: bool) -> None:
        """The node's outcome, then committed.json and (if it improves) best/."""
        await self.store.finish_node(task_id, node_id, {"state": NodeState.DONE,
                                                        "metric": metric,
                                                        "finished_at": 2.0}, [])
        root = self.state / "tasks" / task_id
        (root / "committed.json").write_text(json.dumps(
            {"node_id": node_id, "state": "done", "metric": metric, "finished": finished}))
        if best:
            (root / "best").mkdir(exist_ok=True)
            (root / "best" / "node.json").write_text(
                json.dumps({"node_id": node_id, "metric": metric}))

    def wal_size(self) -> int:
        return (self.state / "mlmaster.db-wal").stat().st_size

    def crash_copy(self, to: Path, wal: Callable[[bytes], bytes | None]) -> None:
        """The files as a kill -9 leaves them now (every commit is synced to the -wal), with
        the -wal as `wal` makes it (None: lost)."""
        shutil.copytree(self.state, to)
        kept = wal((to / "mlmaster.db-wal").read_bytes())
        (to / "mlmaster.db-wal").unlink()
        if kept is not None:
            (to / "mlmaster.db-wal").write_bytes(kept)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


async def _old_database_and_a_lost_wal(short_dir: Path, breast_cancer: Path,
                                       state: Path) -> tuple[str, str, Path]:
    """Task one with node 1 checkpointed into the database file; then, only in the -wal, its
    node 2 (better) and a whole second task; a full backup is taken; the -wal is lost."""
    live = short_dir / "live"
    run = await StateWriter.open(live, breast_cancer)
    first = await run.task(steps=2)
    await run.node(first, 1)
    await run.finish(first, 1, 0.7, finished=1, best=True)
    await run.store.close()  # a clean stop: the database file holds all of this
    run = await StateWriter.open(live, breast_cancer)
    try:
        await run.node(first, 2)
        await run.finish(first, 2, 0.9, finished=2, best=True)
        second = await run.task(steps=1)
        await run.node(second, 1)
        backup = make_backup(live / "mlmaster.db")
        run.crash_copy(state, lambda _wal: None)
    finally:
        await run.store.close()
    (state / "backups").mkdir(exist_ok=True)
    shutil.copy(backup, state / "backups" / backup.name)
    return first, second, state / "backups" / backup.name


async def test_a_lost_wal_over_an_older_database_is_refused_naming_the_backup_to_restore(
    config: Config, short_dir: Path, breast_cancer: Path,
) -> None:
    state = config.state_dir()
    first, _second, backup = await _old_database_and_a_lost_wal(short_dir, breast_cancer,
                                                                state)
    db = state / "mlmaster.db"
    before = _digest(db)
    refused = await start_refused(config, LostWork)
    message = refused.message
    assert message.startswith(f"database {db} has lost committed work: ")
    assert "1 task, 1 node and 2 node outcomes" in message
    assert (f"node 2 of task {first} finished done with metric 0.9 "
            f"(tasks/{first}/committed.json); the database has it not at all") in message
    assert f"`cp {backup} {db}`" in message
    assert "--accept-lost-work" in message and "\n" not in message
    # Refused before anything wrote: the database, the backups and the socket are as they were.
    assert _digest(db) == before
    assert sorted((state / "backups").iterdir()) == [backup]
    assert not config.socket_path().exists() and not (state / "lost").exists()


async def test_the_backup_the_message_names_holds_what_the_folders_prove(
    config: Config, short_dir: Path, breast_cancer: Path,
) -> None:
    state = config.state_dir()
    await _old_database_and_a_lost_wal(short_dir, breast_cancer, state)
    refused = await start_refused(config, LostWork)
    backup = Path(refused.message.split("`cp ")[1].split(" ")[0])
    for suffix in ("", "-wal", "-shm"):
        (state / f"mlmaster.db{suffix}").unlink(missing_ok=True)
    shutil.copy(backup, state / "mlmaster.db")
    assert find_gaps(read_disk(state), state / "mlmaster.db") == []
    daemon = Daemon(config)
    await daemon.start()
    await daemon.stop()


async def _finished_nodes_and_a_cut_wal(short_dir: Path, breast_cancer: Path,
                                        state: Path) -> str:
    """Nodes 1-3 of a task in the database file, node 1 done (0.7); then, in the -wal, node 2
    done (0.8), then node 3 done (0.9) and best/ holding it; the -wal is cut inside node 3's
    commit, which SQLite then silently drops."""
    live = short_dir / "live"
    run = await StateWriter.open(live, breast_cancer)
    task = await run.task(steps=3)
    for node_id in (1, 2, 3):
        await run.node(task, node_id)
    await run.finish(task, 1, 0.7, finished=1, best=True)
    await run.store.close()
    run = await StateWriter.open(live, breast_cancer)
    try:
        await run.finish(task, 2, 0.8, finished=2, best=True)
        cut = run.wal_size() + 1000
        await run.finish(task, 3, 0.9, finished=3, best=True)
        assert run.wal_size() > cut
        run.crash_copy(state, lambda wal: wal[:cut])
    finally:
        await run.store.close()
    return task


async def test_a_cut_wal_that_rolled_back_a_finished_node_is_refused(
    config: Config, short_dir: Path, breast_cancer: Path,
) -> None:
    task = await _finished_nodes_and_a_cut_wal(short_dir, breast_cancer, config.state_dir())
    refused = await start_refused(config, LostWork)
    message = refused.message
    assert "2 node outcomes" in message
    assert (f"node 3 of task {task} finished done with metric 0.9 (tasks/{task}/committed.json);"
            " the database has it running, metric None") in message
    # best/ still holds node 3: the start that was refused did not rebuild it from node 2.
    best = json.loads((config.state_dir() / "tasks" / task / "best" / "node.json").read_text())
    assert best == {"node_id": 3, "metric": 0.9}


async def test_accepting_lost_work_moves_it_aside_and_later_starts_pass(
    config: Config, short_dir: Path, breast_cancer: Path,
) -> None:
    state = config.state_dir()
    task = await _finished_nodes_and_a_cut_wal(short_dir, breast_cancer, state)
    root = state / "tasks" / task
    committed = (root / "committed.json").read_text()
    daemon = Daemon(config, accept_lost_work=True)
    await daemon.start()
    try:
        (lost,) = (state / "lost").iterdir()
        kept = lost / "tasks" / task
        # Nothing is deleted: the proofs and the run the database lost are kept as they were.
        assert (kept / "committed.json").read_text() == committed
        assert json.loads((kept / "best" / "node.json").read_text()) == {"node_id": 3,
                                                                         "metric": 0.9}
        assert (kept / "nodes" / "3" / "submission" / "submission.csv").read_text() == (
            "id,target\n1,3\n")
        assert "has lost committed work" in (lost / "README.txt").read_text()
        async with Client(daemon.socket_path) as client:
            final = await wait_terminal(client, task)
        assert final["state"] == "finished"
    finally:
        await daemon.stop()
    # best/ was rebuilt from what the database holds.
    assert json.loads((root / "best" / "node.json").read_text()) == {"node_id": 2,
                                                                     "metric": 0.8}
    again = Daemon(config)
    await again.start()
    await again.stop()
    assert len(list((state / "lost").iterdir())) == 1


async def test_proofs_that_are_links_too_big_or_not_json_prove_nothing(
    config: Config, short_dir: Path, breast_cancer: Path,
) -> None:
    state = config.state_dir()
    run = await StateWriter.open(state, breast_cancer)
    try:
        task = await run.task(steps=1)
        await run.node(task, 1)
        root = state / "tasks" / task
        claim = json.dumps({"node_id": 9, "state": "done", "metric": 1.0, "finished": 9})
        (short_dir / "claim.json").write_text(claim)
        (root / "committed.json").symlink_to(short_dir / "claim.json")
        (short_dir / "elsewhere").mkdir()
        (short_dir / "elsewhere" / "node.json").write_text('{"node_id": 9, "metric": 1.0}')
        (root / "best").symlink_to(short_dir / "elsewhere")
        (state / "tasks" / "not-a-task").mkdir()
        assert find_gaps(read_disk(state), state / "mlmaster.db") == []
        (root / "committed.json").unlink()
        (root / "committed.json").write_text(claim + " " * 70_000)
        assert find_gaps(read_disk(state), state / "mlmaster.db") == []
        (root / "committed.json").write_text(claim[:-3])
        assert find_gaps(read_disk(state), state / "mlmaster.db") == []
        os.unlink(root / "committed.json")
        os.mkfifo(root / "committed.json")
        assert find_gaps(read_disk(state), state / "mlmaster.db") == []
        # The same claim, readable, is proof.
        (root / "committed.json").unlink()
        (root / "committed.json").write_text(claim)
        (gap,) = find_gaps(read_disk(state), state / "mlmaster.db")
        assert gap.description.startswith(f"node 9 of task {task} finished done")
    finally:
        await run.store.close()


# The end-to-end case: a real daemon killed with SIGKILL; its commits are all in the -wal.
QUICK_JOB = """import json, os, shutil
os.makedirs("submission", exist_ok=True)
shutil.copyfile("input/sample_submission.csv", "submission/submission.csv")
json.dump({"validation_metric": 0.6}, open("metrics.json", "w"))
"""


@pytest.fixture
async def server() -> AsyncIterator[FakeOpenAI]:
    fake = await FakeOpenAI(code=QUICK_JOB).start()
    yield fake
    await fake.stop()


async def _spawn(short_dir: Path, *flags: str, stderr: bool = False,
                 ) -> asyncio.subprocess.Process:
    """`mlmaster daemon` on the test's config; its stderr piped when `stderr`, else logged."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLMASTER_")}
    log = (short_dir / "daemon.log").open("ab")
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mlmaster_daemon", "daemon", "--config", str(short_dir / "c.toml"),
        *flags, stdout=log, stderr=asyncio.subprocess.PIPE if stderr else log, env=env)


async def _healthy(short_dir: Path, proc: asyncio.subprocess.Process) -> None:
    async with asyncio.timeout(60), Client(short_dir / "d.sock") as client:
        while True:
            assert proc.returncode is None, (short_dir / "daemon.log").read_text()
            try:
                await client.health()
                return
            except DaemonUnreachable:
                await asyncio.sleep(0.1)


async def _terminate(proc: asyncio.subprocess.Process) -> int:
    proc.send_signal(signal.SIGTERM)
    async with asyncio.timeout(60):
        return await proc.wait()


async def test_a_daemon_killed_then_started_without_its_wal_refuses_then_accepts(
    short_dir: Path, server: FakeOpenAI, breast_cancer: Path,
) -> None:
    state = short_dir / "state"
    (short_dir / "c.toml").write_text(
        f'[daemon]\nstate_dir = "{state}"\nsocket = "{short_dir / "d.sock"}"\n'
        '[execution]\nsandbox = "none"\n'
        f'[llm.code]\nbase_url = "{server.base_url}"\nmodel = "fake"\n')
    first = await _spawn(short_dir)
    await _healthy(short_dir, first)
    async with Client(short_dir / "d.sock") as client:
        task = await client.submit({"task_dir": str(breast_cancer), "steps": 2})
        final = await wait_terminal(client, task["id"], timeout_s=120)
    assert final["state"] == "finished"
    first.send_signal(signal.SIGKILL)
    await first.wait()
    (state / "mlmaster.db-wal").unlink()

    refused = await _spawn(short_dir, stderr=True)
    async with asyncio.timeout(60):
        _out, err = await refused.communicate()
    lines = err.decode().splitlines()
    assert refused.returncode == 1
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"mlmaster: error: database {state / 'mlmaster.db'} has lost "
                               f"committed work: the folders in {state / 'tasks'} prove 1 task ")
    assert "`mlmaster daemon --accept-lost-work`" in lines[0]

    accepted = await _spawn(short_dir, "--accept-lost-work")
    await _healthy(short_dir, accepted)
    async with Client(short_dir / "d.sock") as client:
        assert await client.tasks() == []
    assert await _terminate(accepted) == 0
    (lost,) = (state / "lost").iterdir()
    assert sorted(p.name for p in (lost / "tasks" / task["id"] / "nodes").iterdir()) == ["1",
                                                                                       "2"]
    assert not (state / "tasks" / task["id"]).exists()

    later = await _spawn(short_dir)
    await _healthy(short_dir, later)
    assert await _terminate(later) == 0
