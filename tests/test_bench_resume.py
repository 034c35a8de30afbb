"""The start-up benchmark runs end to end at a tiny size and its resume is right: the script
checks each restarted daemon (the API while it is up, the database it leaves, the restored
search in-process) and exits non-zero when one is wrong. How fast it was is not checked here
(timing claims live in the benchmark's own output); that every figure is a number is."""

from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_resume.py"
# The rows of the side-by-side table, each with a figure for the 40-node database.
ROWS = ("READY=1 (sd_notify)", "first 200 /v1/health", "runner restored (log)",
        "backup done (log)", "worst /v1/health trip", "SIGTERM -> exit",
        "floor: spawn -> exit", "scheduler restore", "scheduler repair_best",
        "make_backup")
NUMBER = re.compile(r"[-+]?(?:\d+\.\d+|nan|inf)", re.IGNORECASE)


@pytest.mark.slow
def test_bench_resume_resumes_the_task_rightly_and_prints_every_figure() -> None:
    out = subprocess.run([sys.executable, str(BENCH), "--nodes", "40", "--runs", "1"],
                         check=False, capture_output=True, text=True, timeout=280)
    assert out.returncode == 0, out.stdout + out.stderr
    # A ready node and the one running at the stop had code: both run again, nothing is lost.
    assert "resume checks passed in 1 starts: every node kept, 2 resumed" in out.stdout
    assert "saved search state" in out.stdout and "40-node db: start -> READY=1" in out.stdout
    lines = out.stdout.splitlines()
    for row in ROWS:
        line = next((x for x in lines if x.strip().startswith(row)), None)
        assert line is not None, f"no {row!r} row in:\n{out.stdout}"
        figures = [float(x) for x in NUMBER.findall(line[line.index(row) + len(row):])]
        assert figures and all(math.isfinite(x) for x in figures), line
    # Both starts measured the rows they share, so their ratio is printed.
    ready = next(x for x in lines if x.strip().startswith("READY=1 (sd_notify)"))
    assert re.search(r"\d\.\d\dx", ready), ready
