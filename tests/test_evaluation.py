"""Judging a finished run by the harness contract."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from mlmaster_daemon.evaluation import evaluate
from mlmaster_daemon.execution.runner import RunResult
from mlmaster_daemon.execution.workspace import Workspace
from mlmaster_daemon.tasks.competition import load_task


def _workspace(tmp_path: Path, breast_cancer: Path) -> Workspace:
    spec = load_task(breast_cancer)
    ws = Workspace.create(tmp_path / "ws", spec.public_dir, "print(1)\n")
    shutil.copyfile(spec.public_dir / spec.sample_submission_file, ws.submission)
    ws.metrics.write_text(json.dumps({"validation_metric": 0.7}))
    return ws


def _ok(exit_code: int | None = 0, reason: str | None = None) -> RunResult:
    return RunResult(exit_code=exit_code, timed_out=False, duration_s=1.0, pid=1, reason=reason)


def test_a_complete_run_is_working(tmp_path: Path, breast_cancer: Path) -> None:
    ws = _workspace(tmp_path, breast_cancer)
    assert evaluate(ws, load_task(breast_cancer), _ok(), 60).metric == 0.7


def test_a_limit_reason_reaches_the_node(tmp_path: Path, breast_cancer: Path) -> None:
    ws = _workspace(tmp_path, breast_cancer)
    outcome = evaluate(ws, load_task(breast_cancer), _ok(None, "memory limit exceeded (200 MiB)"),
                       60)
    assert outcome.buggy and outcome.error is not None
    assert outcome.error.startswith("memory limit exceeded (200 MiB)")


def test_cuda_out_of_memory_is_named(tmp_path: Path, breast_cancer: Path) -> None:
    ws = _workspace(tmp_path, breast_cancer)
    ws.stderr.write_text("Traceback...\ntorch.OutOfMemoryError: CUDA out of memory. Tried to "
                         "allocate 20.00 GiB\n")
    outcome = evaluate(ws, load_task(breast_cancer), _ok(1), 60)
    assert outcome.error is not None and outcome.error.startswith("CUDA out of memory")


def test_outputs_that_are_symlinks_are_refused(tmp_path: Path, breast_cancer: Path) -> None:
    ws = _workspace(tmp_path, breast_cancer)
    secret = tmp_path / "host-secret.csv"
    shutil.copyfile(ws.submission, secret)
    ws.submission.unlink()
    ws.submission.symlink_to(secret)
    outcome = evaluate(ws, load_task(breast_cancer), _ok(), 60)
    assert outcome.buggy
    assert outcome.error == "submission.csv must be a regular file, not a symlink"


def test_fold_metrics_are_read_when_well_formed_and_ignored_otherwise(
    tmp_path: Path, breast_cancer: Path
) -> None:
    spec = load_task(breast_cancer)
    ws = _workspace(tmp_path, breast_cancer)
    ws.metrics.write_text(json.dumps({"validation_metric": 0.7,
                                      "fold_metrics": [0.6, 0.7, 0.8]}))
    assert evaluate(ws, spec, _ok(), 60).folds == (0.6, 0.7, 0.8)
    for bad in ([0.6], [0.6, "x"], [0.6, True], "0.6,0.7", [1e400, 0.7], list(range(51)),
                {"a": 1}):
        raw = json.dumps({"validation_metric": 0.7, "fold_metrics": bad})
        ws.metrics.write_text(raw.replace("Infinity", "1e400"))
        outcome = evaluate(ws, spec, _ok(), 60)
        # A malformed list never makes a working node buggy; it is just not used.
        assert (outcome.metric, outcome.folds) == (0.7, ()), bad
