"""The start-up benchmark runs end to end at a tiny size; its figures are not checked here
(timing claims live in the benchmark's own output)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_resume.py"


@pytest.mark.slow
def test_bench_resume_runs_at_a_tiny_size_and_prints_every_figure() -> None:
    out = subprocess.run([sys.executable, str(BENCH), "--nodes", "40", "--runs", "1"],
                         check=False, capture_output=True, text=True, timeout=280)
    assert out.returncode == 0, out.stdout + out.stderr
    for line in ("READY=1 (sd_notify)", "first 200 /v1/health", "runner restored (log)",
                 "backup done (log)", "saved search_state", "TaskRunner._restore",
                 "make_backup", "40-node db: start -> READY=1"):
        assert line in out.stdout, out.stdout
