"""sd_notify over a real datagram socket, the watchdog's liveness rule, and the unit file."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from mlmaster_daemon.systemd import Heartbeat, Notifier, run_watchdog

REPO = Path(__file__).resolve().parents[1]


def _listener(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    # Generous: a loaded CI machine can take seconds to start the daemon.
    sock.settimeout(30)
    return sock


def test_ready_status_and_stopping_reach_the_socket(short_dir: Path) -> None:
    with _listener(short_dir / "notify") as sock:
        notifier = Notifier({"NOTIFY_SOCKET": str(short_dir / "notify")})
        assert notifier.ready("2 tasks running")
        assert sock.recv(4096) == b"READY=1\nSTATUS=2 tasks running"
        assert notifier.extend_timeout(90)
        assert sock.recv(4096) == b"EXTEND_TIMEOUT_USEC=90000000"
        assert notifier.stopping()
        assert sock.recv(4096) == b"STOPPING=1\nSTATUS=stopping"


def test_abstract_socket_names_are_supported() -> None:
    name = f"mlmaster-test-{id(object())}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        assert Notifier({"NOTIFY_SOCKET": "@" + name}).ready("ok")
        assert sock.recv(4096).startswith(b"READY=1")


def test_outside_systemd_nothing_is_sent() -> None:
    notifier = Notifier({})
    assert not notifier.enabled
    assert not notifier.ready("x")
    assert notifier.watchdog_s is None


def test_watchdog_usec_for_another_pid_is_ignored() -> None:
    assert Notifier({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": "1"}).watchdog_s is None
    assert Notifier({"WATCHDOG_USEC": "4000000"}).watchdog_s == 4.0


async def test_the_watchdog_is_fed_only_while_the_heartbeat_is_alive(short_dir: Path) -> None:
    now = [0.0]
    heartbeat = Heartbeat(clock=lambda: now[0])
    waits: asyncio.Queue[tuple[float, asyncio.Future[None]]] = asyncio.Queue()

    async def sleep(seconds: float) -> None:
        woken: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        await waits.put((seconds, woken))
        await woken

    with _listener(short_dir / "wd") as sock:
        sock.setblocking(False)
        notifier = Notifier({"NOTIFY_SOCKET": str(short_dir / "wd"), "WATCHDOG_USEC": "200000"})
        heartbeat.tick()
        task = asyncio.create_task(run_watchdog(notifier, heartbeat, lambda: "ok", sleep))
        async with asyncio.timeout(30):
            seconds, woken = await waits.get()
        # Fed once, then it waits half the watchdog period.
        assert seconds == pytest.approx(0.1)
        assert sock.recv(4096).startswith(b"WATCHDOG=1")
        now[0] += 10  # the scheduler stopped ticking long ago
        woken.set_result(None)
        async with asyncio.timeout(30):
            _seconds, woken = await waits.get()
        task.cancel()
        with pytest.raises(BlockingIOError):
            sock.recv(4096)


def test_the_unit_files_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    mlmaster = shutil.which("mlmaster") or str(Path(REPO / ".venv/bin/mlmaster"))
    unit = (REPO / "systemd" / "mlmaster.service").read_text()
    socket_unit = (REPO / "systemd" / "mlmaster.socket").read_text()
    # verify checks that ExecStart exists: point it at this checkout's command.
    copy = tmp_path / "mlmaster.service"
    copy.write_text(unit.replace("/opt/mlmaster/.venv/bin/mlmaster", mlmaster))
    (tmp_path / "mlmaster.socket").write_text(socket_unit)
    result = subprocess.run([analyze, "verify", str(copy), str(tmp_path / "mlmaster.socket")],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    for key in ("Type=notify", "NotifyAccess=main", "WatchdogSec=", "KillMode=mixed",
                "Restart=on-failure", "NoNewPrivileges=yes", "ProtectSystem=strict",
                "PrivateTmp=yes", "RuntimeDirectoryPreserve=yes", "ExecReload=",
                "Also=mlmaster.socket"):
        assert key in unit
    for key in ("SocketMode=0660", "SocketGroup=mlmaster",
                "ListenStream=/run/mlmaster/mlmaster.sock"):
        assert key in socket_unit


# Puts the listening socket at fd 3 and LISTEN_PID to its own pid, as systemd does, then runs
# the daemon in the same process.
ACTIVATE = """import os, sys
os.dup2(int(sys.argv[1]), 3)
os.environ.update(LISTEN_FDS="1", LISTEN_PID=str(os.getpid()))
os.execv(sys.executable, [sys.executable, "-m", "mlmaster_daemon", "daemon", *sys.argv[2:]])
"""


def test_a_socket_passed_by_systemd_is_served_and_left_to_systemd(short_dir: Path) -> None:
    import os
    import signal
    import sys

    path = short_dir / "activated.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLMASTER_")}
    log = short_dir / "daemon.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", ACTIVATE, str(listener.fileno()),
             # The configured path is not where it listens: the passed socket wins.
             "--socket", str(short_dir / "unused.sock"), "--state-dir", str(short_dir / "s")],
            pass_fds=(listener.fileno(),), stdout=out, stderr=out, env=env)
    listener.close()
    try:
        health = ""
        for _ in range(300):
            result = subprocess.run(
                ["curl", "-s", "--unix-socket", str(path), "http://localhost/v1/health"],
                capture_output=True, text=True, timeout=10, check=False)
            health = result.stdout
            if '"status": "ok"' in health:
                break
            assert proc.poll() is None, log.read_text()
            subprocess.run(["sleep", "0.2"], check=True)
        assert '"status": "ok"' in health, log.read_text()
        assert not (short_dir / "unused.sock").exists()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    ready = next(line for line in log.read_text().splitlines() if "daemon ready" in line)
    assert '"socket_activated": true' in ready and str(path) in ready
    # The socket is systemd's: the daemon leaves it in place when it stops.
    assert path.exists()


def test_the_daemon_says_ready_feeds_the_watchdog_and_says_stopping(short_dir: Path) -> None:
    import os
    import signal
    import sys
    import time

    with _listener(short_dir / "notify") as sock:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLMASTER_")}
        env.update({"NOTIFY_SOCKET": str(short_dir / "notify"), "WATCHDOG_USEC": "1000000"})
        proc = subprocess.Popen(
            [sys.executable, "-m", "mlmaster_daemon", "daemon", "--socket",
             str(short_dir / "d.sock"), "--state-dir", str(short_dir / "state")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        try:
            messages: list[bytes] = []
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and sum(
                    m.startswith(b"WATCHDOG=1") for m in messages) < 2:
                messages.append(sock.recv(4096))
            ready = [m for m in messages if m.startswith(b"READY=1")]
            assert ready and b"STATUS=0 task(s) running" in ready[0]
            assert messages.index(ready[0]) < next(
                i for i, m in enumerate(messages) if m.startswith(b"WATCHDOG=1"))
            # READY=1 only once the socket listens.
            assert (short_dir / "d.sock").exists()
            proc.send_signal(signal.SIGTERM)
            while not sock.recv(4096).startswith(b"STOPPING=1"):
                pass
            assert proc.wait(timeout=30) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
