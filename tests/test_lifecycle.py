"""Stopping and starting again: the grace period for running nodes, active-time budgets, steps
that a stop interrupted, and the live config reload (SIGHUP)."""

from __future__ import annotations

import asyncio
import io
import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import daemon_config, restart_and_finish, wait_terminal
from openai_server import FakeOpenAI

from mlmaster_daemon.api.client import ApiError, Client
from mlmaster_daemon.config import Config, load_config, reload_config
from mlmaster_daemon.daemon import Daemon
from mlmaster_daemon.logs import configure_logging, get_logger
from mlmaster_daemon.models import NodeState, TaskState
from mlmaster_daemon.store import Store

# Sleeps `SLEEP` seconds on its first run only (its workspace keeps a marker of every run).
JOB = """import json, os, shutil, time
open("started", "a").write("x")
time.sleep(SLEEP if len(open("started").read()) == 1 else 0)
os.makedirs("submission", exist_ok=True)
shutil.copyfile("input/sample_submission.csv", "submission/submission.csv")
json.dump({"validation_metric": 0.6}, open("metrics.json", "w"))
"""


def _job(sleep_s: float) -> str:
    return JOB.replace("SLEEP", repr(sleep_s))


@pytest.fixture
async def server() -> AsyncIterator[FakeOpenAI]:
    fake = await FakeOpenAI(code=_job(3.0)).start()
    yield fake
    await fake.stop()


def _config(short_dir: Path, server: FakeOpenAI, **extra: object) -> Config:
    endpoint = {"base_url": server.base_url, "model": "fake", "max_retries": 0,
                "timeout_s": 20}
    return daemon_config(short_dir / "state", short_dir / "api.sock",
                         extra={"llm.code": endpoint, "llm.prefetch": 0,
                                "execution.sandbox": "none", **extra})


def _generations(server: FakeOpenAI) -> int:
    return len([r for r in server.requests if r["messages"][0]["content"] != "ping"])


async def _wait_for(client: Client, task_id: str, status: str) -> list[dict[str, Any]]:
    async with asyncio.timeout(60):
        while True:
            nodes = await client.nodes(task_id)
            if any(n["status"] == status for n in nodes):
                return nodes
            await asyncio.sleep(0.05)


def _runs(state: Path, task_id: str, node_id: int) -> int:
    """How many times a node's script was started (its workspace marker)."""
    marker = state / "tasks" / task_id / "nodes" / str(node_id) / "working" / "started"
    if not marker.exists():
        marker = marker.parent.parent / "started"
    return len(marker.read_text()) if marker.exists() else 0


async def _stored(config: Config, task_id: str) -> tuple[Any, list[Any]]:
    store = await Store.open(config.state_dir() / "mlmaster.db")
    try:
        return await store.get_task(task_id), await store.list_nodes(task_id)
    finally:
        await store.close()


async def test_a_stop_lets_running_nodes_finish_and_refuses_new_work(
    short_dir: Path, server: FakeOpenAI, breast_cancer: Path,
) -> None:
    config = _config(short_dir, server, **{"daemon.stop_grace_s": 60, "search.parallel": 1})
    daemon = Daemon(config)
    await daemon.start()
    async with Client(daemon.socket_path) as client:
        task = await client.submit({"task_dir": str(breast_cancer), "steps": 3})
        await _wait_for(client, task["id"], "running")
        stopping = asyncio.create_task(daemon.stop())
        assert daemon.queue is not None
        while not daemon.queue.stopping:
            await asyncio.sleep(0)
        with pytest.raises(ApiError) as refused:
            await client.submit({"task_dir": str(breast_cancer), "steps": 1})
        assert refused.value.status == 503 and refused.value.code == "daemon_stopping"
        await stopping
    stored, nodes = await _stored(config, task["id"])
    # The node that was running finished inside the grace period; nothing new started.
    assert nodes[0].state is NodeState.DONE and nodes[0].metric == 0.6
    assert len(nodes) == 1
    assert stored.state is TaskState.RUNNING
    final, nodes_after = await restart_and_finish(config, task["id"])
    assert final["state"] == "finished"
    assert [n["status"] for n in nodes_after] == ["done"] * 3
    # Node 1 ran exactly once: the restart did not run it again.
    assert _runs(config.state_dir(), task["id"], 1) == 1


