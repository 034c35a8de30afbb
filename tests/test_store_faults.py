"""A database or state dir the daemon's user cannot write (a root-owned 0444 file, an immutable
file or folder) stops `mlmaster daemon` with one line naming the path and what to do, before it
opens anything, instead of a traceback from deep inside SQLite."""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from mlmaster_daemon.store import Store

# `mlmaster daemon` as user nobody. The interpreter lives under /root here, which nobody may
# not read, so the process starts as root, loads what `mlmaster daemon` loads, then drops to
# nobody for good before the command runs.
AS_NOBODY = """
import os, sys
import mlmaster_daemon.cli as cli
import concurrent.futures.thread, mlmaster_daemon.daemon, mlmaster_daemon.logs
uid = int(sys.argv[1])
os.setgroups([])
os.setgid(uid)
os.setuid(uid)
sys.exit(cli.main(sys.argv[2:]))
"""

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to change users")


def _nobody() -> pwd.struct_passwd:
    return pwd.getpwnam("nobody")


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("MLMASTER_")}


def _daemon(state: Path, *, as_nobody: bool) -> subprocess.CompletedProcess[str]:
    args = ["daemon", "--state-dir", str(state), "--socket", str(state / "d.sock")]
    command = ([sys.executable, "-c", AS_NOBODY, str(_nobody().pw_uid), *args] if as_nobody
               else [sys.executable, "-m", "mlmaster_daemon", *args])
    return subprocess.run(command, capture_output=True, text=True, timeout=120, env=_env(),
                          check=False)


def _error_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = result.stderr.splitlines()
    assert result.returncode == 1 and len(lines) == 1, (result.returncode, result.stderr)
    assert lines[0].startswith("mlmaster: error: ")
    return lines[0]


@pytest.fixture
def state(short_dir: Path) -> Iterator[Path]:
    """A state dir holding a real database (written by root), reachable by nobody."""
    short_dir.chmod(0o755)
    path = short_dir / "state"

    async def make() -> None:
        store = await Store.open(path / "mlmaster.db")
        await store.close()

    asyncio.run(make())
    yield path
    for found in (path, *path.rglob("*")):
        subprocess.run(["chattr", "-i", str(found)], capture_output=True, check=False)


@needs_root
def test_a_database_file_the_daemon_user_cannot_write_is_named_with_what_to_do(
    state: Path,
) -> None:
    nobody = _nobody()
    shutil.chown(state, nobody.pw_uid, nobody.pw_gid)
    db = state / "mlmaster.db"
    db.chmod(0o444)
    line = _error_line(_daemon(state, as_nobody=True))
    assert line == (
        f"mlmaster: error: database file {db} is not writable by the daemon's user nobody "
        f"(uid {nobody.pw_uid}) (Permission denied): make it writable by that user, e.g. "
        f"`chown nobody {db} && chmod u+rw {db}`, or run the daemon as its owner")
    assert not (state / "d.sock").exists()


@needs_root
def test_a_state_dir_the_daemon_user_cannot_write_is_named_with_what_to_do(
    state: Path,
) -> None:
    line = _error_line(_daemon(state, as_nobody=True))
    assert line.startswith(
        f"mlmaster: error: state dir {state} is not writable by the daemon's user nobody ")
    assert f"chown nobody {state} && chmod u+rwx {state}" in line


@needs_root
@pytest.mark.parametrize("immutable", ["mlmaster.db", "."])
def test_an_immutable_database_or_state_dir_is_named_with_chattr(
    state: Path, immutable: str,
) -> None:
    target = (state / immutable).resolve()
    if subprocess.run(["chattr", "+i", str(target)], capture_output=True,
                      check=False).returncode != 0:
        pytest.skip(f"this file system does not support immutable files ({target})")
    line = _error_line(_daemon(state, as_nobody=False))
    assert f" {target} cannot be written, not even by its owner: it is immutable" in line
    assert f"`chattr -i -a {target}`" in line
