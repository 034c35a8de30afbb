"""Generated code may not use the daemon's API, even though it runs as the daemon's own user:
a process in a pid namespace of its own (a sandboxed job), one that descends from the daemon
through a job, or one in a job cgroup is refused with 403 `job_process`, and so is a peer
that could be a job but can no longer be checked.

The rules are checked on real processes, with this test process standing in for the daemon;
a real daemon refuses a process in another pid namespace; and a daemon process run as users
run it, without a sandbox, refuses its own node's script that lists, cancels and submits."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from conftest import wait_terminal
from openai_server import FakeOpenAI
from structlog.testing import capture_logs

from mlmaster_daemon.api.client import Client
from mlmaster_daemon.api.job_peers import job_cgroup, job_process_reason
from mlmaster_daemon.daemon import Daemon
from mlmaster_daemon.errors import DaemonUnreachable
from mlmaster_daemon.execution.cgroups import create_job_cgroup
from mlmaster_daemon.execution.lease import JobLimits
from mlmaster_daemon.execution.sandbox import LaunchOptions

ME = os.getuid()


@pytest.fixture
def spawned() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes a test starts; killed with their sessions or groups afterwards."""
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            for child in psutil.Process(proc.pid).children(recursive=True):
                child.kill()
        proc.kill()
        proc.wait()