async def test_after_the_grace_period_running_nodes_stop_and_run_again_after_restart(
    short_dir: Path, server: FakeOpenAI, breast_cancer: Path,
) -> None:
    server.code = _job(30.0)
    config = _config(short_dir, server, **{"daemon.stop_grace_s": 0.5, "search.parallel": 1})
    daemon = Daemon(config)
    await daemon.start()
    async with Client(daemon.socket_path) as client:
        task = await client.submit({"task_dir": str(breast_cancer), "steps": 1})
        await _wait_for(client, task["id"], "running")
    await daemon.stop()
    _stored_task, nodes = await _stored(config, task["id"])
    # Stopped, not left to finish its 30 s: its code stays ready for the restart.
    assert nodes[0].state is NodeState.READY and nodes[0].code
    assert _runs(config.state_dir(), task["id"], 1) == 1
    final, nodes_after = await restart_and_finish(config, task["id"])
    assert final["state"] == "finished"
    assert [n["status"] for n in nodes_after] == ["done"]
    assert _runs(config.state_dir(), task["id"], 1) == 2
    assert _generations(server) == 1


async def test_nodes_a_stop_interrupts_before_their_code_are_not_steps(
    short_dir: Path, server: FakeOpenAI, breast_cancer: Path,
) -> None:
    server.code = _job(0.0)
    server.latency_s = 5.0
    config = _config(short_dir, server, **{"search.parallel": 1})
    daemon = Daemon(config)
    await daemon.start()
    async with Client(daemon.socket_path) as client:
        task = await client.submit({"task_dir": str(breast_cancer), "steps": 2})
        await _wait_for(client, task["id"], "generating")
    await daemon.stop()
    _stored_task, nodes = await _stored(config, task["id"])
    assert [(n.state, n.interrupted) for n in nodes] == [(NodeState.FAILED, True)]
    server.latency_s = 0.0
    final, nodes_after = await restart_and_finish(config, task["id"])
    assert final["state"] == "finished"
    # Both steps of the budget were spent on real nodes, besides the interrupted one.
    assert sorted(n["status"] for n in nodes_after) == ["done", "done", "failed"]


def test_a_reload_applies_live_keys_and_names_the_rest() -> None:
    old = load_config(None, environ={})
    new = load_config(None, environ={
        "MLMASTER_SEARCH__PARALLEL": "5", "MLMASTER_DAEMON__LOG_LEVEL": "debug",
        "MLMASTER_EXECUTION__SANDBOX": "none", "MLMASTER_LLM__CODE__BASE_URL": "http://x/v1",
        "MLMASTER_LLM__CODE__MODEL": "m", "MLMASTER_LLM__MAX_TASK_TOKENS": "1000"})
    merged, applied, refused = reload_config(old, new)
    assert applied == ["daemon.log_level", "llm.max_task_tokens", "search.parallel"]
    assert refused == ["execution.sandbox", "llm.code"]
    assert merged.search.parallel == 5 and merged.daemon.log_level == "debug"
    # What needs a restart keeps its running value.
    assert merged.execution.sandbox == "auto" and merged.llm.code is None


@pytest.fixture
def logs() -> Iterator[io.StringIO]:
    buffer = io.StringIO()
    configure_logging("info", stream=buffer)
    yield buffer
    configure_logging("info")


