"""Grading files with the real mle-bench, side by side with ours: where MLEBENCH_SRC (a checkout
of openai/mle-bench, 783b15a) and MLEBENCH_PYTHON (a Python with its pins: scikit-learn 1.5.1,
pandas 2.2.2, numpy 1.26.4, PyYAML and the libraries its graders import) are set, a manifest of
(competition, answers, submission) files is graded by mle-bench's own `Grader` in a subprocess
of that Python, each score unrounded or None where it refuses the file."""

from __future__ import annotations

import json
import math
import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from mlmaster_daemon.errors import GradingError

SOURCE = os.environ.get("MLEBENCH_SRC", "")
PYTHON = os.environ.get("MLEBENCH_PYTHON", "")
needs_mlebench = pytest.mark.skipif(
    not (SOURCE and PYTHON), reason="set MLEBENCH_SRC and MLEBENCH_PYTHON to run mle-bench")
TOLERANCE = 1e-9

# key -> (competition id, answers file, submission file)
Manifest = dict[str, tuple[str, str, str]]

# Run by MLEBENCH_PYTHON: mle-bench's grader of each competition on each file; NaN as "nan"
# (JSON has none), and what graders print (pycocotools) kept off the answer on stdout.
RUN_MLEBENCH = """
import contextlib, io, json, sys, warnings, logging, yaml
from pathlib import Path
warnings.filterwarnings("ignore"); logging.disable(logging.CRITICAL)
source, manifest = sys.argv[1], json.load(open(sys.argv[2]))
sys.path.insert(0, source)
from mlebench.grade_helpers import Grader
from mlebench.utils import load_answers, read_csv
scores = {}
for key, (cid, answers, submission) in manifest.items():
    config = yaml.safe_load(open(f"{source}/mlebench/competitions/{cid}/config.yaml"))
    grader = Grader(config["grader"]["name"], config["grader"]["grade_fn"])
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            answer_frame = load_answers(Path(answers))
            value = float(grader.grade_fn(read_csv(Path(submission)), answer_frame))
        scores[key] = "nan" if value != value else value
    except Exception:
        scores[key] = None
print(json.dumps(scores))
"""


def mlebench_scores(manifest: Manifest, folder: Path) -> dict[str, float | None]:
    """mle-bench's score of every file of `manifest` (None: refused), the manifest and the
    script written to `folder`."""
    (folder / "manifest.json").write_text(json.dumps(manifest))
    script = folder / "run_mlebench.py"
    script.write_text(RUN_MLEBENCH)
    done = subprocess.run([PYTHON, str(script), SOURCE, str(folder / "manifest.json")],
                          capture_output=True, text=True, timeout=600, check=True)
    raw: dict[str, float | str | None] = json.loads(done.stdout.strip().splitlines()[-1])
    return {key: math.nan if value == "nan" else (None if value is None else float(value))
            for key, value in raw.items()}


def ours_or_none(grading: Callable[..., float], *args: Any) -> float | None:
    """Our score, `grading(*args)`, or None where we refuse the file as mle-bench would."""
    try:
        return float(grading(*args))
    except GradingError:
        return None


def same_score(a: float | None, b: float | None) -> bool:
    """Both refused, both NaN, or equal to 1e-9 (infinities equal themselves)."""
    if a is None or b is None:
        return a is b
    return a == b or (math.isnan(a) and math.isnan(b)) or abs(a - b) <= TOLERANCE


def differing(ours: dict[str, float | None],
              theirs: dict[str, float | None]) -> dict[str, tuple[float | None, float | None]]:
    """The files on which our score (or refusal) is not mle-bench's."""
    return {key: (mine, theirs[key]) for key, mine in ours.items()
            if not same_score(mine, theirs[key])}
