"""The daemon driving a real OpenAI-compatible server: code, faults, pauses, budgets, judge."""

from __future__ import annotations

import asyncio
import io
import json
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import daemon_config, restart_and_finish, wait_terminal
from openai_server import FakeOpenAI

from mlmaster_daemon.api.client import Client
from mlmaster_daemon.coders.offline.recipe import safe_baseline
from mlmaster_daemon.coders.offline.render import render
from mlmaster_daemon.config import Config
from mlmaster_daemon.daemon import Daemon
from mlmaster_daemon.logs import configure_logging
from mlmaster_daemon.tasks.competition import load_task

KEY = "sk-live-do-not-leak-9f8e7d"


@pytest.fixture
async def server(breast_cancer: Path) -> AsyncIterator[FakeOpenAI]:
    fake = FakeOpenAI(code=render(safe_baseline(7), load_task(breast_cancer)))
    await fake.start()
    yield fake
    await fake.stop()


def _config(short_dir: Path, server: FakeOpenAI, feedback: FakeOpenAI | None = None,
            **llm: object) -> Config:
    endpoint = {"base_url": server.base_url, "model": "fake-r1", "api_key_env": "FAKE_KEY",
                "max_retries": 1, "backoff_s": 0.01, "breaker_failures": 1,
                "breaker_cooldown_s": 0.3, "timeout_s": 20, "price_prompt": 0.5,
                "price_completion": 2.0}
    extra: dict[str, object] = {"llm.code": endpoint, **{f"llm.{k}": v for k, v in llm.items()}}
    if feedback is not None:
        extra["llm.feedback"] = {**endpoint, "base_url": feedback.base_url}
    return daemon_config(short_dir / "state", short_dir / "api.sock", extra=extra)


@pytest.fixture
def logs() -> Iterator[io.StringIO]:
    """Every log line of the test, ours and the libraries' (httpx, openai) at debug level."""
    buffer = io.StringIO()
    configure_logging("debug", stream=buffer)
    yield buffer
    configure_logging("info")


async def _run(config: Config, body: dict[str, Any]) -> tuple[Daemon, dict[str, Any]]:
    daemon = Daemon(config)
    await daemon.start()
    try:
        async with Client(daemon.socket_path) as client:
            task = await client.submit(body)
            return daemon, await wait_terminal(client, task["id"])
    finally:
        await daemon.stop()


async def test_model_written_code_runs_and_every_call_is_accounted(
    short_dir: Path, server: FakeOpenAI, breast_cancer: Path, logs: io.StringIO,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FAKE_KEY", KEY)
    _daemon, task = await _run(_config(short_dir, server),
                               {"task_dir": str(breast_cancer), "steps": 3})
    assert task["state"] == "finished"
    assert task["best"] is not None
    usage = task["usage"]
    assert usage["calls"] == 3
    assert (usage["prompt_tokens"], usage["completion_tokens"]) == (300, 150)
    assert usage["cost"] == pytest.approx((300 * 0.5 + 150 * 2.0) / 1e6)
    # The prompts carried the task, the contract and the data preview.
    # requests[0] is the start-up probe; the first generation follows.
    assert server.requests[0]["messages"][0]["content"] == "ping"
    user = server.requests[1]["messages"][-1]["content"]
    assert "metrics.json" in user and "sample_submission.csv" in user
    assert server.headers[0]["Authorization"] == f"Bearer {KEY}"
    # The key reaches the server and nothing else: not the logs, not the database, not files.
    assert KEY not in logs.getvalue()
    db = (short_dir / "state" / "mlmaster.db").read_bytes()
    assert KEY.encode() not in db
    for path in (short_dir / "state" / "tasks").rglob("*"):
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), path


