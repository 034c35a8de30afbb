"""Runs one node's script as a supervised subprocess.

The command is the launcher (joins the job's cgroup, pins the lease's CPUs, sets rlimits; see
`launch.py`), then the sandbox wrapper (bubblewrap or nothing; see `sandbox.py`), then
`python solution.py`. The child gets its own session (so its process group can be signalled),
an environment built from an allowlist plus the lease's GPU variables, stdout/stderr into files
(never pipes: a grandchild holding a pipe could hang the wait), and its workspace as cwd.

While it runs, its cgroup's OOM and process-limit counters and the workspace's size are
polled; a breach, the time limit or cancellation stops it: SIGTERM to its processes, a grace
period, SIGKILL to the group, then everything left in its cgroup, and the child is always
reaped. Without bubblewrap and without a cgroup, a process that left the group with `setsid`
is beyond reach: the process group is the only handle then.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import shutil
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from mlmaster_daemon import untrusted
from mlmaster_daemon.execution.cgroups import JobCgroup, create_job_cgroup
from mlmaster_daemon.execution.lease import JobLimits, Lease, ProcessIdentity
from mlmaster_daemon.execution.processes import (
    group_members,
    identity_of,
    signal_group,
    signal_process,
)
from mlmaster_daemon.execution.sandbox import (
    SANDBOX_ENV,
    LaunchOptions,
    bwrap_argv,
    ensure_input_link,
    interpreter_paths,
    resolve_sandbox,
)
from mlmaster_daemon.execution.workspace import Workspace
from mlmaster_daemon.logs import get_logger

log = get_logger("mlmaster.runner")

# What a training script may need from the daemon's environment; nothing else passes, so
# API keys and systemd's NOTIFY_SOCKET/LISTEN_*/WATCHDOG_* never reach generated code.
ENV_ALLOWLIST = ("PATH", "LANG", "LC_ALL", "TZ", "HOME", "USER", "LOGNAME", "TMPDIR")
# Refused even from JobLimits.extra_env: they would let a job talk to systemd as the daemon.
_SYSTEMD_PREFIXES = ("NOTIFY_SOCKET", "LISTEN_", "WATCHDOG_")
POLL_S = 0.5
MIB = 1024 * 1024
_STDERR_TAIL = 16384
_noted_cgroup = False


@dataclass(frozen=True)
class RunResult:
    """How a run ended.

    `exit_code` is None when the daemon stopped the job (time limit, a limit breach, or
    cancellation); otherwise the script's status: -N when killed by signal N, or 128 + N under
    bubblewrap, which reports its child's signal that way. `reason` says, in words for the
    user and the debug prompt, which limit stopped or failed the job, even if the script then
    exited by itself; None when no limit was hit."""

    exit_code: int | None
    timed_out: bool
    duration_s: float
    pid: int
    reason: str | None = None
    # The signal that ended the script, when one did (read from -N, or 128 + N in the sandbox).
    signal: int | None = None

    @property
    def ending(self) -> str:
        """How the script ended, in words: "killed by SIGKILL", "exited with code 2"."""
        if self.signal is not None:
            return f"killed by {signal_name(self.signal)}"
        return f"exited with code {self.exit_code}"


def signal_name(number: int) -> str:
    """SIGKILL for 9; "signal N" for a number with no name."""
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def endingsignal_process(code: int | None, sandboxed: bool) -> int | None:
    """The signal behind an exit status: -N from a direct child, 128 + N from bubblewrap
    (which reports its child's death that way)."""
    if code is None:
        return None
    if code < 0:
        return -code
    if sandboxed and 128 < code < 128 + signal.NSIG:
        return code - 128
    return None


def child_env(parent: Mapping[str, str], threads: int = 1) -> dict[str, str]:
    """The allowlisted part of `parent`, plus unbuffered output and `threads` BLAS threads."""
    env = {k: parent[k] for k in ENV_ALLOWLIST if k in parent}
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONHASHSEED"] = "0"
    # Numeric libraries default to one thread per core; the slot decides instead.
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(threads)
    return env


def job_env(lease: Lease | None, limits: JobLimits, sandboxed: bool,
            parent: Mapping[str, str] | None = None) -> dict[str, str]:
    """The job's whole environment: `child_env`, the lease's GPU variables, the sandbox's
    cache locations, then `limits.extra_env` (minus systemd's variables)."""
    threads = len(lease.cpus) if lease is not None and lease.cpus else 1
    env = child_env(os.environ if parent is None else parent, threads)
    if lease is not None:
        env.update(lease.env())
    if sandboxed:
        env.update(SANDBOX_ENV)
    env.update({k: v for k, v in limits.extra_env.items() if not k.startswith(_SYSTEMD_PREFIXES)})
    return env

def disk_usage(root: Path) -> int:
    """Bytes allocated on disk under `root`, like `du`: symlinks not followed, hard links once."""
    total = 0
    seen: set[tuple[int, int]] = set()
    stack = [root]
    while stack:
        try:
            entries = os.scandir(stack.pop())
        except OSError:
            continue
        with entries:
            for entry in entries:
                try:
                    st = entry.stat(follow_symlinks=False)
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(Path(entry.path))
                except OSError:
                    continue
                if st.st_nlink > 1:
                    if (st.st_dev, st.st_ino) in seen:
                        continue
                    seen.add((st.st_dev, st.st_ino))
                total += st.st_blocks * 512
    return total


def _seconds(value: float) -> str:
    return f"{value:.0f}" if value >= 10 or float(value).is_integer() else f"{value:.1f}"


def _workspace_reason(ws: Workspace, limits: JobLimits) -> str | None:
    limit = limits.max_workspace_mb
    if limit > 0 and disk_usage(ws.root) > limit * MIB:
        return f"workspace larger than {limit} MiB"
    return None


def _killed_by(code: int | None, sig: signal.Signals, sandboxed: bool) -> bool:
    return code == -sig or (sandboxed and code == 128 + sig)


def _stderr_tail(ws: Workspace) -> str:
    return untrusted.text_tail(ws.root, ws.stderr.name, _STDERR_TAIL)


@dataclass
class _Job:
    proc: asyncio.subprocess.Process
    cgroup: JobCgroup
    sandboxed: bool
    grace_s: float
    ws: Workspace
    limits: JobLimits
    address_space_mb: int

    next_disk_check: float = 0.0

    def _breach(self, final: bool = False) -> str | None:
        reason = self.cgroup.breach()
        if reason is not None or (not final and time.monotonic() < self.next_disk_check):
            return reason
        walk_started = time.monotonic()
        reason = _workspace_reason(self.ws, self.limits)
        # A workspace of many files is slow to walk: never spend more than ~5% of a CPU on it.
        walked = time.monotonic() - walk_started
        self.next_disk_check = time.monotonic() + max(POLL_S, 20 * walked)
        return reason

    async def supervise(self, deadline: float, timeout_s: float,
                        clock: Callable[[], float]) -> tuple[bool, str | None]:
        """Wait for the exit, polling the limits, until `deadline` on `clock`. (timed out,
        reason it was stopped)."""
        waiter = asyncio.ensure_future(self.proc.wait())
        polls = self.cgroup.version != "none" or self.limits.max_workspace_mb > 0
        try:
            while True:
                remaining = deadline - clock()
                if remaining <= 0:
                    if await asyncio.to_thread(self.has_exited):
                        # It ended while the daemon could not look (stopped by SIGSTOP, a
                        # stalled loop): an exit is not a timeout.
                        await waiter
                        return False, None
                    await self.stop()
                    return True, f"killed after its {_seconds(timeout_s)} s time limit"
                await asyncio.wait({waiter}, timeout=min(POLL_S, remaining))
                if waiter.done():
                    return False, None
                reason = await asyncio.to_thread(self._breach) if polls else None
                if reason is not None:
                    await self.stop()
                    return False, reason
        finally:
            waiter.cancel()

    def has_exited(self) -> bool:
        """Whether the script has ended, even if the event loop has not heard of it yet."""
        if self.proc.returncode is not None:
            return True
        try:
            pidfd = os.pidfd_open(self.proc.pid)
        except ProcessLookupError:
            return True  # already reaped by the child watcher
        except OSError:
            return False  # no pidfd here: only the loop can tell
        try:
            poller = select.poll()
            poller.register(pidfd, select.POLLIN)
            return bool(poller.poll(0))
        finally:
            os.close(pidfd)

    def _term(self) -> None:
        pgid = self.proc.pid
        if self.sandboxed:
            # The outer bwrap would die of SIGTERM and take the sandbox down with SIGKILL at
            # once: signal only the processes inside, so the script gets its grace period.
            targets = group_members(pgid) | self.cgroup.pids()
            for pid in targets - {pgid}:
                signal_process(pid, signal.SIGTERM)
            return
        signal_group(pgid, signal.SIGTERM)
        for pid in self.cgroup.pids():
            signal_process(pid, signal.SIGTERM)

    async def stop(self) -> None:
        """SIGTERM, grace, SIGKILL to the group and the cgroup; the child is reaped."""
        try:
            if self.proc.returncode is None:
                await asyncio.to_thread(self._term)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.proc.wait(), self.grace_s)
            await asyncio.to_thread(self.kill_now)
        except asyncio.CancelledError:
            # The event loop is being torn down and cancels this too: kill before leaving.
            self.kill_now()
            raise
        await self.proc.wait()

    def kill_now(self) -> None:
        """SIGKILL whatever is left in the group and the cgroup (a few cgroupfs reads)."""
        signal_group(self.proc.pid, signal.SIGKILL)
        self.cgroup.kill_all()

    def exit_reason(self) -> str | None:
        """Which limit the script hit before it exited by itself, if any."""
        code = self.proc.returncode
        breach = self._breach(final=True)
        if breach is not None:
            return breach
        tail = _stderr_tail(self.ws) if code else ""
        file_mb = self.limits.max_file_size_mb
        if file_mb and (_killed_by(code, signal.SIGXFSZ, self.sandboxed)
                        or "File too large" in tail):
            return f"file size limit exceeded ({file_mb} MiB)"
        if _killed_by(code, signal.SIGKILL, self.sandboxed) and self.cgroup.memory_limit_hits():
            return self.cgroup.memory_reason()
        if self.address_space_mb and "MemoryError" in tail:
            return f"memory limit exceeded ({self.limits.memory_mb} MiB)"
        return None


