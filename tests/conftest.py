"""Shared fixtures: example competitions, and a real daemon on a real Unix socket."""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import settings

from mlmaster_daemon.api.client import Client
from mlmaster_daemon.config import Config, load_config
from mlmaster_daemon.daemon import Daemon
from mlmaster_daemon.tasks.examples import build_example

# `scripts/test` (and so CI) runs the property tests on a fixed sequence of examples, so a
# commit's verdict does not depend on the draw; pytest run by hand explores new examples.
settings.register_profile("reproducible", derandomize=True, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


@pytest.fixture(scope="session")
def examples_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("examples")


@pytest.fixture(scope="session")
def breast_cancer(examples_root: Path) -> Path:
    """A read-only example competition shared by the session's tests."""
    return build_example("breast_cancer", examples_root / "breast_cancer")


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory with a short path: Unix socket paths must fit in 107 bytes."""
    path = Path(tempfile.mkdtemp(prefix="mlm-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def var_tmp_path() -> Iterator[Path]:
    """A fresh directory outside /tmp, as a real task folder or state dir would be: the
    sandbox's /tmp is a private tmpfs, which would hide anything under the host's /tmp
    whatever the sandbox's other rules said."""
    base = Path("/var/tmp")
    if not base.is_dir() or not os.access(base, os.W_OK):
        pytest.skip("/var/tmp is not writable here")
    path = Path(tempfile.mkdtemp(prefix="mlm-", dir=base))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def daemon_config(state_dir: Path, socket: Path, extra: dict[str, object] | None = None,
                  **search: object) -> Config:
    """A test daemon's config; `search` sets [search] keys, `extra` any dotted key."""
    overrides: dict[str, object] = {
        "daemon.state_dir": str(state_dir),
        "daemon.socket": str(socket),
        "search.parallel": 2,
        "execution.max_concurrent_nodes": 2,
        "execution.node_timeout_s": 120,
        "execution.kill_grace_s": 1.0,
        # Stops interrupt running nodes at once unless a test is about the grace period.
        "daemon.stop_grace_s": 0,
    }
    overrides.update({f"search.{k}": v for k, v in search.items()})
    overrides.update(extra or {})
    return load_config(None, environ={}, overrides=overrides)


@pytest.fixture
def config(short_dir: Path) -> Config:
    """A daemon config on a private state dir and socket."""
    return daemon_config(short_dir / "state", short_dir / "api.sock")


@pytest.fixture
async def daemon(config: Config) -> AsyncIterator[Daemon]:
    d = Daemon(config)
    await d.start()
    try:
        yield d
    finally:
        await d.stop()


@pytest.fixture
async def client(daemon: Daemon) -> AsyncIterator[Client]:
    async with Client(daemon.socket_path) as c:
        yield c


TERMINAL = {"finished", "cancelled", "failed"}


async def wait_terminal(client: Client, task_id: str, timeout_s: float = 240) -> dict[str, Any]:
    """Poll a task until it finishes, is cancelled or fails."""
    async with asyncio.timeout(timeout_s):
        while True:
            task = await client.task(task_id)
            if task["state"] in TERMINAL:
                return task
            await asyncio.sleep(0.1)


async def restart_and_finish(config: Config, task_id: str) -> tuple[dict[str, Any],
                                                                   list[dict[str, Any]]]:
    """Start a fresh daemon on `config`, wait for the task to end; (task, its nodes)."""
    daemon = Daemon(config)
    await daemon.start()
    try:
        async with Client(daemon.socket_path) as client:
            final = await wait_terminal(client, task_id)
            return final, await client.nodes(task_id)
    finally:
        await daemon.stop()


Refusal = TypeVar("Refusal", bound=BaseException)


async def start_refused(config: Config, error: type[Refusal]) -> Refusal:
    """Start a daemon on `config` that must refuse to start with `error`; the error (the
    refused daemon is stopped, so its lock and anything it made are released)."""
    daemon = Daemon(config)
    try:
        with pytest.raises(error) as refused:
            await daemon.start()
    finally:
        await daemon.stop()
    return refused.value


async def daemon_command_refused(state_dir: Path, socket: Path) -> tuple[int | None, list[str]]:
    """Run `mlmaster daemon` on `state_dir` as a user would, with no MLMASTER_* from this
    environment, where it must refuse to start: its exit status and its stderr's lines."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLMASTER_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mlmaster_daemon", "daemon", "--state-dir", str(state_dir),
        "--socket", str(socket),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env)
    try:
        async with asyncio.timeout(120):
            _out, err = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return proc.returncode, err.decode().splitlines()
