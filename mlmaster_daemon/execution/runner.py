"""Runs one node's script as a supervised subprocess.

The child gets its own session (so its whole process group can be signalled), an environment
built from an allowlist, stdout/stderr into files (never pipes: a grandchild holding a pipe could
hang the wait), and a wall-clock limit: SIGTERM to the group, a grace period, then SIGKILL, and
the child is always reaped. Processes that escape the group with setsid are the sandbox's
business (pid namespace), a later issue.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from mlmaster_daemon.execution.workspace import Workspace

# What a training script may need from the daemon's environment; nothing else passes, so
# API keys and systemd's NOTIFY_SOCKET/LISTEN_*/WATCHDOG_* never reach generated code.
ENV_ALLOWLIST = ("PATH", "LANG", "LC_ALL", "TZ", "HOME", "USER", "LOGNAME", "TMPDIR")


@dataclass(frozen=True)
class RunResult:
    exit_code: int | None
    timed_out: bool
    duration_s: float
    pid: int


def child_env(parent: Mapping[str, str], threads: int = 1) -> dict[str, str]:
    env = {k: parent[k] for k in ENV_ALLOWLIST if k in parent}
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONHASHSEED"] = "0"
    # Numeric libraries default to one thread per core; the slot decides instead.
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(threads)
    return env


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


async def run_script(
    ws: Workspace,
    timeout_s: float,
    kill_grace_s: float = 5.0,
    python: str | None = None,
    on_start: Callable[[int], object] | None = None,
) -> RunResult:
    """Run `python solution.py` in `ws`; never leaves a process of its group behind.

    Cancellation (task cancelled, daemon stopping) stops the group the same way as a timeout.
    """
    started = time.monotonic()
    with ws.stdout.open("wb") as out, ws.stderr.open("wb") as err:
        proc = await asyncio.create_subprocess_exec(
            python or sys.executable, ws.script.name,
            cwd=ws.root, stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=err,
            env=child_env(os.environ), start_new_session=True,
        )
    if on_start is not None:
        on_start(proc.pid)
    timed_out = False
    try:
        try:
            await asyncio.wait_for(proc.wait(), timeout_s)
        except TimeoutError:
            timed_out = True
            await _stop_group(proc, kill_grace_s)
    except BaseException:
        await asyncio.shield(_stop_group(proc, kill_grace_s))
        raise
    # The script returned; anything it left running in its group goes too.
    _signal_group(proc.pid, signal.SIGKILL)
    return RunResult(
        exit_code=None if timed_out else proc.returncode,
        timed_out=timed_out,
        duration_s=time.monotonic() - started,
        pid=proc.pid,
    )


async def _stop_group(proc: asyncio.subprocess.Process, grace_s: float) -> None:
    _signal_group(proc.pid, signal.SIGTERM)
    try:
        await asyncio.wait_for(proc.wait(), grace_s)
    except TimeoutError:
        pass
    _signal_group(proc.pid, signal.SIGKILL)
    await proc.wait()
