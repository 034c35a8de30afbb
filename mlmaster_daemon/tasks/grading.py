"""Score submissions on a task's hidden answers (`prepared/private`)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from mlmaster_daemon.errors import GradingError
from mlmaster_daemon.tasks.metrics import score
from mlmaster_daemon.tasks.spec import TaskSpec
from mlmaster_daemon.tasks.validation import validate_submission

ANSWER_FILE_NAMES = ("test.csv", "answers.csv")


def answers_path(spec: TaskSpec) -> Path:
    """The hidden answers file: private/test.csv, else private/answers.csv.

    Raises `GradingError` saying where it looked when the task has neither.
    """
    private = spec.private_dir or spec.root / "prepared" / "private"
    for name in ANSWER_FILE_NAMES:
        candidate = private / name
        if candidate.is_file():
            return candidate
    looked = " or ".join(str(private / name) for name in ANSWER_FILE_NAMES)
    raise GradingError(
        f"task {spec.name} has no private answers to grade against: looked for {looked}; "
        "add the answers there (columns "
        f"{spec.id_column}, {spec.target}) to enable grading"
    )


def grade(spec: TaskSpec, submission_path: Path) -> float:
    """Score the submission at `submission_path` on the hidden answers with the task's metric.

    Raises `GradingError` when there are no answers or the submission is invalid.
    """
    path = answers_path(spec)
    problem = validate_submission(spec, submission_path)
    if problem is not None:
        raise GradingError(problem)
    try:
        answers = pd.read_csv(path)
        submission = pd.read_csv(submission_path)
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise GradingError(f"cannot read {path} or {submission_path}: {exc}") from exc
    return score(spec.metric, answers, submission, spec.id_column, spec.target)


def grade_sample_submission(spec: TaskSpec) -> float:
    """Score of the public sample submission: the baseline a solution must beat."""
    return grade(spec, spec.public_dir / spec.sample_submission_file)
