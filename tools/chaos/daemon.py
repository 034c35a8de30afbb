"""`mlmaster daemon` as a subprocess the chaos run can start, kill and stop."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from mlmaster_daemon.api.client import Client
from mlmaster_daemon.errors import DaemonUnreachable
from tools.chaos.settings import READY_TIMEOUT_S, ChaosSettings


class DaemonProcess:
    """`mlmaster daemon` as a subprocess on a private socket and state dir."""

    def __init__(self, settings: ChaosSettings, state_dir: Path, socket: Path, log: Path):
        self.state_dir, self.socket, self.log = state_dir, socket, log
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("MLMASTER_")}
        self.env.update({
            "MLMASTER_SEARCH__PARALLEL": str(settings.parallel),
            "MLMASTER_EXECUTION__MAX_CONCURRENT_NODES": str(settings.parallel),
            "MLMASTER_EXECUTION__SANDBOX": settings.sandbox,
            # The kills are the harness's, not a node's doing: none is failed as a daemon killer.
            "MLMASTER_EXECUTION__MAX_NODE_CRASHES": str(settings.kills + 1),
        })
        if settings.ray_address is not None:
            self.env.update({"MLMASTER_EXECUTION__BACKEND": "ray",
                             "MLMASTER_EXECUTION__RAY_ADDRESS": settings.ray_address})
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0

    def spawn(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "mlmaster_daemon", "daemon", "--socket", str(self.socket),
                 "--state-dir", str(self.state_dir)],
                stdout=out, stderr=subprocess.STDOUT, env=self.env)
        self.started_at = time.monotonic()

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None

    def exited(self) -> int | None:
        """The exit code if the daemon has exited by itself, else None."""
        return None if self.proc is None else self.proc.poll()

    async def wait_ready(self, client: Client) -> float:
        """Seconds from spawn until the socket answered; raises RuntimeError if it died."""
        while True:
            code = self.exited()
            if code is not None:
                raise RuntimeError(f"the daemon exited with code {code} during start-up; "
                                   f"see {self.log}")
            if time.monotonic() - self.started_at > READY_TIMEOUT_S:
                raise RuntimeError(f"the daemon was not ready after {READY_TIMEOUT_S:.0f} s")
            try:
                await client.health()
                return time.monotonic() - self.started_at
            except DaemonUnreachable:
                await asyncio.sleep(0.05)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def terminate(self, timeout_s: float = 60.0) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc is not None else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return -signal.SIGKILL
