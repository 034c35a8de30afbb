"""The chaos run: the daemon SIGKILLed at chosen moments loses, duplicates and orphans nothing.

The runs are real: `python -m tools.chaos` as a subprocess, which runs the daemon as
a subprocess and kills it. The checks it is built from are tested on their own first, so a
chaos run that passes is known to be able to fail."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tools.chaos import Ledger, NodeKey, NodeRow, reruns_after_finish, stray_processes

# `tools` is not installed: `python -m tools.chaos` runs from the repository root.
ROOT = Path(__file__).resolve().parents[1]

LABELS = ("kills survived", "finished nodes lost", "duplicated nodes", "orphan processes",
          "search tree mismatches", "daemon crashes", "tasks finished", "valid best submission",
          "nodes", "kill moments", "wall time")

def _row(node_id: int, state: str, metric: float | None, finished_at: float | None = 10.0,
         ) -> NodeRow:
    return NodeRow("t1", node_id, state, (("state", state), ("metric", metric),
                                          ("finished_at", finished_at)))


def test_ledger_reports_a_finished_node_that_later_changes_or_disappears() -> None:
    ledger = Ledger()
    ledger.observe({("t1", 1): _row(1, "done", 0.9), ("t1", 2): _row(2, "buggy", None),
                    ("t1", 3): _row(3, "running", None, None)}, "first")
    ledger.observe({("t1", 1): _row(1, "done", 0.8), ("t1", 3): _row(3, "done", 0.7)},
                   "second")
    assert ledger.lost == {("t1", 1): "metric changed second", ("t1", 2): "missing second"}


def test_a_node_that_finishes_after_being_seen_unfinished_is_not_lost() -> None:
    ledger = Ledger()
    ledger.observe({("t1", 1): _row(1, "running", None, None)}, "first")
    ledger.observe({("t1", 1): _row(1, "done", 0.9)}, "second")
    ledger.observe({("t1", 1): _row(1, "done", 0.9)}, "third")
    assert ledger.lost == {}


def test_a_workspace_written_after_its_node_finished_counts_as_a_duplicated_run(
    tmp_path: Path,
) -> None:
    ws = tmp_path / "tasks" / "t1" / "nodes" / "1"
    ws.mkdir(parents=True)
    (ws / "stdout.log").write_text("ran again\n")
    written = (ws / "stdout.log").stat().st_mtime
    rows: dict[NodeKey, NodeRow] = {("t1", 1): _row(1, "done", 0.9, written - 5.0)}
    assert [d.split(":")[0] for d in reruns_after_finish(tmp_path, rows)] == ["task t1 node 1"]
    rows = {("t1", 1): _row(1, "done", 0.9, written + 1.0)}
    assert reruns_after_finish(tmp_path, rows) == []


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_stray_processes_are_those_of_the_state_dir_the_daemon_did_not_start(
    tmp_path: Path, processes: list[subprocess.Popen[bytes]],
) -> None:
    ws = tmp_path / "state" / "tasks" / "t1" / "nodes" / "1"
    ws.mkdir(parents=True)
    # A "daemon" whose own node script runs in the workspace, and a script left by another.
    daemon = subprocess.Popen(
        [sys.executable, "-c", "import subprocess, time; subprocess.Popen(['sleep', '60']); "
         "time.sleep(60)"], cwd=ws, start_new_session=True)
    leftover = subprocess.Popen(["sleep", "60"], cwd=ws, start_new_session=True)
    processes += [daemon, leftover]
    deadline = time.monotonic() + 10
    while not psutil.Process(daemon.pid).children() and time.monotonic() < deadline:
        time.sleep(0.05)

    strays = stray_processes(tmp_path / "state", ["t1"], daemon.pid)
    assert [s.split()[1] for s in strays] == [str(leftover.pid)]
    # With no daemon running, its processes are strays too.
    everything = stray_processes(tmp_path / "state", ["t1"], None)
    assert len(everything) == 3


def _run_chaos(*args: str, timeout_s: float) -> tuple[int, dict[str, str], list[str]]:
    """Run the chaos module; (exit code, figures by label, every output line)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLMASTER_")}
    done = subprocess.run([sys.executable, "-m", "tools.chaos", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout_s, env=env, check=False)
    lines = (done.stdout + done.stderr).splitlines()
    figures = {}
    for line in lines:
        for label in LABELS:
            if line.startswith(label + " "):
                figures[label] = line[len(label):].strip()
    return done.returncode, figures, lines


def _assert_clean(code: int, figures: dict[str, str], lines: list[str], kills: int) -> None:
    output = "\n".join(lines)
    assert figures["kills survived"] == f"{kills}/{kills}", output
    for label in ("finished nodes lost", "duplicated nodes", "orphan processes",
                  "search tree mismatches", "daemon crashes"):
        assert figures[label] == "0", output
    finished, total = figures["tasks finished"].split("/")
    assert finished == total and int(total) >= 1, output
    assert figures["valid best submission"] == "yes", output
    assert code == 0 and "chaos: PASS" in lines, output


def test_two_kills_while_code_is_generated_and_scripts_run_lose_nothing_without_a_sandbox(
) -> None:
    # No sandbox: the node scripts outlive the killed daemon until the restart kills them.
    code, figures, lines = _run_chaos("--kills", "2", "--steps", "4", "--seed", "1",
                                      "--moments", "generating,running", "--sandbox", "none",
                                      timeout_s=240)
    _assert_clean(code, figures, lines, kills=2)
    assert figures["kill moments"] == "generating 1, running 1", "\n".join(lines)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_twenty_kills_at_every_kind_of_moment_lose_nothing() -> None:
    code, figures, lines = _run_chaos("--kills", "20", "--steps", "6", "--seed", "0",
                                      timeout_s=560)
    _assert_clean(code, figures, lines, kills=20)
    moments = dict(m.rsplit(" ", 1) for m in figures["kill moments"].split(", "))
    assert set(moments) == {"start-up", "after-ready", "random", "generating", "spawning",
                            "running", "evaluating", "finished"}, "\n".join(lines)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_kills_while_nodes_run_on_a_ray_cluster_lose_nothing_and_leave_no_script_behind(
) -> None:
    pytest.importorskip("ray", reason="the Ray backend needs pip install 'mlmaster-daemon[ray]'")
    # The chaos run starts a head and two one-CPU workers; scripts outlive the killed daemon
    # there and are re-attached, so a stray is a script of a finished node, or any after stop.
    code, figures, lines = _run_chaos("--ray", "--kills", "6", "--steps", "5", "--seed", "2",
                                      "--moments", "generating,spawning,running,evaluating,"
                                      "finished,random", timeout_s=560)
    _assert_clean(code, figures, lines, kills=6)
    assert "nodes run on the Ray cluster at" in "\n".join(lines)
