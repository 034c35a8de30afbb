"""Judging a finished run by the harness's contract, not by an LLM.

A node is working when its script exited 0 within its time limit, wrote `metrics.json` with a
finite float `validation_metric`, and wrote a submission that passes validation against the
sample submission. Otherwise it is buggy and `error` says why, for the debug prompt and the user.

`metrics.json` may also hold `fold_metrics`: the metric on each validation fold of the task's
plan. The search uses them to tell progress from noise. A list that is missing, malformed,
holds anything but finite numbers, or has fewer than 2 or more than `MAX_FOLDS` entries is
ignored: it never makes a node buggy.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

from mlmaster_daemon import untrusted
from mlmaster_daemon.execution.runner import RunResult
from mlmaster_daemon.execution.slots import is_cuda_oom
from mlmaster_daemon.execution.workspace import Workspace
from mlmaster_daemon.redact import redact
from mlmaster_daemon.tasks.spec import TaskSpec

# What is read of a job's files: every read is bounded (a job may write a 3 GiB stderr).
STDERR_TAIL_BYTES = 64 * 1024
MAX_METRICS_BYTES = 64 * 1024
SUBMISSION = "submission/submission.csv"
MAX_FOLDS = 50


@dataclass(frozen=True)
class Evaluation:
    metric: float | None
    error: str | None
    # The metric per validation fold, when the script reported it (see the module docstring).
    folds: tuple[float, ...] = ()

    @property
    def buggy(self) -> bool:
        return self.metric is None


def _last_error_line(ws: Workspace) -> str:
    tail = untrusted.text_tail(ws.root, ws.stderr.name, STDERR_TAIL_BYTES)
    lines = [ln for ln in tail.splitlines() if ln.strip()]
    return lines[-1].strip()[:500] if lines else ""


def _read_metric(ws: Workspace) -> tuple[float | None, str | None, tuple[float, ...]]:
    try:
        data = untrusted.read_bounded(ws.root, ws.metrics.name, MAX_METRICS_BYTES)
    except FileNotFoundError:
        return (None, "metrics.json missing: the script must write "
                      "{\"validation_metric\": <float>}", ())
    except untrusted.UnsafeFile as exc:
        return None, f"metrics.json must be a small regular file ({exc.strerror})", ()
    try:
        raw = json.loads(data)
    except (ValueError, RecursionError) as exc:
        # JSONDecodeError and UnicodeDecodeError are ValueErrors; so is an integer of more
        # digits than Python reads.
        return None, f"metrics.json is not valid JSON: {str(exc)[:200]}", ()
    value = raw.get("validation_metric") if isinstance(raw, dict) else None
    # bool is an int subclass; an integer metric is accepted and converted.
    if isinstance(value, bool) or not isinstance(value, int | float):
        return (None, redact(f"metrics.json has no numeric 'validation_metric' "
                             f"(got {value!r:.200})"), ())
    try:
        metric = float(value)
    except OverflowError:
        return None, "validation_metric is too large for a floating-point number", ()
    if not math.isfinite(metric):
        return None, f"validation_metric is not finite ({metric})", ()
    return metric, None, _folds(raw.get("fold_metrics"))


def _folds(raw: object) -> tuple[float, ...]:
    """The per-fold metrics a script reported: all finite numbers, or none at all."""
    if not isinstance(raw, list) or not 2 <= len(raw) <= MAX_FOLDS:
        return ()
    folds: list[float] = []
    for value in raw:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return ()
        try:
            number = float(value)
        except OverflowError:
            return ()
        if not math.isfinite(number):
            return ()
        folds.append(number)
    return tuple(folds)


def evaluate(ws: Workspace, spec: TaskSpec, run: RunResult, timeout_s: float) -> Evaluation:
    """Judge the run in `ws`; every file of the job is read bounded and without following
    links, and no error text carries a known secret."""
    outcome = _evaluate(ws, spec, run, timeout_s)
    return Evaluation(outcome.metric, redact(outcome.error) if outcome.error else None,
                      outcome.folds)


def _evaluate(ws: Workspace, spec: TaskSpec, run: RunResult, timeout_s: float) -> Evaluation:
    if run.timed_out:
        return Evaluation(None, run.reason or f"killed after its {timeout_s:.0f} s time limit")
    if run.reason:
        # A limit (memory, processes, file size, disk) stopped or failed the job.
        last = _last_error_line(ws)
        return Evaluation(None, f"{run.reason}" + (f"; last error: {last}" if last else ""))
    if run.exit_code != 0 and is_cuda_oom(
            untrusted.text_tail(ws.root, ws.stderr.name, STDERR_TAIL_BYTES)):
        return Evaluation(None, "CUDA out of memory: the script needs less GPU memory "
                                f"(smaller batches or model); {_last_error_line(ws)}")
    if run.exit_code != 0:
        last = _last_error_line(ws)
        detail = f": {last}" if last else ""
        return Evaluation(None, f"script {run.ending}{detail}")
    metric, error, folds = _read_metric(ws)
    if metric is None:
        return Evaluation(None, error)
    # pandas and scikit-learn load here, in the worker thread, not at daemon start.
    from mlmaster_daemon.tasks.validation import submission_size_limit, validate_submission_file

    try:
        with untrusted.open_file(ws.root, SUBMISSION) as handle:
            invalid = validate_submission_file(spec, handle, ws.submission,
                                               submission_size_limit(spec))
    except FileNotFoundError:
        invalid = validate_submission_file(spec, None, ws.submission, 0)
    except untrusted.UnsafeFile as exc:
        # A script could point its outputs at a host file; the daemon never follows that.
        return Evaluation(None, "submission.csv must be a regular file, not a symlink"
                                + ("" if exc.filename and str(exc.filename).endswith(".csv")
                                   else f" ({exc.strerror})"))
    if invalid is not None:
        return Evaluation(None, f"submission invalid: {invalid}")
    return Evaluation(metric, None, folds)
