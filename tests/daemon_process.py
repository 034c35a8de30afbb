"""A real `mlmaster daemon` process on a socket in a temp folder, for the CLI tests."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

MLMASTER = [sys.executable, "-m", "mlmaster_daemon"]
# Guards a hang only: a daemon that cannot start fails the test with its log.
START_TIMEOUT_S = 60


@contextmanager
def running_daemon(directory: Path, env: dict[str, str]) -> Iterator[Path]:
    """Start the daemon with its socket, state and log (`daemon.log`) in `directory`; yields
    the socket once it exists, and on exit stops the daemon with SIGTERM, which must end it
    cleanly."""
    sock = directory / "d.sock"
    with (directory / "daemon.log").open("wb") as log:
        proc = subprocess.Popen([*MLMASTER, "daemon", "--socket", str(sock), "--state-dir",
                                 str(directory / "state")], stdout=log,
                                stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + START_TIMEOUT_S
        try:
            while not sock.exists():
                assert proc.poll() is None, (directory / "daemon.log").read_text()
                assert time.monotonic() < deadline, "the daemon did not start"
                time.sleep(0.1)
            yield sock
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
