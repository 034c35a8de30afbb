"""Node scripts run as real subprocesses, stopped with their whole group at the time limit."""

from __future__ import annotations

import asyncio
import textwrap
from pathlib import Path

import psutil
import pytest

from mlmaster_daemon.execution.runner import run_script
from mlmaster_daemon.execution.workspace import Workspace


def _workspace(tmp_path: Path, code: str) -> Workspace:
    public = tmp_path / "public"
    public.mkdir(exist_ok=True)
    (public / "train.csv").write_text("a,b\n1,2\n")
    return Workspace.create(tmp_path / "ws", public, textwrap.dedent(code))


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


async def test_a_script_that_loops_forever_is_killed_with_its_children(tmp_path: Path) -> None:
    ws = _workspace(tmp_path, """
        import subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        open("child.pid", "w").write(str(child.pid))
        while True:
            time.sleep(0.1)
    """)
    result = await run_script(ws, timeout_s=3, kill_grace_s=0.5)
    assert result.timed_out
    assert result.exit_code is None
    child = int((ws.root / "child.pid").read_text())
    assert not _alive(result.pid)
    assert not _alive(child)


async def test_a_script_that_ignores_sigterm_is_killed(tmp_path: Path) -> None:
    ws = _workspace(tmp_path, """
        import signal, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print("started", flush=True)
        while True:
            time.sleep(0.1)
    """)
    result = await run_script(ws, timeout_s=2, kill_grace_s=0.5)
    assert result.timed_out
    assert not _alive(result.pid)


async def test_output_goes_to_files_and_the_workspace_holds_the_contract(tmp_path: Path) -> None:
    ws = _workspace(tmp_path, """
        import sys
        print(open("input/train.csv").read().splitlines()[0])
        print("oops", file=sys.stderr)
        raise SystemExit(3)
    """)
    result = await run_script(ws, timeout_s=30)
    assert result.exit_code == 3
    assert ws.stdout.read_text().strip() == "a,b"
    assert "oops" in ws.stderr.read_text()
    assert (ws.root / "working").is_dir() and (ws.root / "submission").is_dir()


async def test_the_child_environment_holds_no_daemon_secret(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret-value")
    monkeypatch.setenv("NOTIFY_SOCKET", "/run/systemd/notify")
    ws = _workspace(tmp_path, """
        import json, os
        print(json.dumps(dict(os.environ)))
    """)
    await run_script(ws, timeout_s=30)
    text = ws.stdout.read_text()
    assert "sk-secret-value" not in text
    assert "NOTIFY_SOCKET" not in text
    assert "PATH" in text


async def test_cancelling_a_run_stops_its_process_group(tmp_path: Path) -> None:
    ws = _workspace(tmp_path, """
        import os, time
        open("pid", "w").write(str(os.getpid()))
        time.sleep(600)
    """)
    run = asyncio.create_task(run_script(ws, timeout_s=600, kill_grace_s=0.5))
    for _ in range(100):
        if (ws.root / "pid").exists() and (ws.root / "pid").read_text():
            break
        await asyncio.sleep(0.05)
    pid = int((ws.root / "pid").read_text())
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    assert not _alive(pid)
