"""A daemon killed with SIGKILL while nodes run: on restart nothing of the old run survives
unaccounted, and the nodes run again."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import psutil
import pytest
from conftest import wait_terminal
from openai_server import FakeOpenAI

from mlmaster_daemon.api.client import Client
from mlmaster_daemon.errors import DaemonUnreachable

# Sleeps on its first run only (its workspace keeps the marker), so a re-run finishes fast.
LONG_JOB = """import json, os, shutil, time
open("started", "a").write("x")
time.sleep(20 if len(open("started").read()) == 1 else 0)
os.makedirs("submission", exist_ok=True)
shutil.copyfile("input/sample_submission.csv", "submission/submission.csv")
json.dump({"validation_metric": 0.6}, open("metrics.json", "w"))
"""


@pytest.fixture
async def server() -> AsyncIterator[FakeOpenAI]:
    fake = await FakeOpenAI(code=LONG_JOB).start()
    yield fake
    await fake.stop()


async def _start(short_dir: Path, server: FakeOpenAI, sandbox: str) -> asyncio.subprocess.Process:
    config = short_dir / "c.toml"
    config.write_text(
        f'[daemon]\nstate_dir = "{short_dir / "state"}"\nsocket = "{short_dir / "d.sock"}"\n'
        f'[execution]\nsandbox = "{sandbox}"\n'
        f'[llm.code]\nbase_url = "{server.base_url}"\nmodel = "fake"\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLMASTER_")}
    log = (short_dir / "daemon.log").open("ab")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mlmaster_daemon", "daemon", "--config", str(config),
        stdout=log, stderr=log, env=env)
    async with asyncio.timeout(60), Client(short_dir / "d.sock") as client:
        while True:
            assert proc.returncode is None, (short_dir / "daemon.log").read_text()
            try:
                await client.health()
                return proc
            except DaemonUnreachable:
                await asyncio.sleep(0.1)


def _solution_processes(root: Path) -> list[psutil.Process]:
    """Node scripts still running with a workspace under `root`."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        if "solution.py" not in " ".join(proc.info["cmdline"] or []):
            continue
        try:
            if proc.cwd().startswith(str(root)):
                found.append(proc)
        except psutil.Error:
            continue
    return found


@pytest.mark.parametrize("sandbox", ["none", "auto"])
async def test_sigkill_while_running_leaves_no_orphan_and_the_node_runs_again(
    short_dir: Path, server: FakeOpenAI, breast_cancer: Path, sandbox: str,
) -> None:
    first = await _start(short_dir, server, sandbox)
    async with Client(short_dir / "d.sock") as client:
        task = await client.submit({"task_dir": str(breast_cancer), "steps": 1})
        async with asyncio.timeout(60):
            while not [n for n in await client.nodes(task["id"]) if n["status"] == "running"]:
                await asyncio.sleep(0.1)
        node = await client.node(task["id"], 1)
    pid = node["pid"]
    assert pid and psutil.pid_exists(pid)
    first.send_signal(signal.SIGKILL)
    await first.wait()
    await asyncio.sleep(0.5)

    second = await _start(short_dir, server, sandbox)
    try:
        async with Client(short_dir / "d.sock") as client:
            final = await wait_terminal(client, task["id"], timeout_s=120)
            nodes = await client.nodes(task["id"])
    finally:
        second.send_signal(signal.SIGTERM)
        await second.wait()
    # The old process was ours (same pid, start time, boot): it is gone.
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert final["state"] == "finished" and final["best"] is not None
    assert [n["status"] for n in nodes] == ["done"]
    # The paid-for code ran again rather than being asked for again.
    generations = [r for r in server.requests if r["messages"][0]["content"] != "ping"]
    assert len(generations) == 1
    assert not _solution_processes(short_dir)