async def test_answers_are_committed_before_the_code_runs(
    short_dir: Path, server: FakeOpenAI, breast_cancer: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FAKE_KEY", KEY)
    _daemon, task = await _run(_config(short_dir, server),
                               {"task_dir": str(breast_cancer), "steps": 2})
    import sqlite3

    with sqlite3.connect(short_dir / "state" / "mlmaster.db") as conn:
        rows = conn.execute(
            "SELECT c.node_id, c.content, n.code, c.created_at, n.started_at FROM llm_calls c "
            "JOIN nodes n ON n.task_id = c.task_id AND n.id = c.node_id WHERE c.task_id = ?",
            (task["id"],)).fetchall()
    assert len(rows) == 2
    for _node, content, code, committed_at, started_at in rows:
        assert code in content.replace("```python\n", "")
        assert committed_at <= started_at


async def test_a_task_pauses_while_the_endpoint_is_down_and_resumes_after(
    short_dir: Path, server: FakeOpenAI, breast_cancer: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FAKE_KEY", KEY)
    server.default = "error500"
    daemon = Daemon(_config(short_dir, server))
    await daemon.start()
    try:
        async with Client(daemon.socket_path) as client:
            task = await client.submit({"task_dir": str(breast_cancer), "steps": 2})
            async with asyncio.timeout(30):
                while (await client.task(task["id"]))["state"] != "paused":
                    await asyncio.sleep(0.1)
            paused = await client.task(task["id"])
            assert "HTTP 500" in (paused["error"] or "")
            health = await client.health()
            assert health["llm"][0]["breaker"] in ("open", "half_open")
            server.default = "ok"
            final = await wait_terminal(client, task["id"])
    finally:
        await daemon.stop()
    assert final["state"] == "finished" and final["best"] is not None
    assert final["error"] is None


async def test_a_token_budget_stops_new_generation(
    short_dir: Path, server: FakeOpenAI, breast_cancer: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FAKE_KEY", KEY)
    _daemon, task = await _run(_config(short_dir, server, prefetch=0),
                               {"task_dir": str(breast_cancer), "steps": 10,
                                "max_tokens": 400})
    assert task["state"] == "finished"
    assert "token budget reached" in task["error"]
    assert task["nodes_total"] < 10
    assert task["budget"]["max_tokens"] == 400


@pytest.mark.parametrize(("mode", "reason"), [
    ("nocode", "without a python code block"),
    ("think_only", "without a python code block"),
    ("bad_request", "HTTP 404: model does not exist"),
])
async def test_unusable_answers_fail_the_node_with_a_clear_reason(
    short_dir: Path, server: FakeOpenAI, breast_cancer: Path, mode: str, reason: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FAKE_KEY", KEY)
    server.default = mode
    daemon = Daemon(_config(short_dir, server, no_code_retries=1))
    await daemon.start()
    try:
        async with Client(daemon.socket_path) as client:
            task = await client.submit({"task_dir": str(breast_cancer), "steps": 2})
            final = await wait_terminal(client, task["id"])
            nodes = await client.nodes(task["id"])
            assert (await client.health())["status"] == "ok"
    finally:
        await daemon.stop()
    assert final["state"] == "finished"
    assert all(n["status"] == "failed" and reason in n["error"] for n in nodes)
    if mode != "bad_request":
        # Each node asked twice (one corrective retry), and both answers are accounted.
        assert final["usage"]["calls"] == 4


async def test_the_judge_can_call_a_run_buggy_but_not_set_its_metric(
    short_dir: Path, server: FakeOpenAI, breast_cancer: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FAKE_KEY", KEY)
    judge = await FakeOpenAI(default="tool", verdict={
        "is_bug": True, "analysis": "the target leaks into the features",
        "summary": "leaky features"}).start()
    try:
        _daemon, task = await _run(_config(short_dir, server, feedback=judge),
                                   {"task_dir": str(breast_cancer), "steps": 1})
    finally:
        await judge.stop()
    # requests[0] is the start-up probe; then the judge is asked with the review tool.
    assert judge.requests[1]["tools"][0]["function"]["name"] == "submit_review"
    assert task["best"] is None
    assert task["usage"]["calls"] == 2


async def test_doctor_checks_each_endpoint(short_dir: Path, server: FakeOpenAI) -> None:
    config = short_dir / "c.toml"
    config.write_text(
        "[llm.code]\n"
        f'base_url = "{server.base_url}"\nmodel = "fake"\n'
        "[llm.feedback]\n"
        'base_url = "http://127.0.0.1:9/v1"\nmodel = "gone"\nconnect_timeout_s = 1\n')
    # The fake server lives on this event loop, so the CLI runs in a thread meanwhile.
    result = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "mlmaster_daemon", "doctor", "--config",
                         str(config)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert any(line.startswith("ok") and "llm code" in line for line in lines), result.stdout
    assert any(line.startswith("FAIL") and "llm feedback" in line for line in lines)


SLOW_JOB = """import json, os, shutil, time
time.sleep(3)
os.makedirs("submission", exist_ok=True)
shutil.copyfile("input/sample_submission.csv", "submission/submission.csv")
json.dump({"validation_metric": 0.6}, open("metrics.json", "w"))
"""


async def test_a_restart_runs_paid_code_instead_of_asking_again(
    short_dir: Path, server: FakeOpenAI, breast_cancer: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FAKE_KEY", KEY)
    server.code = SLOW_JOB
    config = _config(short_dir, server, prefetch=0)
    config = config.model_copy(update={"search": config.search.model_copy(
        update={"parallel": 1})})
    first = Daemon(config)
    await first.start()
    async with Client(first.socket_path) as client:
        task = await client.submit({"task_dir": str(breast_cancer), "steps": 1})
        async with asyncio.timeout(30):
            while not [n for n in await client.nodes(task["id"]) if n["status"] == "running"]:
                await asyncio.sleep(0.05)
    await first.stop()
    generations = [r for r in server.requests if r["messages"][0]["content"] != "ping"]
    assert len(generations) == 1

    final, nodes = await restart_and_finish(config, task["id"])
    generations = [r for r in server.requests if r["messages"][0]["content"] != "ping"]
    assert len(generations) == 1, "the answer was paid once and run after the restart"
    assert final["state"] == "finished" and final["usage"]["calls"] == 1
    assert [n["status"] for n in nodes] == ["done"]


async def test_a_stagnating_phase_is_summarised_by_the_model(
    short_dir: Path, server: FakeOpenAI, breast_cancer: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FAKE_KEY", KEY)
    server.code = SLOW_JOB.replace("time.sleep(3)", "")  # every node scores 0.6: stagnation
    config = _config(short_dir, server)
    config = config.model_copy(update={"memory": config.memory.model_copy(
        update={"stagnation_window": 2})})
    _daemon, task = await _run(config, {"task_dir": str(breast_cancer), "steps": 4})
    # One probe, four generations, and at least one phase summary.
    assert len(server.requests) >= 6
    import sqlite3

    with sqlite3.connect(short_dir / "state" / "mlmaster.db") as conn:
        state = json.loads(conn.execute("SELECT search_state FROM tasks WHERE id = ?",
                                        (task["id"],)).fetchone()[0])
    l2 = state["memory"]["l2"]
    # The fake model answers every request with plan + code, so only its answer (never the
    # deterministic fallback) holds a code fence.
    assert l2 and "```python" in l2[0]["text"], "the model's summary replaced the fallback"


async def test_a_script_that_links_its_log_to_the_key_file_leaks_nothing(
    short_dir: Path, server: FakeOpenAI, breast_cancer: Path, tmp_path: Path,
    logs: io.StringIO,
) -> None:
    # The worst case: no sandbox to hide the key file, a script that plants a link to it in
    # place of its own log and fails, so the debug prompts quote "its output".
    key_file = tmp_path / "secrets" / "api_key"
    key_file.parent.mkdir()
    key_file.write_text(KEY + "\n")
    server.code = (f"import os\nos.remove('stdout.log')\nos.symlink({str(key_file)!r}, "
                   "'stdout.log')\nprint('see my stdout', flush=True)\nraise SystemExit(1)\n")
    config = _config(short_dir, server)
    endpoint = {**config.llm.code.model_dump(), "api_key_env": "",  # type: ignore[union-attr]
                "api_key_file": str(key_file)}
    config = daemon_config(short_dir / "state", short_dir / "api.sock", extra={
        "llm.code": endpoint, "execution.sandbox": "none", "search.num_drafts": 1})
    daemon = Daemon(config)
    await daemon.start()
    try:
        async with Client(daemon.socket_path) as client:
            task = await wait_terminal(client, (await client.submit(
                {"task_dir": str(breast_cancer), "steps": 3}))["id"])
            shown = [await client.node(task["id"], n["id"])
                     for n in await client.nodes(task["id"])]
    finally:
        await daemon.stop()
    prompts = json.dumps(server.requests)
    # The probe, then a draft and the debugs that quote its failed run.
    assert len(server.requests) >= 4 and "exited with code 1" in prompts
    assert KEY not in prompts
    assert all(KEY not in json.dumps(node) for node in shown)
    assert KEY not in logs.getvalue()
    assert KEY.encode() not in (short_dir / "state" / "mlmaster.db").read_bytes()
    assert key_file.read_text() == KEY + "\n"
