"""Whatever a node's script leaves in its workspace, the daemon reads it bounded, never through
a link, and never passes a secret on: a 3 GiB sparse stderr, logs replaced by links to key
files or by FIFOs, a submission folder that points elsewhere, a huge metrics.json. Real
scripts in real subprocesses (sandbox "none": what is tested here is the daemon's side)."""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import textwrap
import tracemalloc
from pathlib import Path

import pytest

from mlmaster_daemon import untrusted
from mlmaster_daemon.config import load_config
from mlmaster_daemon.evaluation import evaluate
from mlmaster_daemon.execution.lease import JobLimits
from mlmaster_daemon.execution.limits import Machine, job_limits
from mlmaster_daemon.execution.runner import RunResult, run_script
from mlmaster_daemon.execution.workspace import Workspace
from mlmaster_daemon.redact import forget_secrets, register_secret
from mlmaster_daemon.tasks.competition import load_task
from mlmaster_daemon.tasks.spec import TaskSpec

GIB = 1024**3
KEY = "sk-live-0123456789abcdef"


@pytest.fixture
def spec(breast_cancer: Path) -> TaskSpec:
    return load_task(breast_cancer)


@pytest.fixture
def secret_file(tmp_path: Path) -> Path:
    """A key file outside the workspace, and the key registered as the daemon does."""
    path = tmp_path / "keys" / "api_key"
    path.parent.mkdir()
    path.write_text(KEY + "\n")
    register_secret(KEY)
    yield path
    forget_secrets()


async def _run(tmp_path: Path, spec: TaskSpec, code: str, **limits: int) -> tuple[Workspace,
                                                                                  RunResult]:
    ws = Workspace.create(tmp_path / "ws", spec.public_dir, textwrap.dedent(code))
    result = await run_script(ws, timeout_s=60, kill_grace_s=0.5, sandbox="none",
                              public_dir=spec.public_dir, limits=JobLimits(**limits))
    return ws, result


async def test_a_3_gib_sparse_stderr_is_read_by_its_tail_only(tmp_path: Path,
                                                              spec: TaskSpec) -> None:
    ws, result = await _run(tmp_path, spec, """
        import os, sys
        sys.stderr.write("ValueError: the real error\\n")
        sys.stderr.flush()
        os.ftruncate(2, 3 * 1024**3)
        os.lseek(2, 0, os.SEEK_END)
        sys.stderr.write("\\nRuntimeError: last words\\n")
        sys.stderr.flush()
        raise SystemExit(1)
    """)
    assert ws.stderr.stat().st_size > 3 * GIB
    tracemalloc.start()
    try:
        outcome = evaluate(ws, spec, result, 60)
        tail = ws.output_tail(5000)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert outcome.error == "script exited with code 1: RuntimeError: last words"
    assert tail.endswith("RuntimeError: last words\n") and "cut]" in tail and len(tail) <= 5000
    assert peak < 8 * 1024 * 1024


async def test_a_log_replaced_by_a_link_to_a_key_file_shows_nothing_of_it(
    tmp_path: Path, spec: TaskSpec, secret_file: Path,
) -> None:
    ws, result = await _run(tmp_path, spec, f"""
        import os
        os.remove("stdout.log")
        os.symlink({str(secret_file)!r}, "stdout.log")
        os.remove("stderr.log")
        os.symlink({str(secret_file)!r}, "stderr.log")
        raise SystemExit(3)
    """)
    outcome = evaluate(ws, spec, result, 60)
    assert KEY not in ws.output_tail(5000)
    assert outcome.error == "script exited with code 3"
    assert secret_file.read_text() == KEY + "\n"


async def test_a_key_the_job_prints_is_redacted_from_its_output_and_error(
    tmp_path: Path, spec: TaskSpec, secret_file: Path,
) -> None:
    ws, result = await _run(tmp_path, spec, f"""
        print("found it: {KEY}")
        raise SystemExit("leaking {KEY}")
    """)
    outcome = evaluate(ws, spec, result, 60)
    assert KEY not in ws.output_tail(5000) and "[redacted]" in ws.output_tail(5000)
    assert outcome.error is not None and KEY not in outcome.error
    assert "leaking [redacted]" in outcome.error


async def test_a_log_replaced_by_a_fifo_does_not_hang_the_daemon(tmp_path: Path,
                                                                 spec: TaskSpec) -> None:
    ws, result = await _run(tmp_path, spec, """
        import os
        os.remove("stderr.log")
        os.mkfifo("stderr.log")
        raise SystemExit(2)
    """)
    assert evaluate(ws, spec, result, 60).error == "script exited with code 2"
    assert ws.output_tail(1000) == ""


