"""The daemon starts small: numpy and pandas (about 45 MB of an idle daemon's RSS) and
scikit-learn/scipy load only when a task needs them (holdout splits, grading, ensembles), and
the tokenizer's encoding (about 40 MB) only when the first task comes. Checked in fresh
interpreters, since the test process has loaded all of them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

HEAVY = ("numpy", "pandas", "sklearn", "scipy")
# Starts a daemon in-process, then submits one task: prints how many encodings were loaded
# while idle and after the submit.
IDLE_THEN_SUBMIT = """
import asyncio, sys
from mlmaster_daemon import tokenizer
from mlmaster_daemon.api.client import Client
from mlmaster_daemon.config import load_config
from mlmaster_daemon.daemon import Daemon

async def main(root, task_dir):
    config = load_config(environ={}, overrides={
        "daemon.state_dir": root + "/state", "daemon.socket": root + "/d.sock",
        "daemon.stop_grace_s": 0, "execution.sandbox": "none"})
    daemon = Daemon(config)
    await daemon.start()
    try:
        idle = tokenizer._load.cache_info().currsize
        async with Client(daemon.socket_path) as client:
            await client.submit({"task_dir": task_dir, "steps": 1})
        async with asyncio.timeout(60):
            while tokenizer._load.cache_info().currsize == 0:
                await asyncio.sleep(0.05)
        print("encodings loaded:", idle, tokenizer._load.cache_info().currsize)
    finally:
        await daemon.stop()

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("MLMASTER_")}


def test_importing_the_daemon_loads_no_numpy_pandas_sklearn_or_scipy() -> None:
    code = ("import json, sys, mlmaster_daemon.daemon\n"
            f"heavy = set({HEAVY!r})\n"
            "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in heavy)))\n")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                         text=True, timeout=120, env=_env())
    assert json.loads(out.stdout) == []


def test_the_tokenizer_loads_at_the_first_submit_not_at_start(short_dir: Path,
                                                             breast_cancer: Path) -> None:
    out = subprocess.run([sys.executable, "-c", IDLE_THEN_SUBMIT, str(short_dir),
                          str(breast_cancer)], check=False, capture_output=True, text=True,
                         timeout=120, env=_env())
    assert out.returncode == 0, out.stderr
    # The daemon logs to stdout too.
    assert "encodings loaded: 0 1" in out.stdout.splitlines(), out.stdout


def test_the_daemon_refuses_to_start_with_an_unknown_encoding(short_dir: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "mlmaster_daemon", "daemon", "--socket",
                          str(short_dir / "d.sock"), "--state-dir", str(short_dir / "state")],
                         check=False, capture_output=True, text=True, timeout=60,
                         env={**_env(), "MLMASTER_MEMORY__ENCODING": "no_such_encoding"})
    assert out.returncode == 1
    assert "tokenizer encoding 'no_such_encoding' is unknown" in out.stderr
