"""The sandbox around a node's script: bubblewrap's view of the system, the launcher, and the
per-job cgroup (layout detection for v1, v2 and none, and a real v2 cgroup where mounted)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from mlmaster_daemon.execution import launch, runner, sandbox
from mlmaster_daemon.execution.cgroups import (
    CgroupLayout,
    JobCgroup,
    create_job_cgroup,
    kill_job_cgroups,
    layout_from,
)
from mlmaster_daemon.execution.lease import JobLimits, Lease
from mlmaster_daemon.execution.runner import run_script
from mlmaster_daemon.execution.sandbox import (
    LaunchOptions,
    SandboxUnavailable,
    bwrap_argv,
    resolve_sandbox,
)
from mlmaster_daemon.execution.workspace import Workspace

HAVE_BWRAP = resolve_sandbox("auto") == "bwrap"
needs_bwrap = pytest.mark.skipif(not HAVE_BWRAP, reason="bubblewrap missing or not working here")


def _workspace(tmp_path: Path, code: str) -> tuple[Workspace, Path]:
    public = tmp_path / "public"
    public.mkdir(exist_ok=True)
    (public / "train.csv").write_text("a,b\n1,2\n")
    return Workspace.create(tmp_path / "ws", public, textwrap.dedent(code)), public


async def _run_sandboxed(tmp_path: Path, code: str, **kwargs: object) -> tuple[Workspace, str]:
    ws, public = _workspace(tmp_path, code)
    result = await run_script(ws, timeout_s=30, sandbox="bwrap", public_dir=public,
                              **kwargs)  # type: ignore[arg-type]
    assert result.exit_code == 0, ws.stderr.read_text()
    return ws, ws.stdout.read_text()


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_resolve_sandbox_picks_bwrap_when_it_works_and_refuses_a_missing_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert resolve_sandbox("none") == "none"
    with pytest.raises(ValueError, match="unknown sandbox"):
        resolve_sandbox("docker")
    monkeypatch.setattr(sandbox.shutil, "which", lambda name: None)
    assert resolve_sandbox("auto") == "none"
    with pytest.raises(SandboxUnavailable, match="apt-get install bubblewrap"):
        resolve_sandbox("bwrap")


def test_a_gpu_lease_binds_the_nvidia_device_nodes(tmp_path: Path) -> None:
    dev = tmp_path / "dev"
    dev.mkdir()
    for name in ("nvidia0", "nvidiactl", "nvidia-uvm", "null"):
        (dev / name).touch()
    ws = tmp_path / "ws"
    ws.mkdir()
    gpu = bwrap_argv(ws, gpu=True, dev=dev)
    bound = [gpu[i + 1] for i, arg in enumerate(gpu) if arg == "--dev-bind"]
    assert bound == [str(dev / n) for n in ("nvidia-uvm", "nvidia0", "nvidiactl")]
    assert "--dev-bind" not in bwrap_argv(ws, gpu=False, dev=dev)


def test_hidden_paths_are_covered_before_the_workspace_is_bound(tmp_path: Path) -> None:
    state = tmp_path / "state"
    ws = state / "nodes" / "1"
    ws.mkdir(parents=True)
    key = tmp_path / "api.key"
    key.write_text("sk-secret")
    args = bwrap_argv(ws, hidden=[state, key])
    assert args[args.index("--tmpfs", args.index("/tmp")) + 1] == str(state.resolve())
    assert args[args.index("/dev/null") + 1] == str(key.resolve())
    assert args.index(str(state.resolve())) < args.index("--bind")


def test_the_launcher_applies_rlimits_and_restores_sigxfsz_before_exec(tmp_path: Path) -> None:
    argv = LaunchOptions(file_size_mb=1).argv(sys.executable)
    with (tmp_path / "out").open("wb") as out:
        done = subprocess.run([*argv, "head", "-c", str(3 << 20), "/dev/zero"], stdout=out,
                              check=False)
    # head is not Python: a write past RLIMIT_FSIZE kills it with SIGXFSZ, as it should.
    assert done.returncode == -signal.SIGXFSZ
    assert (tmp_path / "out").stat().st_size == 1 << 20
    probe = "import resource as r; print(r.getrlimit(r.RLIMIT_FSIZE), r.getrlimit(r.RLIMIT_CORE))"
    shown = subprocess.run([*argv, sys.executable, "-c", probe], capture_output=True, text=True,
                           check=True).stdout
    assert shown.strip() == f"({1 << 20}, {1 << 20}) (0, 0)"


def test_the_launcher_bounds_a_non_root_job_with_rlimit_nproc() -> None:
    setpriv = shutil.which("setpriv")
    if os.geteuid() != 0 or setpriv is None:
        pytest.skip("needs root and setpriv to run the launcher as another user")
    argv = LaunchOptions(max_processes=40).argv(sys.executable)
    nobody = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups"]
    shown = subprocess.run([*nobody, *argv, "grep", "Max processes", "/proc/self/limits"],
                           capture_output=True, text=True, check=True).stdout.split()
    # 40 more than the tasks the user already had (here at least the launcher itself).
    assert 41 <= int(shown[2]) == int(shown[3]) < 41 + 1000


def test_the_launcher_fails_clearly_when_set_up_or_exec_fails(tmp_path: Path) -> None:
    bad_cgroup = LaunchOptions(cgroup_procs=(tmp_path / "missing" / "cgroup.procs",))
    done = subprocess.run([*bad_cgroup.argv(sys.executable), "true"], capture_output=True,
                          text=True, check=False)
    assert done.returncode == launch.EXIT_SETUP_FAILED
    assert "job set-up failed" in done.stderr
    done = subprocess.run([*LaunchOptions().argv(sys.executable), "no-such-program-xyz"],
                          capture_output=True, text=True, check=False)
    assert done.returncode == launch.EXIT_NOT_FOUND


def test_a_job_dies_with_the_daemon_that_started_it(tmp_path: Path) -> None:
    # A stand-in daemon starts a job through the launcher, then is SIGKILLed before it could
    # write anything down: the job must not outlive it.
    parent = textwrap.dedent(f"""
        import os, subprocess, sys, time
        from mlmaster_daemon.execution.sandbox import LaunchOptions
        argv = LaunchOptions(parent_pid=os.getpid()).argv(sys.executable)
        job = subprocess.Popen([*argv, "sleep", "60"], start_new_session=True)
        open({str(tmp_path / "job")!r}, "w").write(str(job.pid))
        time.sleep(60)
    """)
    daemon = subprocess.Popen([sys.executable, "-c", parent])
    pid_file = tmp_path / "job"
    deadline = time.monotonic() + 30
    while not pid_file.exists() or not pid_file.read_text():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    job = psutil.Process(int(pid_file.read_text()))
    while "sleep" not in " ".join(job.cmdline()):  # the launcher has exec'd the command
        assert time.monotonic() < deadline
        time.sleep(0.05)
    daemon.kill()
    daemon.wait()
    gone, _alive = psutil.wait_procs([job], timeout=10)
    assert gone, "the job outlived its daemon"


def test_a_job_whose_daemon_died_before_it_started_refuses_to_run() -> None:
    stranger = LaunchOptions(parent_pid=1 if os.getppid() != 1 else 2)
    done = subprocess.run([*stranger.argv(sys.executable), "true"], capture_output=True,
                          text=True, check=False)
    assert done.returncode == launch.EXIT_SETUP_FAILED
    assert "that started this job is gone" in done.stderr


def _fake_v2(tmp_path: Path) -> tuple[str, Path]:
    own = tmp_path / "cg2" / "system.slice" / "mlmaster.service"
    own.mkdir(parents=True)
    (own / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    mountinfo = f"30 23 0:26 / {tmp_path / 'cg2'} rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n"
    return mountinfo, own


def test_layout_prefers_a_v2_cgroup_that_offers_memory_and_pids(tmp_path: Path) -> None:
    mountinfo, own = _fake_v2(tmp_path)
    layout = layout_from(mountinfo, "0::/system.slice/mlmaster.service\n")
    assert layout == CgroupLayout("v2", {"memory": own, "pids": own})


def test_layout_falls_back_to_v1_hierarchies_in_a_hybrid_mount(tmp_path: Path) -> None:
    memory = tmp_path / "memory" / "docker" / "abc"
    memory.mkdir(parents=True)
    (tmp_path / "pids").mkdir()
    (tmp_path / "unified").mkdir()
    (tmp_path / "unified" / "cgroup.controllers").write_text("\n")
    mountinfo = "\n".join([
        f"35 25 0:30 / {tmp_path / 'memory'} rw - cgroup cgroup rw,memory",
        f"36 25 0:31 / {tmp_path / 'pids'} rw - cgroup cgroup rw,pids",
        f"37 25 0:32 / {tmp_path / 'unified'} rw - cgroup2 cgroup2 rw",
    ])
    own = "9:pids:/\n4:memory:/docker/abc\n0::/\n"
    assert layout_from(mountinfo, own) == CgroupLayout(
        "v1", {"memory": memory, "pids": tmp_path / "pids"})


def test_layout_maps_a_container_mount_of_its_own_subtree(tmp_path: Path) -> None:
    (tmp_path / "memory").mkdir()
    mountinfo = f"35 25 0:30 /docker/abc {tmp_path / 'memory'} rw - cgroup cgroup rw,memory"
    layout = layout_from(mountinfo, "4:memory:/docker/abc\n")
    assert layout == CgroupLayout("v1", {"memory": tmp_path / "memory"})


def test_without_a_cgroup_hierarchy_the_job_cgroup_is_none_and_harmless(tmp_path: Path) -> None:
    layout = layout_from("22 1 0:5 / /proc rw - proc proc rw\n", "0::/\n")
    assert layout == CgroupLayout("none")
    cgroup = create_job_cgroup("job", JobLimits(memory_mb=100), layout)
    assert type(cgroup) is JobCgroup and cgroup.version == "none" and cgroup.note
    assert cgroup.procs_files() == [] and cgroup.breach() is None
    assert not cgroup.limits_memory and cgroup.kill_all() and cgroup.remove()


def _real_v2_dir() -> Path | None:
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        if " - cgroup2 " in line and Path(fields[4], "cgroup.procs").exists():
            own = Path("/proc/self/cgroup").read_text().split("0::", 1)[-1].split()[0]
            return Path(fields[4], own.lstrip("/"))
    return None


def test_a_real_v2_cgroup_holds_and_kills_a_process_that_left_its_session() -> None:
    base = _real_v2_dir()
    if base is None or not os.access(base, os.W_OK):
        pytest.skip("no writable cgroup2 mount here")
    cgroup = create_job_cgroup("v2test", JobLimits(), CgroupLayout("v2", {"pids": base}))
    if cgroup.version != "v2":
        pytest.skip(f"cgroup2 not usable: {cgroup.note}")
    try:
        argv = LaunchOptions(cgroup_procs=tuple(cgroup.procs_files())).argv(sys.executable)
        done = subprocess.run([*argv, "sh", "-c",
                               "setsid sleep 600 >/dev/null 2>&1 & echo $!"],
                              capture_output=True, text=True, check=True)
        escaped = int(done.stdout)
        for _ in range(200):
            if escaped in cgroup.pids():
                break
            time.sleep(0.01)
        assert escaped in cgroup.pids()
        assert cgroup.kill_all()
        assert not _alive(escaped)
    finally:
        assert cgroup.remove()


def _cgroup_usable() -> bool:
    probe = create_job_cgroup("probe", JobLimits())
    probe.remove()
    return probe.version != "none"


@pytest.mark.skipif(not _cgroup_usable(), reason="no writable cgroup (v1 or v2) here")
def test_kill_job_cgroups_clears_what_a_dead_daemon_left_of_one_job() -> None:
    left = create_job_cgroup("task-7", JobLimits())
    other = create_job_cgroup("task-70", JobLimits())
    try:
        argv = LaunchOptions(cgroup_procs=tuple(left.procs_files())).argv(sys.executable)
        done = subprocess.run([*argv, "sh", "-c", "setsid sleep 600 >/dev/null 2>&1 & echo $!"],
                              capture_output=True, text=True, check=True)
        escaped = int(done.stdout)
        assert _alive(escaped)
        assert kill_job_cgroups("task-7") == 1
        for _ in range(200):
            if not _alive(escaped):
                break
            time.sleep(0.01)
        assert not _alive(escaped)
        assert not any(f.parent.exists() for f in left.procs_files())
        assert all(f.parent.exists() for f in other.procs_files())
    finally:
        left.remove()
        other.remove()


@needs_bwrap
async def test_a_setsid_escapee_dies_with_the_sandbox_even_without_a_cgroup(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(runner, "create_job_cgroup",
                        lambda job_id, limits: JobCgroup(note="disabled for this test"))
    # Pids inside the sandbox are its namespace's: find the escapee by a unique argument.
    marker = f"600.{os.getpid()}{time.monotonic_ns() % 10**6}"
    _, out = await _run_sandboxed(tmp_path, f"""
        import os, subprocess, time
        escaped = subprocess.Popen(["setsid", "sleep", "{marker}"])
        while os.getsid(escaped.pid) == os.getsid(0):
            time.sleep(0.01)
        print("escaped")
    """)
    assert out.strip() == "escaped"
    leftovers = [p.pid for p in psutil.process_iter(["cmdline"])
                 if p.info["cmdline"] == ["sleep", marker] and _alive(p.pid)]
    assert leftovers == []


@needs_bwrap
async def test_writing_outside_the_workspace_fails_in_the_sandbox(var_tmp_path: Path) -> None:
    ws, out = await _run_sandboxed(var_tmp_path, """
        import json
        results = {}
        for path in ("../outside.txt", "/etc/mlmaster-test", "working/inside.txt"):
            try:
                open(path, "w").write("x")
                results[path] = "written"
            except OSError as exc:
                results[path] = exc.strerror
        print(json.dumps(results))
    """)
    assert json.loads(out) == {"../outside.txt": "Read-only file system",
                               "/etc/mlmaster-test": "Read-only file system",
                               "working/inside.txt": "written"}
    assert not (ws.root.parent / "outside.txt").exists()
    assert not Path("/etc/mlmaster-test").exists()


@needs_bwrap
async def test_the_sandbox_has_no_network_beyond_its_own_loopback(tmp_path: Path) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    try:
        _, out = await _run_sandboxed(tmp_path, f"""
            import json, socket
            interfaces = [line.split(":")[0].strip()
                          for line in open("/proc/net/dev").read().splitlines()[2:]]
            try:
                socket.create_connection(("127.0.0.1", {port}), timeout=2)
                reached = True
            except OSError:
                reached = False
            print(json.dumps({{"interfaces": interfaces, "reached": reached}}))
        """)
    finally:
        listener.close()
    assert json.loads(out) == {"interfaces": ["lo"], "reached": False}


@needs_bwrap
async def test_input_is_readable_and_read_only_in_the_sandbox(tmp_path: Path) -> None:
    ws, out = await _run_sandboxed(tmp_path, """
        print(open("input/train.csv").read().splitlines()[0])
        try:
            open("input/train.csv", "a").write("3,4\\n")
        except OSError as exc:
            print(exc.strerror)
    """)
    assert out.splitlines() == ["a,b", "Read-only file system"]
    assert (tmp_path / "public" / "train.csv").read_text() == "a,b\n1,2\n"
    assert (ws.root / "input").is_symlink()


@needs_bwrap
async def test_the_sandboxed_environment_holds_no_daemon_secret(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret-value")
    monkeypatch.setenv("NOTIFY_SOCKET", "/run/systemd/notify")
    _, out = await _run_sandboxed(tmp_path, """
        import json, os
        print(json.dumps(dict(os.environ)))
    """, lease=Lease(slot_id="gpu0.0", task_id="t", cpus=(0,), gpu_uuid="GPU-1234"))
    env = json.loads(out)
    assert "sk-secret-value" not in out and "NOTIFY_SOCKET" not in env
    assert env["CUDA_VISIBLE_DEVICES"] == "GPU-1234" and env["TMPDIR"] == "/tmp"


@needs_bwrap
async def test_the_job_cannot_leave_its_cgroup_from_the_sandbox(tmp_path: Path) -> None:
    _, out = await _run_sandboxed(tmp_path, """
        import glob, json
        outcomes = set()
        for procs in glob.glob("/sys/fs/cgroup/**/cgroup.procs", recursive=True)[:50]:
            try:
                open(procs, "w").write("1")
                outcomes.add("moved")
            except OSError as exc:
                outcomes.add(exc.strerror)
        print(json.dumps(sorted(outcomes)))
    """)
    assert json.loads(out) == ["Read-only file system"]


@needs_bwrap
async def test_hidden_paths_are_invisible_but_the_workspace_inside_them_works(
    tmp_path: Path,
) -> None:
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "api.key").write_text("sk-secret")
    # The whole tree is hidden, workspace and public data included: those are bound back.
    _, out = await _run_sandboxed(tmp_path, f"""
        import os
        open("working/out.txt", "w").write("ok")
        print(open("input/train.csv").readline().strip(), os.path.exists({str(secrets)!r}))
    """, hidden_paths=[tmp_path])
    assert out.strip() == "a,b False"
    assert (tmp_path / "ws" / "working" / "out.txt").read_text() == "ok"


def _still_until(path: Path) -> Callable[[], float]:
    """A clock for run_script's time limit that stands still until `path` exists, then jumps an
    hour on: the limit runs out when the script is ready for it, however loaded the machine."""
    return lambda: 3600.0 if path.exists() else 0.0


@needs_bwrap
async def test_a_sandboxed_script_gets_its_grace_period_on_sigterm(tmp_path: Path) -> None:
    ws, public = _workspace(tmp_path, """
        import signal, sys, time
        def bye(signum, frame):
            open("got-term", "w").write("yes")
            sys.exit(0)
        signal.signal(signal.SIGTERM, bye)
        open("ready", "w").close()
        while True:
            time.sleep(0.05)
    """)
    # The grace is far longer than the safety net: the run can only end in time by ending
    # when the script does, on its SIGTERM, not by sitting out the grace then killing.
    result = await asyncio.wait_for(
        run_script(ws, timeout_s=60, kill_grace_s=3600, sandbox="bwrap", public_dir=public,
                   clock=_still_until(ws.root / "ready")),
        120)
    assert result.timed_out
    assert (ws.root / "got-term").read_text() == "yes"


@needs_bwrap
@pytest.mark.gpu
async def test_a_gpu_lease_sees_the_gpu_in_the_sandbox(tmp_path: Path) -> None:
    if not Path("/dev/nvidiactl").exists() or shutil.which("nvidia-smi") is None:
        pytest.skip("no NVIDIA GPU here")
    query = await asyncio.create_subprocess_exec(
        "nvidia-smi", "--query-gpu=uuid", "--format=csv,noheader",
        stdout=asyncio.subprocess.PIPE)
    uuid = (await query.communicate())[0].decode().split()[0]
    lease = Lease(slot_id="gpu0.0", task_id="t", cpus=(0,), gpu_uuid=uuid, gpu_index=0)
    _, out = await _run_sandboxed(tmp_path, """
        import subprocess
        print(subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True).stdout)
    """, lease=lease)
    assert uuid in out


async def test_sandbox_auto_runs_a_script_either_way(tmp_path: Path) -> None:
    ws, public = _workspace(tmp_path, "print('hello')\n")
    result = await asyncio.wait_for(
        run_script(ws, timeout_s=30, sandbox="auto", public_dir=public), 60)
    assert result.exit_code == 0 and ws.stdout.read_text() == "hello\n"


def test_the_interpreter_stays_visible_when_it_lives_under_tmp() -> None:
    # A clone under /tmp has its venv there, and the sandbox replaces /tmp with a tmpfs.
    from mlmaster_daemon.execution.sandbox import bwrap_argv, interpreter_paths

    keep = interpreter_paths("/tmp/clone/.venv/bin/python")
    assert Path(sys.prefix).resolve() in keep
    argv = bwrap_argv(Path("/tmp/ws"), keep=[Path("/tmp/clone/.venv")])
    tmpfs = argv.index("/tmp", argv.index("--tmpfs"))
    bind = argv.index("/tmp/clone/.venv")
    assert argv[bind - 1] == "--ro-bind" and bind > tmpfs
