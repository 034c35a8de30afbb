"""bench_store runs end to end at small sizes and prints every figure it claims: commit time
per node for both ways at each size and the ratio against the target. How fast is not checked
here (timing claims live in the benchmark's output); that the figures are numbers is."""

from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_store.py"
NUMBER = re.compile(r"\d+(?:\.\d+)?")


@pytest.mark.slow
def test_bench_store_prints_the_commit_cost_at_each_size_and_the_ratio() -> None:
    out = subprocess.run([sys.executable, str(BENCH), "--sizes", "50,400", "--commits", "6"],
                         check=False, capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    for size in ("50", "400"):
        row = next(x for x in lines if x.split() and x.split()[0] == size)
        figures = [float(x) for x in NUMBER.findall(row)][1:]
        # Wall and CPU time and bytes for each way, and the two ratios.
        assert len(figures) == 8 and all(math.isfinite(x) and x > 0 for x in figures), row
    verdict = next(x for x in lines if x.startswith("commit time per node 400/50:"))
    assert "the target (1.5x)" in verdict and ("within" in verdict or "OVER" in verdict)