async def test_a_submission_folder_linked_elsewhere_is_refused(tmp_path: Path,
                                                               spec: TaskSpec) -> None:
    elsewhere = tmp_path / "other-task-best"
    elsewhere.mkdir()
    shutil.copyfile(spec.public_dir / spec.sample_submission_file, elsewhere / "submission.csv")
    ws, result = await _run(tmp_path, spec, f"""
        import json, os, shutil
        shutil.rmtree("submission")
        os.symlink({str(elsewhere)!r}, "submission")
        json.dump({{"validation_metric": 0.9}}, open("metrics.json", "w"))
    """)
    outcome = evaluate(ws, spec, result, 60)
    assert outcome.buggy
    assert outcome.error is not None and outcome.error.startswith(
        "submission.csv must be a regular file, not a symlink")


async def test_a_huge_metrics_file_is_refused_unread(tmp_path: Path, spec: TaskSpec) -> None:
    ws, result = await _run(tmp_path, spec, """
        import os
        with open("metrics.json", "w") as f:
            f.write('{"validation_metric": 0.5, "pad": "')
            f.truncate(1024**3)
    """)
    outcome = evaluate(ws, spec, result, 60)
    assert outcome.error is not None and outcome.error.startswith(
        "metrics.json must be a small regular file")


async def test_laying_out_a_workspace_again_never_writes_through_planted_links(
    tmp_path: Path, spec: TaskSpec,
) -> None:
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "submission.csv").write_text("precious\n")
    (victim / "notes.txt").write_text("precious\n")
    ws, _ = await _run(tmp_path, spec, f"""
        import os, shutil
        shutil.rmtree("submission")
        os.symlink({str(victim)!r}, "submission")
        for name in ("stdout.log", "metrics.json", "solution.py"):
            if os.path.exists(name):
                os.remove(name)
            os.symlink({str(victim / "notes.txt")!r}, name)
    """)
    again = Workspace.create(ws.root, spec.public_dir, "print('second run')\n")
    result = await run_script(again, timeout_s=30, sandbox="none", public_dir=spec.public_dir)
    assert result.exit_code == 0
    assert (victim / "submission.csv").read_text() == "precious\n"
    assert (victim / "notes.txt").read_text() == "precious\n"
    assert (again.root / "submission").is_dir() and not (again.root / "submission").is_symlink()
    assert again.stdout.read_text() == "second run\n"


@pytest.mark.parametrize("sandbox", ["none", "auto"])
async def test_a_job_killed_by_a_signal_says_which(tmp_path: Path, spec: TaskSpec,
                                                   sandbox: str) -> None:
    ws = Workspace.create(tmp_path / "ws", spec.public_dir,
                          "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n")
    result = await run_script(ws, timeout_s=30, sandbox=sandbox, public_dir=spec.public_dir)
    assert result.signal == signal.SIGKILL
    assert evaluate(ws, spec, result, 30).error == "script killed by SIGKILL"


async def test_a_job_that_exited_while_the_daemon_was_stopped_is_not_timed_out(
    tmp_path: Path, spec: TaskSpec,
) -> None:
    now = [1000.0]

    async def stopped_until_it_exits(identity: object) -> None:
        # The daemon is frozen (SIGSTOP) while the script runs to its end, and thaws long
        # after its time limit: nothing of the loop ran in between.
        pid = identity.pid  # type: ignore[attr-defined]
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            return
        select.select([pidfd], [], [])
        os.close(pidfd)
        now[0] += 3600

    ws = Workspace.create(tmp_path / "ws", spec.public_dir, "print('done quickly')\n")
    result = await run_script(ws, timeout_s=5, sandbox="none", public_dir=spec.public_dir,
                              on_start=stopped_until_it_exits, clock=lambda: now[0])
    assert not result.timed_out and result.exit_code == 0 and result.reason is None


def test_job_limits_default_to_a_share_of_the_machine() -> None:
    execution = load_config(None, environ={}).execution
    assert execution.memory_limit_mb == execution.max_file_size_mb == "auto"
    limits = job_limits(execution, Machine(memory_mb=32768, free_disk_mb=100_000, slots=2))
    assert 0 < limits.memory_mb < 32768 // 2
    assert 0 < limits.max_file_size_mb <= 4096 and limits.max_workspace_mb > 0
    # A nearly full disk gives small shares, never a floor above what is free.
    small = job_limits(execution, Machine(memory_mb=2048, free_disk_mb=1000, slots=4))
    assert small.memory_mb == 256
    assert (small.max_file_size_mb, small.max_workspace_mb) == (62, 125)
    given = load_config(None, environ={"MLMASTER_EXECUTION__MEMORY_LIMIT_MB": "0"}).execution
    assert job_limits(given, Machine(4096, 1000, 1)).memory_mb == 0


async def test_a_job_past_the_automatic_memory_limit_is_stopped_with_that_reason(
    tmp_path: Path, spec: TaskSpec,
) -> None:
    limits = job_limits(load_config(None, environ={}).execution,
                        Machine(memory_mb=1536, free_disk_mb=10_000, slots=2))
    assert limits.memory_mb == 256
    ws = Workspace.create(tmp_path / "ws", spec.public_dir, textwrap.dedent("""
        chunks = []
        for _ in range(80):
            chunks.append(b"\\x01" * (10 << 20))
        print("survived 800 MB")
    """))
    result = await run_script(ws, timeout_s=60, kill_grace_s=0.5, sandbox="none",
                              public_dir=spec.public_dir, limits=limits)
    assert result.reason is not None and "memory limit exceeded (256 MiB)" in result.reason
    assert "survived" not in ws.stdout.read_text()


