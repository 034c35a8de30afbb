"""A corrupt database is refused at start with the way back; good ones are backed up at every
start and on a schedule while the daemon runs, and the backup holding the most work is kept."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import daemon_command_refused, daemon_config, start_refused

from mlmaster_daemon.api.client import Client
from mlmaster_daemon.config import Config
from mlmaster_daemon.daemon import Daemon
from mlmaster_daemon.errors import StoreError
from mlmaster_daemon.logs import configure_logging
from mlmaster_daemon.models import NodeState, Operator, TaskState, new_task_id
from mlmaster_daemon.store import NodeRecord, Store, TaskRecord
from mlmaster_daemon.store.backup import (
    IntegrityCheck,
    backup_weight,
    database_file,
    latest_backup,
    list_backups,
    make_backup,
)
from mlmaster_daemon.store.lost import LostWork
from mlmaster_daemon.tasks.competition import load_task


async def test_each_start_keeps_a_backup_and_only_the_newest_three(config: Config) -> None:
    for _ in range(4):
        daemon = Daemon(config)
        await daemon.start()
        await daemon.stop()
    db = config.state_dir() / "mlmaster.db"
    backups = sorted((db.parent / "backups").glob("mlmaster-*.db"))
    assert len(backups) == 3
    assert latest_backup(db) == backups[-1]


async def test_a_corrupt_database_is_refused_naming_the_last_good_backup(
    config: Config,
) -> None:
    daemon = Daemon(config)
    await daemon.start()
    await daemon.stop()
    db = config.state_dir() / "mlmaster.db"
    data = bytearray(db.read_bytes())
    # Scribble over the schema page: quick_check (or opening) must notice.
    data[100:4000] = b"\xff" * 3900
    db.write_bytes(bytes(data))
    with pytest.raises(StoreError) as err:
        await Daemon(config).start()
    message = err.value.message
    assert "is corrupt" in message
    assert str(latest_backup(db)) in message
    assert not config.socket_path().exists(), "a refused start does not listen"


async def _corrupted(config: Config) -> tuple[Path, bytes, bytes]:
    """A database with one start's backup, then scribbled over: (path, good, corrupt bytes)."""
    daemon = Daemon(config)
    await daemon.start()
    await daemon.stop()
    db = database_file(config.state_dir())
    good = db.read_bytes()
    data = bytearray(good)
    data[100:4000] = b"\xff" * 3900
    db.write_bytes(bytes(data))
    return db, good, bytes(data)


async def test_a_start_takes_the_verdict_of_the_check_the_command_began_early(
    config: Config,
) -> None:
    db, good, _corrupt = await _corrupted(config)
    # The command starts the check before it imports the daemon: its verdict is the one the
    # start goes by (here the file is mended after the check read it, so only that verdict
    # can refuse).
    early = IntegrityCheck(db)
    with pytest.raises(StoreError):
        await early.passed()
    db.write_bytes(good)
    with pytest.raises(StoreError, match="is corrupt"):
        await Daemon(config, integrity=early).start()
    assert db.read_bytes() == good, "a refused start leaves the database as it was found"


async def test_an_early_check_of_another_file_does_not_vouch_for_the_database(
    config: Config, short_dir: Path,
) -> None:
    db, _good, corrupt = await _corrupted(config)
    other = short_dir / "other.db"
    sqlite3.connect(other).close()
    elsewhere = IntegrityCheck(other)
    await elsewhere.passed()
    with pytest.raises(StoreError, match="is corrupt"):
        await Daemon(config, integrity=elsewhere).start()
    assert db.read_bytes() == corrupt


async def test_mlmaster_daemon_on_a_corrupt_database_exits_with_one_line_and_touches_nothing(
    config: Config, short_dir: Path,
) -> None:
    db, _good, corrupt = await _corrupted(config)
    status, lines = await daemon_command_refused(config.state_dir(), short_dir / "cli.sock")
    assert status == 1
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"mlmaster: error: database {db} is corrupt")
    assert str(latest_backup(db)) in lines[0]
    assert db.read_bytes() == corrupt
    assert not (short_dir / "cli.sock").exists()


class ManualSleep:
    """The daemon's wait between backups, driven by the test: each call waits to be woken."""

    def __init__(self) -> None:
        self.calls: asyncio.Queue[tuple[float, asyncio.Future[None]]] = asyncio.Queue()

    async def __call__(self, seconds: float) -> None:
        woken: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        await self.calls.put((seconds, woken))
        await woken

    async def next(self) -> tuple[float, asyncio.Future[None]]:
        """The next wait the daemon asks for, once it asks."""
        async with asyncio.timeout(30):
            return await self.calls.get()


def _interval(short_dir: Path, seconds: float) -> Config:
    return daemon_config(short_dir / "state", short_dir / "api.sock",
                         extra={"daemon.backup_interval_s": seconds})


def _backups(config: Config) -> list[Path]:
    return list_backups(config.state_dir() / "mlmaster.db")


@pytest.fixture
def logs() -> Iterator[io.StringIO]:
    buffer = io.StringIO()
    configure_logging("info", stream=buffer)
    yield buffer
    configure_logging("info")


async def test_while_running_a_backup_is_taken_every_interval_until_stop(
    short_dir: Path,
) -> None:
    config = _interval(short_dir, 60)
    sleep = ManualSleep()
    daemon = Daemon(config, sleep=sleep)
    await daemon.start()
    try:
        assert len(_backups(config)) == 1, "one at start"
        seconds, woken = await sleep.next()
        for taken in (2, 3):
            assert seconds == 60
            woken.set_result(None)
            # The daemon waits again only once that backup is on disk.
            seconds, woken = await sleep.next()
            assert len(_backups(config)) == taken
    finally:
        await daemon.stop()
    assert woken.cancelled()
    assert sleep.calls.empty() and len(_backups(config)) == 3


