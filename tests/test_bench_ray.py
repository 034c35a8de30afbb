"""The Ray benchmark runs end to end at a tiny size, on a cluster of its own, and prints every
figure of its two tables; how fast anything was is not checked here (timing claims live in
the benchmark's own output), only that each figure is a finite number and nothing is left in
the workers' temp folder."""

from __future__ import annotations

import math
import os
import re
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

pytest.importorskip("ray", reason="the Ray backend needs pip install 'mlmaster-daemon[ray]'")

BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_ray.py"
BACKENDS = ("local", "ray, shared fs", "ray, no shared fs")
NUMBER = re.compile(r"[-+]?(?:\d+\.\d+|\d+|nan|inf)(?=x|%|\s|$|;|,)", re.IGNORECASE)


def _figures(text: str) -> list[float]:
    return [float(x) for x in NUMBER.findall(text)]


def _line(lines: list[str], start: str, out: str) -> str:
    line = next((x for x in lines if x.strip().startswith(start)), None)
    assert line is not None, f"no line starting {start!r} in:\n{out}"
    return line


@pytest.mark.slow
def test_bench_ray_prints_overhead_and_throughput_for_both_backends() -> None:
    proc = subprocess.Popen(
        [sys.executable, str(BENCH), "--nodes", "2", "--throughput-nodes", "2",
         "--job-seconds", "0.2", "--workers", "1,2"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        out, _ = proc.communicate(timeout=400)
    except subprocess.TimeoutExpired:
        # KeyboardInterrupt: the benchmark shuts its cluster down on the way out.
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=120)
        pytest.fail(f"the benchmark did not finish:\n{out[-6000:]}")
    assert proc.returncode == 0, out[-6000:]
    lines = out.splitlines()
    for backend in BACKENDS:
        # Below the overhead header: one row per backend, four spans in ms.
        row = _line(lines, f"{backend}  ", out)
        spans = _figures(row[row.index(backend) + len(backend):])
        assert len(spans) == 4 and all(math.isfinite(x) and x >= 0 for x in spans), row
    for backend in BACKENDS[1:]:
        ratios = _line(lines, f"ratio {backend} / local:", out)
        assert len(re.findall(r"\d+\.\d\dx;", ratios)) == 4, ratios
    floor = _line(lines, "Ray's own floor", out)
    assert re.search(r"empty task round trip \d+\.\d ms, new actor \+ first call \d+\.\d ms",
                     floor), floor
    assert _line(lines, "throughput, 2 nodes of 0.2 s", out)
    for slots in (1, 2):
        row = _line(lines, f"{slots}  ", out)
        # nodes/s, speed-up and share per backend, then Ray / local for each Ray backend.
        figures = _figures(row)[1:]
        assert len(figures) == 3 * len(BACKENDS) + 2, row
        assert all(math.isfinite(x) and x > 0 for x in figures), row
    # What the runs without a shared filesystem unpacked on the workers is gone.
    leftovers = Path(tempfile.gettempdir()) / f"mlmaster-ray-{os.getuid()}"
    assert not list(leftovers.glob(f"bench{proc.pid}*"))
