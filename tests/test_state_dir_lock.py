"""One daemon per state dir, and a refused daemon leaves alone what belongs to the one running:
its jobs, its database, its backups and its socket."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from conftest import daemon_command_refused, daemon_config
from openai_server import FakeOpenAI

from mlmaster_daemon.api.client import Client
from mlmaster_daemon.config import Config
from mlmaster_daemon.daemon import Daemon
from mlmaster_daemon.errors import ConfigError
from mlmaster_daemon.store.lock import StateDirInUse

# Runs long enough for the test to try a second daemon while it runs.
LONG_JOB = """import time
time.sleep(60)
"""


@pytest.fixture
async def server() -> AsyncIterator[FakeOpenAI]:
    fake = await FakeOpenAI(code=LONG_JOB).start()
    yield fake
    await fake.stop()


def _config(short_dir: Path, server: FakeOpenAI, socket: str) -> Config:
    endpoint = {"base_url": server.base_url, "model": "fake", "max_retries": 0}
    return daemon_config(short_dir / "state", short_dir / socket,
                         extra={"llm.code": endpoint, "llm.prefetch": 0,
                                "execution.sandbox": "none", "search.parallel": 1})


async def _running_node(client: Client, task_id: str) -> dict[str, Any]:
    async with asyncio.timeout(60):
        while True:
            nodes = [n for n in await client.nodes(task_id) if n["status"] == "running"]
            if nodes:
                return await client.node(task_id, nodes[0]["id"])
            await asyncio.sleep(0.05)


def _backups(state_dir: Path) -> list[Path]:
    return sorted((state_dir / "backups").glob("mlmaster-*.db"))


async def test_a_second_daemon_on_the_same_state_dir_is_refused_and_leaves_the_first_ones_jobs(
    short_dir: Path, server: FakeOpenAI, breast_cancer: Path,
) -> None:
    first = Daemon(_config(short_dir, server, "first.sock"))
    await first.start()
    try:
        async with Client(first.socket_path) as client:
            task = await client.submit({"task_dir": str(breast_cancer), "steps": 1})
            node = await _running_node(client, task["id"])
            backups = _backups(first.state_dir)
            second = Daemon(_config(short_dir, server, "second.sock"))
            try:
                with pytest.raises(StateDirInUse) as refused:
                    await second.start()
            finally:
                await second.stop()
            assert refused.value.message.startswith(
                f"state dir {first.state_dir} is in use by pid {os.getpid()}: ")
            # Without the lock it would have killed this job as left over from a crash.
            job = psutil.Process(node["pid"])
            assert job.is_running() and job.status() != psutil.STATUS_ZOMBIE
            assert (await client.node(task["id"], node["id"]))["status"] == "running"
            # It touched nothing: no socket, no backup.
            assert not (short_dir / "second.sock").exists()
            assert _backups(first.state_dir) == backups
    finally:
        await first.stop()


async def test_the_lock_file_names_the_holder_while_it_runs_and_is_free_after_stop(
    config: Config,
) -> None:
    lock = config.state_dir() / "mlmaster.lock"
    daemon = Daemon(config)
    await daemon.start()
    try:
        assert lock.read_text() == f"{os.getpid()}\n"
    finally:
        await daemon.stop()
    assert lock.read_text() == ""
    again = Daemon(config)
    await again.start()
    await again.stop()


async def test_mlmaster_daemon_on_a_state_dir_in_use_exits_with_one_line_naming_the_holder(
    daemon: Daemon, short_dir: Path,
) -> None:
    status, lines = await daemon_command_refused(daemon.state_dir, short_dir / "other.sock")
    assert status == 1
    assert len(lines) == 1, lines
    assert lines[0].startswith(
        f"mlmaster: error: state dir {daemon.state_dir} is in use by pid {os.getpid()}: ")
    assert "stop that one first" in lines[0] and "--state-dir" in lines[0]
    async with Client(daemon.socket_path) as client:
        assert (await client.health())["status"] == "ok"


async def test_a_daemon_refused_because_the_socket_is_live_leaves_that_socket_to_its_owner(
    daemon: Daemon, short_dir: Path,
) -> None:
    other = Daemon(daemon_config(short_dir / "other-state", daemon.socket_path))
    with pytest.raises(ConfigError, match="another daemon is already listening"):
        async with asyncio.timeout(60):
            await other.serve()
    assert daemon.socket_path.exists()
    async with Client(daemon.socket_path) as client:
        assert (await client.health())["status"] == "ok"


async def test_a_daemon_removes_its_own_socket_when_it_stops(config: Config) -> None:
    daemon = Daemon(config)
    await daemon.start()
    assert daemon.socket_path.exists()
    await daemon.stop()
    assert not daemon.socket_path.exists()