def test_open_beneath_refuses_links_anywhere_on_the_way(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "f").write_text("x")
    (tmp_path / "dirlink").symlink_to(tmp_path / "real")
    (tmp_path / "filelink").symlink_to(tmp_path / "real" / "f")
    assert untrusted.read_bounded(tmp_path, "real/f", 10) == b"x"
    for path in ("dirlink/f", "filelink"):
        with pytest.raises(untrusted.UnsafeFile):
            untrusted.read_bounded(tmp_path, path, 10)
    with pytest.raises(untrusted.UnsafeFile):
        untrusted.read_bounded(tmp_path, "real", 10)
    with pytest.raises(ValueError):
        untrusted.read_bounded(tmp_path, "../etc/passwd", 10)
    with pytest.raises(untrusted.UnsafeFile):
        untrusted.read_bounded(tmp_path, "real/f", 0)


def test_the_evaluated_metrics_file_is_read_whole_only_when_small(tmp_path: Path) -> None:
    (tmp_path / "metrics.json").write_text(json.dumps({"validation_metric": 1.5}))
    assert json.loads(untrusted.read_bounded(tmp_path, "metrics.json", 100)) == {
        "validation_metric": 1.5}


def test_doctor_says_what_the_automatic_limits_come_to_here(tmp_path: Path) -> None:
    from mlmaster_daemon.doctor import run_doctor

    config = load_config(None, environ={}, overrides={"daemon.state_dir": str(tmp_path)})
    line = next(c for c in run_doctor(config) if c.name == "job limits")
    assert line.ok and "no limit" not in line.detail
    assert line.detail.startswith("memory ") and "MiB" in line.detail


async def test_logs_replaced_by_sockets_are_judged_not_raised(tmp_path: Path,
                                                              spec: TaskSpec) -> None:
    ws, result = await _run(tmp_path, spec, """
        import os, socket
        held = []
        for name in ("stdout.log", "stderr.log", "metrics.json"):
            os.remove(name) if os.path.exists(name) else None
            server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            server.bind(name)
            held.append(server)
    """)
    outcome = evaluate(ws, spec, result, 60)
    assert outcome.buggy and outcome.error is not None
    assert outcome.error.startswith("metrics.json must be a small regular file")
    assert ws.output_tail(1000) == ""


def test_laying_a_workspace_out_again_keeps_scratch_but_opens_what_the_job_locked(
    tmp_path: Path, spec: TaskSpec,
) -> None:
    ws = Workspace.create(tmp_path / "ws", spec.public_dir, "print(1)\n")
    (ws.root / "working" / "checkpoint.bin").write_bytes(b"1" * 1024)
    (ws.root / "metrics.json").mkdir()  # a folder where the daemon reads a file
    (ws.root / "submission").chmod(0)
    ws.root.chmod(0)
    again = Workspace.create(ws.root, spec.public_dir, "print(2)\n")
    assert (again.root / "working" / "checkpoint.bin").exists()
    assert not (again.root / "metrics.json").exists()
    assert again.script.read_text() == "print(2)\n"
    assert os.stat(again.root / "submission").st_mode & 0o777 == 0o755


def test_clearing_a_workspace_removes_deep_and_locked_trees(tmp_path: Path,
                                                          spec: TaskSpec) -> None:
    ws = Workspace.create(tmp_path / "ws", spec.public_dir, "print(1)\n")
    (ws.root / "memory.md").write_text("the daemon's own")
    deep = ws.root / "working"
    for level in range(200):
        deep = deep / f"d{level}"
    deep.mkdir(parents=True)
    (deep / "big.bin").write_bytes(b"1" * 1024)
    locked = ws.root / "submission" / "locked"
    locked.mkdir()
    locked.chmod(0)
    ws.clear()
    assert [p.name for p in ws.root.iterdir()] == ["memory.md"]


@pytest.mark.parametrize(("digits", "error"), [
    (400, "validation_metric is too large for a floating-point number"),
    (5000, "metrics.json is not valid JSON: Exceeds the limit"),
])
def test_a_metric_no_float_can_hold_makes_the_node_buggy(tmp_path: Path, spec: TaskSpec,
                                                        digits: int, error: str) -> None:
    ws = Workspace.create(tmp_path / "ws", spec.public_dir, "print(1)\n")
    shutil.copyfile(spec.public_dir / spec.sample_submission_file, ws.submission)
    ws.metrics.write_text('{"validation_metric": ' + "9" * digits + "}")
    done = RunResult(exit_code=0, timed_out=False, duration_s=1.0, pid=1)
    outcome = evaluate(ws, spec, done, 60)
    assert outcome.buggy and outcome.error is not None and outcome.error.startswith(error)
