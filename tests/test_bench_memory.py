"""The memory benchmark's quick run starts the real daemon, runs 4 tasks on it and prints
every figure: the bare-python reference, the daemon idle and with 4 running tasks (each with
its target), and the sum with the node scripts. How much memory it took is the benchmark's
measurement, never checked here; that each figure is a number is."""

from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_memory.py"
ROWS = ("bare python + aiohttp", "daemon idle", "daemon with 4 running tasks",
        "daemon + node scripts")
FIGURES = re.compile(r"median\s+(\S+)\s+peak\s+(\S+)")


@pytest.mark.slow
def test_bench_memory_quick_run_prints_idle_and_busy_figures() -> None:
    out = subprocess.run([sys.executable, str(BENCH), "--quick"], check=False,
                         capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    for row in ROWS:
        line = next((x for x in lines if x.strip().startswith(row)), None)
        assert line is not None, f"no {row!r} row in:\n{out.stdout}"
        found = FIGURES.search(line)
        assert found, line
        assert all(math.isfinite(float(x)) and float(x) > 0 for x in found.groups()), line
    idle = next(x for x in lines if x.strip().startswith("daemon idle"))
    busy = next(x for x in lines if x.strip().startswith("daemon with 4 running tasks"))
    assert "target < 120 MB" in idle and "x bare" in idle
    assert "target < 250 MB" in busy and "x bare" in busy
    assert "4 tasks running with nodes in flight" in out.stdout