async def test_a_reload_applies_a_new_backup_interval_and_zero_stops_the_schedule(
    short_dir: Path,
) -> None:
    interval = {"seconds": 60.0}
    sleep = ManualSleep()
    daemon = Daemon(_interval(short_dir, 60), sleep=sleep,
                    reread=lambda: _interval(short_dir, interval["seconds"]))
    await daemon.start()
    try:
        seconds, hourly = await sleep.next()
        assert seconds == 60
        interval["seconds"] = 5
        assert daemon.reload() == []
        seconds, frequent = await sleep.next()
        assert seconds == 5 and hourly.cancelled()
        interval["seconds"] = 0
        assert daemon.reload() == []
        async with asyncio.timeout(30):
            await asyncio.wait([frequent])
        assert frequent.cancelled()
    finally:
        await daemon.stop()
    assert sleep.calls.empty()
    assert len(_backups(daemon.config)) == 1, "only the one at start"


async def test_a_failed_backup_is_logged_and_the_daemon_goes_on(
    config: Config, logs: io.StringIO,
) -> None:
    state = config.state_dir()
    state.mkdir(parents=True)
    # Where the backups folder should be: every backup fails.
    (state / "backups").write_text("not a folder\n")
    daemon = Daemon(config)
    await daemon.start()
    try:
        assert await daemon.backup() is None
        async with Client(daemon.socket_path) as client:
            assert (await client.health())["status"] == "ok"
    finally:
        await daemon.stop()
    failures = [json.loads(line) for line in logs.getvalue().splitlines()
                if "database backup failed" in line]
    assert len(failures) == 2, "the one at start and the one asked for"
    assert all(f["level"] == "error" and "backups" in f["error"] for f in failures)


async def _rich_database(config: Config, breast_cancer: Path) -> list[str]:
    """Two finished tasks of three done nodes each, with no folders (nothing on disk proves
    them if the database is lost)."""
    store = await Store.open(config.state_dir() / "mlmaster.db")
    spec = load_task(breast_cancer)
    ids = []
    try:
        for _ in range(2):
            task_id = new_task_id()
            ids.append(task_id)
            await store.insert_task(TaskRecord(
                id=task_id, name="t", task_dir=str(breast_cancer), spec=spec, policy="greedy",
                steps=3, time_limit_s=60, node_timeout_s=60, state=TaskState.FINISHED,
                created_at=1.0))
            for node_id in (1, 2, 3):
                await store.insert_node(NodeRecord(task_id, node_id, None, Operator.DRAFT,
                                                   NodeState.DONE, created_at=1.0, metric=0.5))
    finally:
        await store.close()
    return ids


async def _restarts_on_a_lost_database(config: Config, restarts: int) -> None:
    db = config.state_dir() / "mlmaster.db"
    for _ in range(restarts):
        for suffix in ("", "-wal", "-shm"):
            db.with_name(db.name + suffix).unlink(missing_ok=True)
        daemon = Daemon(config)
        await daemon.start()
        await daemon.stop()


async def test_starts_on_a_lost_database_never_rotate_out_the_backup_holding_the_most(
    config: Config, breast_cancer: Path,
) -> None:
    await _rich_database(config, breast_cancer)
    daemon = Daemon(config)
    await daemon.start()
    await daemon.stop()
    (rich,) = _backups(config)
    await _restarts_on_a_lost_database(config, 3)
    backups = _backups(config)
    assert len(backups) == 4 and backups[0] == rich
    assert backup_weight(rich) == (6, 6, 2)
    assert [backup_weight(b) for b in backups[1:]] == [(0, 0, 0)] * 3
    # The next start on a good database rotates the empty ones out, oldest first.
    await _restarts_on_a_lost_database(config, 0)
    daemon = Daemon(config)
    await daemon.start()
    await daemon.stop()
    assert _backups(config)[0] == rich and len(_backups(config)) == 4


async def test_lost_work_names_the_backup_holding_it_not_the_newest_empty_one(
    config: Config, breast_cancer: Path,
) -> None:
    first, _second = await _rich_database(config, breast_cancer)
    daemon = Daemon(config)
    await daemon.start()
    await daemon.stop()
    (rich,) = _backups(config)
    await _restarts_on_a_lost_database(config, 3)
    # A node folder of a task the lost database held is found (it was there all along).
    (config.state_dir() / "tasks" / first / "nodes" / "1").mkdir(parents=True)
    refused = await start_refused(config, LostWork)
    db = config.state_dir() / "mlmaster.db"
    assert f"`cp {rich} {db}`" in refused.message
    assert "that backup still lacks" not in refused.message


async def test_a_backup_holds_the_commits_still_in_the_wal_in_one_file(
    config: Config, breast_cancer: Path,
) -> None:
    db = config.state_dir() / "mlmaster.db"
    store = await Store.open(db)
    try:
        await store.insert_task(TaskRecord(
            id=new_task_id(), name="t", task_dir=str(breast_cancer),
            spec=load_task(breast_cancer), policy="greedy", steps=1, time_limit_s=60,
            node_timeout_s=60, state=TaskState.QUEUED, created_at=1.0))
        assert (config.state_dir() / "mlmaster.db-wal").stat().st_size > 0
        backup = make_backup(db)
    finally:
        await store.close()
    assert sorted(p.name for p in backup.parent.iterdir()) == [backup.name]
    with contextlib.closing(sqlite3.connect(backup)) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("delete",)
        assert conn.execute("SELECT COUNT(*) FROM tasks").fetchone() == (1,)
