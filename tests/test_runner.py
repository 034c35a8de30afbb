"""Node scripts run as real subprocesses: stopped with everything they started at the time
limit, and held to their memory, process, file-size and workspace limits by a cgroup and
rlimits (sandbox "none" here; tests/test_sandbox.py covers bubblewrap)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import textwrap
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import psutil
import pytest

from mlmaster_daemon.execution import runner
from mlmaster_daemon.execution.cgroups import JobCgroup, create_job_cgroup
from mlmaster_daemon.execution.lease import JobLimits, Lease, ProcessIdentity
from mlmaster_daemon.execution.processes import kill_identity
from mlmaster_daemon.execution.runner import run_script
from mlmaster_daemon.execution.workspace import Workspace


def _cgroup_usable() -> bool:
    probe = create_job_cgroup("probe", JobLimits(memory_mb=64, max_processes=8))
    probe.remove()
    return probe.limits_memory and probe.limits_processes


needs_cgroup = pytest.mark.skipif(not _cgroup_usable(),
                                  reason="no writable memory+pids cgroup (v1 or v2) here")


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


def _still_until(path: Path) -> Callable[[], float]:
    """A clock for run_script's time limit that stands still until `path` exists, then jumps an
    hour on: the limit runs out when the script is ready for it, however loaded the machine."""
    return lambda: 3600.0 if path.exists() else 0.0


async def _written(path: Path) -> str:
    """The text of `path` once the script has written it (60 s at most: a safety net against a
    hang, not a timing check)."""
    async with asyncio.timeout(60):
        while not (path.exists() and path.read_text()):
            await asyncio.sleep(0.01)
    return path.read_text()


def _strays(ws: Workspace) -> list[int]:
    """Live processes whose working directory is in the workspace."""
    root = str(ws.root.resolve())
    found = []
    for proc in psutil.process_iter():
        try:
            cwd = proc.cwd()
        except psutil.Error:
            continue
        if (cwd == root or cwd.startswith(root + "/")) and _alive(proc.pid):
            found.append(proc.pid)
    return found


async def test_a_script_that_loops_forever_is_killed_with_its_children(tmp_path: Path) -> None:
    ws = _workspace(tmp_path, """
        import subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        open("child.pid", "w").write(str(child.pid))
        while True:
            time.sleep(0.1)
    """)
    result = await run_script(ws, timeout_s=3, kill_grace_s=0.5,
                              clock=_still_until(ws.root / "child.pid"))
    assert result.timed_out
    assert result.exit_code is None
    assert result.reason == "killed after its 3 s time limit"
    child = int((ws.root / "child.pid").read_text())
    assert not _alive(result.pid)
    assert not _alive(child)


async def test_a_script_that_ignores_sigterm_is_killed(tmp_path: Path) -> None:
    ws = _workspace(tmp_path, """
        import signal, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        open("ready", "w").close()
        while True:
            time.sleep(0.1)
    """)
    # The limit runs out only once SIGTERM is ignored, so it is the KILL that ends the script.
    result = await run_script(ws, timeout_s=2, kill_grace_s=0.5,
                              clock=_still_until(ws.root / "ready"))
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
    pid = int(await _written(ws.root / "pid"))
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    assert not _alive(pid)


async def test_a_second_cancel_during_the_grace_period_kills_the_job_at_once(
    tmp_path: Path,
) -> None:
    ws = _workspace(tmp_path, """
        import os, signal, time
        # Notes the SIGTERM and carries on, as if it ignored it.
        signal.signal(signal.SIGTERM, lambda *_: open("got-term", "w").write("yes"))
        open("pid", "w").write(str(os.getpid()))
        time.sleep(600)
    """)
    run = asyncio.create_task(run_script(ws, timeout_s=600, kill_grace_s=60))
    pid = int(await _written(ws.root / "pid"))
    run.cancel()
    await _written(ws.root / "got-term")
    assert _alive(pid)  # in its grace period, past its SIGTERM
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(run, 10)
    assert not _alive(pid)


@needs_cgroup
async def test_a_grandchild_that_escapes_with_setsid_is_killed_through_the_cgroup(
    tmp_path: Path,
) -> None:
    ws = _workspace(tmp_path, """
        import os, subprocess, time
        escaped = subprocess.Popen(["setsid", "sleep", "600"])
        while os.getsid(escaped.pid) == os.getsid(0):
            time.sleep(0.01)
        open("escaped.pid", "w").write(str(escaped.pid))
        print("escaped")
    """)
    result = await run_script(ws, timeout_s=30)
    assert result.exit_code == 0 and result.reason is None
    assert ws.stdout.read_text().strip() == "escaped"
    assert not _alive(int((ws.root / "escaped.pid").read_text()))


@needs_cgroup
async def test_a_fork_bomb_is_contained_and_stopped_with_the_process_limit_reason(
    tmp_path: Path,
) -> None:
    ws = _workspace(tmp_path, """
        import os
        while True:
            try:
                os.fork()
            except OSError:
                pass
    """)
    result = await run_script(ws, timeout_s=30, kill_grace_s=0.5,
                              limits=JobLimits(max_processes=50))
    assert result.reason == "process limit reached (50)"
    assert result.exit_code is None and not result.timed_out
    assert not _strays(ws)
    # The daemon's side can still start processes.
    after = await asyncio.create_subprocess_exec("true")
    assert await after.wait() == 0


@needs_cgroup
async def test_a_memory_hog_is_stopped_with_the_memory_limit_reason(tmp_path: Path) -> None:
    ws = _workspace(tmp_path, """
        import time
        chunks = []
        for _ in range(100):
            chunks.append(b"\\x01" * (10 << 20))
            time.sleep(0.01)
        print("survived 1 GB")
    """)
    result = await run_script(ws, timeout_s=60, kill_grace_s=0.5,
                              limits=JobLimits(memory_mb=200))
    assert result.reason == "memory limit exceeded (200 MiB)"
    assert "survived" not in ws.stdout.read_text()
    assert not _strays(ws)


def _without_cgroup(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runner, "create_job_cgroup", lambda job_id, limits: JobCgroup(
        memory_mb=limits.memory_mb, max_processes=limits.max_processes, note="disabled"))


async def test_without_a_cgroup_a_cpu_job_is_held_to_its_memory_by_rlimit_as(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    _without_cgroup(monkeypatch)
    ws = _workspace(tmp_path, """
        chunks = [b"\\x01" * (10 << 20) for _ in range(100)]
        print("survived 1 GB")
    """)
    result = await run_script(ws, timeout_s=60, limits=JobLimits(memory_mb=200))
    assert result.exit_code == 1
    assert result.reason == "memory limit exceeded (200 MiB)"
    assert "MemoryError" in ws.stderr.read_text()


async def test_a_gpu_job_never_gets_an_address_space_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    _without_cgroup(monkeypatch)
    ws = _workspace(tmp_path, """
        import resource
        print(resource.getrlimit(resource.RLIMIT_AS))
    """)
    lease = Lease(slot_id="gpu0.0", task_id="t", cpus=(0,), gpu_uuid="GPU-1234")
    result = await run_script(ws, timeout_s=30, lease=lease, limits=JobLimits(memory_mb=200))
    assert result.exit_code == 0
    assert ws.stdout.read_text().strip() == "(-1, -1)"


async def test_a_file_past_the_size_limit_fails_the_job_with_its_reason(tmp_path: Path) -> None:
    ws = _workspace(tmp_path, """
        with open("working/big.bin", "wb") as f:
            for _ in range(3):
                f.write(b"x" * (1 << 20))
    """)
    result = await run_script(ws, timeout_s=30, limits=JobLimits(max_file_size_mb=1))
    assert result.exit_code == 1
    assert result.reason == "file size limit exceeded (1 MiB)"
    assert (ws.root / "working" / "big.bin").stat().st_size == 1 << 20
    assert "File too large" in ws.stderr.read_text()


async def test_a_workspace_that_outgrows_its_limit_stops_the_job(tmp_path: Path) -> None:
    ws = _workspace(tmp_path, """
        import os, time
        with open("working/grow.bin", "wb") as f:
            for _ in range(200):
                f.write(os.urandom(1 << 20))
                f.flush()
                time.sleep(0.02)
        print("wrote 200 MiB")
    """)
    result = await run_script(ws, timeout_s=60, kill_grace_s=0.5,
                              limits=JobLimits(max_workspace_mb=5))
    assert result.reason == "workspace larger than 5 MiB"
    assert result.exit_code is None and not result.timed_out
    assert (ws.root / "working" / "grow.bin").stat().st_size < 200 << 20
    assert "wrote" not in ws.stdout.read_text()


async def test_the_job_runs_on_the_leased_cpus_with_the_lease_environment(
    tmp_path: Path,
) -> None:
    cpus = (max(os.sched_getaffinity(0)),)
    lease = Lease(slot_id="cpu0", task_id="t", cpus=cpus)
    ws = _workspace(tmp_path, """
        import json, os, subprocess, sys
        child = subprocess.run([sys.executable, "-c",
                                "import os; print(sorted(os.sched_getaffinity(0)))"],
                               capture_output=True, text=True).stdout
        print(json.dumps({"own": sorted(os.sched_getaffinity(0)), "child": json.loads(child),
                          "cuda": os.environ["CUDA_VISIBLE_DEVICES"],
                          "omp": os.environ["OMP_NUM_THREADS"]}))
    """)
    result = await run_script(ws, timeout_s=30, lease=lease)
    assert result.exit_code == 0, ws.stderr.read_text()
    seen = json.loads(ws.stdout.read_text())
    assert seen == {"own": list(cpus), "child": list(cpus), "cuda": "", "omp": "1"}


async def test_extra_env_reaches_the_job_but_systemd_variables_never_do(tmp_path: Path) -> None:
    ws = _workspace(tmp_path, """
        import json, os
        print(json.dumps(dict(os.environ)))
    """)
    limits = JobLimits(extra_env={"MLM_SEED": "7", "NOTIFY_SOCKET": "/run/x",
                                  "LISTEN_FDS": "3", "WATCHDOG_USEC": "1"})
    await run_script(ws, timeout_s=30, limits=limits)
    env = json.loads(ws.stdout.read_text())
    assert env["MLM_SEED"] == "7"
    assert not {"NOTIFY_SOCKET", "LISTEN_FDS", "WATCHDOG_USEC"} & set(env)


async def test_on_start_gets_the_identity_of_the_running_child(tmp_path: Path) -> None:
    ws = _workspace(tmp_path, """
        import time
        time.sleep(0.3)
    """)
    seen: list[tuple[ProcessIdentity, float]] = []

    async def on_start(identity: ProcessIdentity) -> None:
        started = psutil.Process(identity.pid).create_time() - psutil.boot_time()
        seen.append((identity, started))

    result = await run_script(ws, timeout_s=30, on_start=on_start)
    identity, started = seen[0]
    assert identity.pid == result.pid
    assert abs(identity.start_time - started) < 0.02
    assert identity.boot_id == Path("/proc/sys/kernel/random/boot_id").read_text().strip()


def test_kill_identity_refuses_a_forged_identity_and_kills_the_real_process_group() -> None:
    proc = subprocess.Popen(["sh", "-c", "sleep 600 & wait"], start_new_session=True)
    try:
        leader = psutil.Process(proc.pid)
        real = ProcessIdentity(proc.pid, leader.create_time() - psutil.boot_time(),
                               Path("/proc/sys/kernel/random/boot_id").read_text().strip())
        for _ in range(500):
            if leader.children():
                break
            time.sleep(0.01)
        sleeper = leader.children()[0].pid
        assert not kill_identity(replace(real, start_time=real.start_time + 1.0))
        assert not kill_identity(replace(real, boot_id="0" * 36))
        assert proc.poll() is None and _alive(sleeper)
        assert kill_identity(real)
        assert proc.wait(timeout=5) == -9
        for _ in range(500):
            if not _alive(sleeper):
                break
            time.sleep(0.01)
        assert not _alive(sleeper)
        assert not kill_identity(real)
    finally:
        proc.kill()
        proc.wait()
