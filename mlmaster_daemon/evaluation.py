"""Judging a finished run by the harness's contract, not by an LLM.

A node is working when its script exited 0 within its time limit, wrote `metrics.json` with a
finite float `validation_metric`, and wrote a submission that passes validation against the
sample submission. Otherwise it is buggy and `error` says why, for the debug prompt and the user.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from mlmaster_daemon.execution.runner import RunResult
from mlmaster_daemon.execution.slots import is_cuda_oom
from mlmaster_daemon.execution.workspace import Workspace
from mlmaster_daemon.tasks.spec import TaskSpec


@dataclass(frozen=True)
class Evaluation:
    metric: float | None
    error: str | None

    @property
    def buggy(self) -> bool:
        return self.metric is None


def _last_error_line(ws: Workspace) -> str:
    if not ws.stderr.exists():
        return ""
    lines = [ln for ln in ws.stderr.read_text(errors="replace").splitlines() if ln.strip()]
    return lines[-1].strip()[:500] if lines else ""


def _tail(path: Path, limit: int = 20000) -> str:
    text = path.read_text(errors="replace")
    return text[-limit:]


def _read_metric(ws: Workspace) -> tuple[float | None, str | None]:
    if not ws.metrics.exists():
        return None, "metrics.json missing: the script must write {\"validation_metric\": <float>}"
    try:
        raw = json.loads(ws.metrics.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return None, f"metrics.json is not valid JSON: {exc}"
    value = raw.get("validation_metric") if isinstance(raw, dict) else None
    # bool is an int subclass; an integer metric is accepted and converted.
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None, f"metrics.json has no numeric 'validation_metric' (got {value!r})"
    if not math.isfinite(value):
        return None, f"validation_metric is not finite ({value})"
    return float(value), None


def evaluate(ws: Workspace, spec: TaskSpec, run: RunResult, timeout_s: float) -> Evaluation:
    if run.timed_out:
        return Evaluation(None, run.reason or f"killed after its {timeout_s:.0f} s time limit")
    if run.reason:
        # A limit (memory, processes, file size, disk) stopped or failed the job.
        last = _last_error_line(ws)
        return Evaluation(None, f"{run.reason}" + (f"; last error: {last}" if last else ""))
    if run.exit_code != 0 and ws.stderr.exists() and is_cuda_oom(_tail(ws.stderr)):
        return Evaluation(None, "CUDA out of memory: the script needs less GPU memory "
                                f"(smaller batches or model); {_last_error_line(ws)}")
    if run.exit_code != 0:
        last = _last_error_line(ws)
        detail = f": {last}" if last else ""
        return Evaluation(None, f"script exited with code {run.exit_code}{detail}")
    for output in (ws.metrics, ws.submission):
        # A script could point its outputs at a host file; the daemon never follows that.
        if output.is_symlink():
            return Evaluation(None, f"{output.name} must be a regular file, not a symlink")
    metric, error = _read_metric(ws)
    if metric is None:
        return Evaluation(None, error)
    # pandas and scikit-learn load here, in the worker thread, not at daemon start.
    from mlmaster_daemon.tasks.validation import validate_submission

    invalid = validate_submission(spec, ws.submission)
    if invalid is not None:
        return Evaluation(None, f"submission invalid: {invalid}")
    return Evaluation(metric, None)