def _descendant(proc: subprocess.Popen[bytes], name: str) -> int:
    """The pid of `proc`'s descendant running `name`, once it has started."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for child in psutil.Process(proc.pid).children(recursive=True):
            if child.name() == name:
                return child.pid
        time.sleep(0.01)
    raise AssertionError(f"no {name} under {proc.pid}")


def test_a_child_started_in_a_session_of_its_own_is_a_job_and_so_is_what_it_starts(
    spawned: list[subprocess.Popen[bytes]],
) -> None:
    # How the runner starts every job (start_new_session), from this process as the daemon.
    job = subprocess.Popen(["sh", "-c", "sleep 30 & wait"], start_new_session=True)
    spawned.append(job)
    for pid in (job.pid, _descendant(job, "sleep")):
        reason = job_process_reason(pid, ME, daemon_pid=os.getpid())
        assert reason is not None and f"the job it started as pid {job.pid}" in reason


def test_a_child_in_the_daemons_own_session_and_the_daemon_itself_are_not_jobs(
    spawned: list[subprocess.Popen[bytes]],
) -> None:
    # E.g. the bubblewrap probe, or a client a test harness hosting the daemon starts.
    helper = subprocess.Popen(["sh", "-c", "sleep 30 & wait"])
    spawned.append(helper)
    for pid in (helper.pid, _descendant(helper, "sleep"), os.getpid()):
        assert job_process_reason(pid, ME, daemon_pid=os.getpid()) is None


def test_pid_zero_is_a_peer_outside_the_daemons_view_and_no_job() -> None:
    assert job_process_reason(0, ME) is None


def test_a_peer_that_is_gone_cannot_be_checked_and_is_taken_for_a_job() -> None:
    gone = subprocess.Popen(["true"])
    gone.wait()
    reason = job_process_reason(gone.pid, ME)
    assert reason is not None and "cannot tell it from a job" in reason


def test_a_pidfd_whose_process_exited_voids_what_was_read_under_its_pid() -> None:
    # As if the process that connected exited and its pid now names a harmless process
    # (here this one): the pidfd taken when it connected says the check read another.
    connector = subprocess.Popen(["sleep", "30"])
    pidfd = os.pidfd_open(connector.pid)
    try:
        assert job_process_reason(os.getpid(), ME, pidfd) is None
        connector.kill()
        connector.wait()
        reason = job_process_reason(os.getpid(), ME, pidfd)
        assert reason is not None and "cannot tell it from a job" in reason
    finally:
        os.close(pidfd)


def _unshare() -> list[str]:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("a pid namespace of one's own needs root (and unshare) here")
    return ["unshare", "--pid", "--fork"]


def test_a_process_in_a_pid_namespace_of_its_own_is_a_job(
    spawned: list[subprocess.Popen[bytes]],
) -> None:
    nested = subprocess.Popen([*_unshare(), "sleep", "30"])
    spawned.append(nested)
    sleeper = _descendant(nested, "sleep")
    # Not a descendant through a session of its own: the namespace alone gives it away.
    assert job_process_reason(nested.pid, ME, daemon_pid=os.getpid()) is None
    reason = job_process_reason(sleeper, ME, daemon_pid=os.getpid())
    assert reason is not None and "pid namespace nested in the daemon's" in reason


def test_a_process_in_a_job_cgroup_is_a_job(spawned: list[subprocess.Popen[bytes]]) -> None:
    cgroup = create_job_cgroup("peer-check", JobLimits())
    if cgroup.version == "none":
        pytest.skip(f"no writable cgroup here: {cgroup.note}")
    try:
        # Started in this process's session, so only the cgroup tells it from a helper.
        argv = LaunchOptions(cgroup_procs=tuple(cgroup.procs_files())).argv(sys.executable)
        job = subprocess.Popen([*argv, "sleep", "30"])
        spawned.append(job)
        deadline = time.monotonic() + 10
        while job.pid not in cgroup.pids():
            assert time.monotonic() < deadline
            time.sleep(0.01)
        reason = job_process_reason(job.pid, ME)
        assert reason is not None and "/mlmaster/peer-check-" in reason
    finally:
        cgroup.remove()


@pytest.mark.parametrize(("own", "peer", "job"), [
    # v2: jobs beside the daemon's leaf, under <service>/mlmaster.
    ("0::/system.slice/mlmaster.service/daemon\n",
     "0::/system.slice/mlmaster.service/mlmaster/t1-3-ab12cd34\n",
     "/system.slice/mlmaster.service/mlmaster/t1-3-ab12cd34"),
    ("0::/user.slice/session-1.scope\n", "0::/user.slice/session-1.scope\n", None),
    # A service merely named mlmaster is no job cgroup.
    ("0::/system.slice/x.service\n", "0::/system.slice/mlmaster.service\n", None),
    # v1: the memory hierarchy's job folder is under the daemon's memory cgroup.
    ("4:memory:/docker/abc\n9:pids:/\n", "4:memory:/docker/abc/mlmaster/j-1\n9:pids:/\n",
     "/docker/abc/mlmaster/j-1"),
    ("4:memory:/docker/abc\n", "4:memory:/docker/other/mlmaster/j-1\n", None),
])
def test_a_job_cgroup_is_one_under_the_daemons_own(own: str, peer: str, job: str | None) -> None:
    assert job_cgroup(peer, own) == job


# --- a real daemon --------------------------------------------------------------------------

async def _curl(prefix: list[str], sock: Path, method: str, path: str,
                body: dict[str, Any] | None = None) -> tuple[int, dict[str, Any]]:
    argv = [*prefix, "curl", "-sS", "--unix-socket", str(sock), "-X", method,
            "-w", "\n%{http_code}", f"http://localhost{path}"]
    if body is not None:
        argv += ["-H", "Content-Type: application/json", "--data-binary", json.dumps(body)]
    proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    text, _, status = out.decode().rpartition("\n")
    return int(status), json.loads(text)


async def test_a_daemon_refuses_a_process_in_a_pid_namespace_of_its_own(
    daemon: Daemon,
) -> None:
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    status, _ = await _curl([], daemon.socket_path, "GET", "/v1/tasks")
    assert status == 200
    with capture_logs() as logs:
        status, body = await _curl(_unshare(), daemon.socket_path, "GET", "/v1/tasks")
    assert (status, body["error"]["code"]) == (403, "job_process")
    assert "generated code may not use the daemon's API" in body["error"]["message"]
    refused = [e for e in logs if e["event"] == "job process refused"]
    assert refused and refused[0]["log_level"] == "warning" and refused[0]["pid"] > 0
    assert "pid namespace" in refused[0]["reason"]


PROBE = """import json, socket