def _note(cgroup: JobCgroup) -> None:
    global _noted_cgroup  # noqa: PLW0603 - log the missing cgroup once, not once per job
    if cgroup.version == "none" and not _noted_cgroup:
        _noted_cgroup = True
        log.warning("jobs run without a cgroup: no memory/process containment", why=cgroup.note)


def _launch_options(lease: Lease | None, limits: JobLimits, cgroup: JobCgroup) -> LaunchOptions:
    cpu_only = lease is None or lease.gpu_uuid is None
    return LaunchOptions(
        cgroup_procs=tuple(cgroup.procs_files()),
        cpus=lease.cpus if lease is not None else (),
        file_size_mb=limits.max_file_size_mb,
        max_processes=0 if cgroup.limits_processes else limits.max_processes,
        # Never for a GPU job: CUDA reserves far more address space than it uses.
        address_space_mb=limits.memory_mb if cpu_only and not cgroup.limits_memory else 0,
        parent_pid=os.getpid(),
    )


async def run_script(
    ws: Workspace,
    timeout_s: float,
    kill_grace_s: float = 5.0,
    python: str | None = None,
    on_start: Callable[[ProcessIdentity], Awaitable[None]] | None = None,
    *,
    lease: Lease | None = None,
    limits: JobLimits | None = None,
    sandbox: str = "none",
    public_dir: Path | None = None,
    job_id: str = "job",
    hidden_paths: Sequence[Path] = (),
    clock: Callable[[], float] = time.monotonic,
    readable_paths: Sequence[Path] = (),
) -> RunResult:
    """Run `python solution.py` in `ws` under `lease`, `limits` and `sandbox` ("auto",
    "bwrap" or "none"); never leaves a process of the job behind.

    `on_start` is awaited right after the spawn with the child's identity (pid, start time,
    boot id), before anything else; if it raises, the job is stopped and the error propagates.
    `public_dir` is the task's data, read-only at `input/` in the sandbox; `hidden_paths` are
    made invisible in it, and `readable_paths` (single files outside the public folder, such
    as a sample submission kept only beside the hidden answers) visible read-only.
    Cancellation stops the job the same way as a timeout, then re-raises. `clock` measures
    the time limit (monotonic seconds). Raises SandboxUnavailable when sandbox="bwrap"
    cannot be honoured.
    """
    limits = limits or JobLimits()
    mode = await asyncio.to_thread(resolve_sandbox, sandbox)
    sandboxed = mode == "bwrap"
    cgroup = await asyncio.to_thread(create_job_cgroup, job_id, limits)
    _note(cgroup)
    try:
        options = _launch_options(lease, limits, cgroup)
        wrapper: list[str] = []
        if public_dir is not None:
            ensure_input_link(ws.root, public_dir)
        if sandboxed:
            gpu = lease is not None and lease.gpu_uuid is not None
            # Off the event loop: it walks /etc and resolves many paths (0.1 s under load).
            wrapper = await asyncio.to_thread(
                lambda: bwrap_argv(ws.root, public_dir=public_dir, gpu=gpu, hidden=hidden_paths,
                                   bwrap=shutil.which("bwrap") or "bwrap",
                                   keep=interpreter_paths(python or sys.executable),
                                   readable=readable_paths))
        argv = [*options.argv(sys.executable), *wrapper, python or sys.executable,
                ws.script.name]
        started = clock()
        with ws.create_file(ws.stdout.name) as out, ws.create_file(ws.stderr.name) as err:
            proc = await asyncio.create_subprocess_exec(
                *argv, cwd=ws.root, stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=err,
                env=job_env(lease, limits, sandboxed), start_new_session=True,
            )
        job = _Job(proc, cgroup, sandboxed, kill_grace_s, ws, limits, options.address_space_mb)
        try:
            if on_start is not None:
                await on_start(identity_of(proc.pid))
            timed_out, reason = await job.supervise(started + timeout_s, timeout_s, clock)
        except BaseException:
            await _stop_shielded(job)
            raise
        stopped = timed_out or reason is not None
        # The script returned; anything it left running goes too.
        await asyncio.to_thread(job.kill_now)
        if not stopped:
            reason = await asyncio.to_thread(job.exit_reason)
        return RunResult(
            exit_code=None if stopped else proc.returncode,
            timed_out=timed_out,
            duration_s=clock() - started,
            pid=proc.pid,
            reason=reason,
            signal=None if stopped else endingsignal_process(proc.returncode, sandboxed),
        )
    finally:
        await _remove(cgroup)


async def _stop_shielded(job: _Job) -> None:
    stopping = asyncio.ensure_future(job.stop())
    try:
        await asyncio.shield(stopping)
    except asyncio.CancelledError:
        # Cancelled again during the grace period (daemon shutting down): no more grace.
        job.kill_now()
        raise


async def _remove(cgroup: JobCgroup) -> None:
    try:
        await asyncio.to_thread(cgroup.remove)
    except asyncio.CancelledError:
        # Cancelled again while cleaning up: finish here, a cgroup must not leak.
        cgroup.remove(1.0)
        raise