async def test_sighup_reload_reaches_running_tasks_new_submits_and_the_log(
    short_dir: Path, server: FakeOpenAI, breast_cancer: Path, logs: io.StringIO,
) -> None:
    file = short_dir / "config.toml"
    file.write_text("[search]\nparallel = 1\n")
    overrides = {"daemon.state_dir": str(short_dir / "state"),
                 "daemon.socket": str(short_dir / "api.sock"), "daemon.stop_grace_s": 0,
                 "execution.sandbox": "none", "llm.prefetch": 0,
                 "llm.code": {"base_url": server.base_url, "model": "fake"}}
    config = load_config(file, environ={}, overrides=overrides)
    daemon = Daemon(config, reread=lambda: load_config(file, environ={}, overrides=overrides))
    await daemon.start()
    try:
        async with Client(daemon.socket_path) as client:
            task = await client.submit({"task_dir": str(breast_cancer), "steps": 4})
            await _wait_for(client, task["id"], "running")
            file.write_text("[daemon]\nlog_level = \"debug\"\n"
                            "[search]\nparallel = 3\nsteps = 2\n"
                            "[execution]\nmax_concurrent_nodes = 7\n")
            assert daemon.reload() == ["execution.max_concurrent_nodes"]
            assert daemon.queue is not None
            search, _handle = daemon.queue.searches[task["id"]]
            assert search.state.run_slots.total_tokens == 3
            later = await client.submit({"task_dir": str(breast_cancer)})
            assert later["steps"] == 2
            file.write_text("[search]\nparallel = 'many'\n")
            assert daemon.reload() == []
            assert daemon.config.search.parallel == 3
            get_logger("mlmaster.test").debug("after the reload")
            await wait_terminal(client, task["id"])
    finally:
        await daemon.stop()
    lines = [json.loads(line) for line in logs.getvalue().splitlines() if line.startswith("{")]
    reloaded = next(x for x in lines if x["event"] == "config reloaded")
    assert reloaded["applied"] == ["daemon.log_level", "search.parallel", "search.steps"]
    assert reloaded["needs_restart"] == ["execution.max_concurrent_nodes"]
    failed = next(x for x in lines if x["event"].startswith("config reload failed"))
    assert "search.parallel" in failed["error"]
    # The new level took effect, and the lines still go where they went.
    assert any(x["event"] == "after the reload" for x in lines)


def test_sighup_to_the_daemon_process_reloads_its_config_file(short_dir: Path) -> None:
    import os
    import signal
    import subprocess
    import sys

    file = short_dir / "config.toml"
    file.write_text(f'[daemon]\nstate_dir = "{short_dir / "state"}"\n'
                    f'socket = "{short_dir / "d.sock"}"\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLMASTER_")}
    log = short_dir / "daemon.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "mlmaster_daemon", "daemon", "--config",
                                 str(file)], stdout=out, stderr=out, env=env)
    try:
        deadline = time.monotonic() + 60
        while "daemon ready" not in log.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        file.write_text(file.read_text() + "max_running_tasks = 9\n"
                        "[execution]\nslots_per_gpu = 2\n")
        proc.send_signal(signal.SIGHUP)
        while "config reloaded" not in log.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    reloaded = next(json.loads(line) for line in log.read_text().splitlines()
                    if "config reloaded" in line)
    assert reloaded["applied"] == ["daemon.max_running_tasks"]
    assert reloaded["needs_restart"] == ["execution.slots_per_gpu"]


async def test_a_best_left_behind_by_a_crash_is_rebuilt_on_restart(
    short_dir: Path, server: FakeOpenAI, breast_cancer: Path,
) -> None:
    import shutil

    server.code = _job(0.0)
    # One at a time: node 1 finishes first and holds the best (node 2 only ties it).
    config = _config(short_dir, server, **{"search.parallel": 1})
    daemon = Daemon(config)
    await daemon.start()
    try:
        async with Client(daemon.socket_path) as client:
            task = await client.submit({"task_dir": str(breast_cancer), "steps": 2})
            done = await wait_terminal(client, task["id"])
    finally:
        await daemon.stop()
    assert done["best"]["node_id"] == 1
    # As if the daemon died after node 1's outcome was committed but before best/ was written.
    shutil.rmtree(config.state_dir() / "tasks" / task["id"] / "best")
    store = await Store.open(config.state_dir() / "mlmaster.db")
    try:
        await store.update_task(task["id"], state=TaskState.RUNNING, best_node_id=None,
                                best_metric=None, finished_at=None)
    finally:
        await store.close()
    final, _nodes = await restart_and_finish(config, task["id"])
    assert final["best"]["node_id"] == 1 and final["best"]["metric"] == 0.6
    best = config.state_dir() / "tasks" / task["id"] / "best"
    assert json.loads((best / "node.json").read_text())["node_id"] == 1
    assert (best / "submission.csv").read_text().startswith("id")