def call(method, path, body=None):
    data = json.dumps(body).encode() if body is not None else b""
    conn = socket.socket(socket.AF_UNIX)
    conn.connect({sock!r})
    conn.sendall(f"{{method}} {{path}} HTTP/1.1\\r\\nHost: localhost\\r\\nConnection: close\\r\\n"
                 f"Content-Type: application/json\\r\\nContent-Length: {{len(data)}}\\r\\n\\r\\n"
                 .encode() + data)
    raw = b""
    while chunk := conn.recv(65536):
        raw += chunk
    head, _, text = raw.partition(b"\\r\\n\\r\\n")
    return int(head.split()[1]), json.loads(text)

print(json.dumps({{"list": call("GET", "/v1/tasks"),
                  "cancel": call("POST", "/v1/tasks/{victim}/cancel"),
                  "submit": call("POST", "/v1/tasks", {{"task_dir": {task!r}, "steps": 1}})}}))
"""
# The victim's node outlives the test, which cancels it at the end.
VICTIM = "import time\ntime.sleep(120)\n"


@pytest.fixture
async def server() -> AsyncIterator[FakeOpenAI]:
    fake = await FakeOpenAI(code=VICTIM).start()
    yield fake
    await fake.stop()


@pytest.fixture
async def unsandboxed_daemon(short_dir: Path, server: FakeOpenAI) -> AsyncIterator[Path]:
    """`mlmaster daemon` as a process of its own, with sandbox = "none" so that its jobs can
    reach its socket; yields the socket."""
    sock = short_dir / "d.sock"
    config = short_dir / "c.toml"
    config.write_text(textwrap.dedent(f"""
        [daemon]
        state_dir = "{short_dir / "state"}"
        socket = "{sock}"
        stop_grace_s = 0
        [execution]
        sandbox = "none"
        max_concurrent_nodes = 2
        [llm]
        prefetch = 0
        [llm.code]
        base_url = "{server.base_url}"
        model = "fake"
    """))
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLMASTER_")}
    log = short_dir / "daemon.log"
    with log.open("ab") as out:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "mlmaster_daemon", "daemon", "--config", str(config),
            stdout=out, stderr=out, env=env)
    try:
        async with asyncio.timeout(60), Client(sock) as client:
            while True:
                assert proc.returncode is None, log.read_text()
                try:
                    await client.health()
                    break
                except DaemonUnreachable:
                    await asyncio.sleep(0.1)
        yield sock
    finally:
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(60):
            await proc.wait()


async def test_a_nodes_script_cannot_list_cancel_or_submit_through_the_api(
    unsandboxed_daemon: Path, server: FakeOpenAI, breast_cancer: Path,
) -> None:
    async with Client(unsandboxed_daemon) as client:
        victim = await client.submit({"task_dir": str(breast_cancer), "steps": 1})
        async with asyncio.timeout(60):
            while not [n for n in await client.nodes(victim["id"]) if n["status"] == "running"]:
                await asyncio.sleep(0.1)
        server.code = PROBE.format(sock=str(unsandboxed_daemon), victim=victim["id"],
                                   task=str(breast_cancer))
        attacker = await client.submit({"task_dir": str(breast_cancer), "steps": 1})
        await wait_terminal(client, attacker["id"], timeout_s=60)
        node = await client.node(attacker["id"], 1)
        line = next(x for x in node["output_tail"].splitlines() if x.startswith("{"))
        got = json.loads(line)
        for call in ("list", "cancel", "submit"):
            status, body = got[call]
            assert (status, body["error"]["code"]) == (403, "job_process"), got
        assert (await client.task(victim["id"]))["state"] == "running"
        assert len(await client.tasks()) == 2
        await client.cancel(victim["id"])
