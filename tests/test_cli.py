"""The `mlmaster` command as a user runs it: a daemon process, and clients talking to it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from mlmaster_daemon.watch import progress_line
from tests.daemon_process import MLMASTER, running_daemon


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("MLMASTER_")}


def _cli(*args: str, socket: Path | None = None, check: bool = True,
         timeout: float = 240) -> subprocess.CompletedProcess[str]:
    extra = ["--socket", str(socket)] if socket else []
    result = subprocess.run([*MLMASTER, *args, *extra], capture_output=True, text=True,
                            env=_env(), timeout=timeout, check=False)
    if check and result.returncode != 0:
        raise AssertionError(f"mlmaster {args} failed ({result.returncode}):\n{result.stderr}")
    return result


@pytest.fixture
def daemon_process(short_dir: Path) -> Iterator[Path]:
    with running_daemon(short_dir, _env()) as sock:
        yield sock
    assert not sock.exists(), "a clean stop removes the socket"
    for line in (short_dir / "daemon.log").read_text().splitlines():
        json.loads(line)  # every log line is one JSON object


def test_example_builds_a_competition(tmp_path: Path) -> None:
    out = _cli("example", "wine", str(tmp_path / "wine"))
    assert "mlmaster submit" in out.stdout
    assert (tmp_path / "wine" / "prepared" / "public" / "train.csv").exists()
    again = _cli("example", "wine", str(tmp_path / "wine"), check=False)
    assert again.returncode == 1 and "error" in again.stderr


def test_submit_wait_json_ls_and_show(daemon_process: Path, tmp_path: Path) -> None:
    _cli("example", "diabetes", str(tmp_path / "diabetes"))
    out = _cli("submit", str(tmp_path / "diabetes"), "--steps", "3", "--wait", "--json",
               socket=daemon_process)
    task = json.loads(out.stdout)
    assert task["state"] == "finished"
    assert task["metric"] == "rmse" and task["lower_is_better"] is True
    assert task["best"] and Path(task["best"]["submission_path"]).exists()

    listing = _cli("ls", socket=daemon_process).stdout
    assert task["id"] in listing and "finished" in listing
    shown = json.loads(_cli("show", task["id"], "--json", socket=daemon_process).stdout)
    assert len(shown["nodes"]) == 3
    watched = _cli("watch", task["id"], socket=daemon_process).stdout
    assert "best validation rmse" in watched
    # The same result block as the demo's, hidden score included (diabetes has answers).
    assert "search finished: 3 nodes in" in watched
    assert "score on the hidden answers: " in watched and "sample submission scores" in watched
    # Why the final submission is the one it is: chosen by the hidden holdout's score.
    assert "train rows the search never saw" in watched
    assert "final choice:     node " in watched and "holdout score" in watched
    again = _cli("submit", str(tmp_path / "diabetes"), "--steps", "1", "--wait",
                 socket=daemon_process).stdout
    assert "search finished: 1 node in" in again and "score on the hidden answers: " in again
    assert "[  1/1   done] node 1 " in again


def test_the_progress_counter_counts_against_the_step_budget() -> None:
    event = {"type": "node.state", "state": "done", "node_id": 3, "operator": "improve",
             "metric": 0.5, "nodes_done": 2, "nodes_total": 3}
    line = progress_line(event, {"node_id": 3, "metric": 0.5}, steps=20)
    assert line is not None and line.startswith("[  2/20  done] node 3 ")


def test_bad_submit_prints_a_clear_error(daemon_process: Path, tmp_path: Path) -> None:
    result = _cli("submit", str(tmp_path / "missing"), socket=daemon_process, check=False)
    assert result.returncode == 1
    assert "does not exist" in result.stderr
    assert "Traceback" not in result.stderr


def test_curl_reaches_the_api_on_the_socket(daemon_process: Path) -> None:
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl is not installed")
    out = subprocess.run([curl, "-s", "--unix-socket", str(daemon_process),
                          "http://localhost/v1/health"], capture_output=True, text=True,
                         check=True, timeout=30)
    assert json.loads(out.stdout)["status"] == "ok"


def test_client_without_a_daemon_says_how_to_start_one(short_dir: Path) -> None:
    result = _cli("ls", socket=short_dir / "none.sock", check=False)
    assert result.returncode == 1
    assert "mlmaster daemon" in result.stderr


@pytest.mark.slow
def test_demo_runs_end_to_end() -> None:
    result = _cli("demo", "--steps", "6", "--clean", timeout=600)
    assert "score on the hidden answers" in result.stdout
    assert "daemon stopped (exit code 0)" in result.stdout


def test_daemon_refuses_a_bad_config_naming_the_key(short_dir: Path) -> None:
    config = short_dir / "c.toml"
    config.write_text("[execution]\nnode_timeout = 5\n")
    result = subprocess.run(
        [*MLMASTER, "daemon", "--config", str(config), "--socket", str(short_dir / "s.sock"),
         "--state-dir", str(short_dir / "state")],
        capture_output=True, text=True, env=_env(), timeout=60, check=False)
    assert result.returncode == 1
    assert "execution.node_timeout" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (short_dir / "state").exists(), "nothing is created before the config is valid"