async def _finish_then_reopen(config: Config, breast_cancer: Path, steps: int) -> str:
    """Run a task to its end, then put it back to running as a crash would have left it."""
    daemon = Daemon(config)
    await daemon.start()
    try:
        async with Client(daemon.socket_path) as client:
            task = await client.submit({"task_dir": str(breast_cancer), "steps": steps})
            await wait_terminal(client, task["id"])
    finally:
        await daemon.stop()
    store = await Store.open(config.state_dir() / "mlmaster.db")
    try:
        await store.update_task(task["id"], state=TaskState.RUNNING, best_node_id=None,
                                best_metric=None, finished_at=None)
    finally:
        await store.close()
    return str(task["id"])


async def test_a_best_whose_files_are_gone_falls_back_to_the_next_one(
    short_dir: Path, server: FakeOpenAI, breast_cancer: Path,
) -> None:
    import shutil

    server.code = _job(0.0)
    config = _config(short_dir, server, **{"search.parallel": 1})
    task_id = await _finish_then_reopen(config, breast_cancer, steps=2)
    root = config.state_dir() / "tasks" / task_id
    shutil.rmtree(root / "best")
    shutil.rmtree(root / "nodes" / "1")
    final, _nodes = await restart_and_finish(config, task_id)
    assert final["state"] == "finished" and final["best"]["node_id"] == 2


async def test_a_task_that_cannot_resume_fails_with_the_reason(
    short_dir: Path, server: FakeOpenAI, breast_cancer: Path, tmp_path: Path,
) -> None:
    import shutil

    server.code = _job(0.0)
    folder = tmp_path / "gone"
    shutil.copytree(breast_cancer, folder)
    config = _config(short_dir, server)
    task_id = await _finish_then_reopen(config, folder, steps=1)
    shutil.rmtree(folder)
    final, _nodes = await restart_and_finish(config, task_id)
    assert final["state"] == "failed"
    assert final["error"].startswith("could not start or resume")


async def test_a_cancel_right_after_the_submit_is_not_lost(
    short_dir: Path, server: FakeOpenAI, breast_cancer: Path,
) -> None:
    config = _config(short_dir, server)
    daemon = Daemon(config)
    await daemon.start()
    try:
        async with Client(daemon.socket_path) as client:
            for _ in range(3):
                task = await client.submit({"task_dir": str(breast_cancer), "steps": 5})
                cancelled = await client.cancel(task["id"])
                assert cancelled["state"] == "cancelled"
                # Whatever the cancel set going (a refill of the queue) has run its course.
                assert daemon.queue is not None
                await daemon.queue.settle()
                assert (await client.task(task["id"]))["state"] == "cancelled"
    finally:
        await daemon.stop()
    stored, _nodes = await _stored(config, task["id"])
    assert stored.state is TaskState.CANCELLED


async def test_a_stop_right_after_a_nodes_outcome_keeps_that_outcome(
    config: Config, breast_cancer: Path,
) -> None:
    # The stop lands while the runner is still busy with a node whose outcome was just
    # committed (copying best/): the node must stay done, not go back to ready and run again.
    from mlmaster_daemon.bus import NodeStateChanged

    daemon = Daemon(config)
    await daemon.start()
    assert daemon.queue is not None and daemon.store is not None
    async with daemon.bus.subscribe(lambda e: isinstance(e, NodeStateChanged)) as events:
        async with Client(daemon.socket_path) as client:
            task = await client.submit({"task_dir": str(breast_cancer), "steps": 4})
        async with asyncio.timeout(120):
            while True:
                event = await events.get()
                if isinstance(event, NodeStateChanged) and event.state in ("done", "buggy"):
                    break
        await daemon.stop()
    store = await Store.open(config.state_dir() / "mlmaster.db")
    try:
        node = await store.get_node(task["id"], event.node_id)
    finally:
        await store.close()
    assert node.state.value == event.state
