"""Score submissions on a task's hidden answers (`prepared/private`) and rank them on the
competition's leaderboard.

pandas, scikit-learn and the metrics load on the first grade, not when this module is
imported: the daemon imports it at start.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from mlmaster_daemon.errors import GradingError
from mlmaster_daemon.tasks.medals import find_leaderboard, read_leaderboard, thresholds
from mlmaster_daemon.tasks.report import CompetitionReport
from mlmaster_daemon.tasks.spec import TaskSpec

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
        f"{spec.id_column}, {', '.join(spec.scored_columns)}) to enable grading"
    )


def grade(spec: TaskSpec, submission_path: Path) -> float:
    """Score the submission at `submission_path` on the hidden answers with the task's metric.

    Raises `GradingError` when there are no answers or the submission is invalid.
    """
    import pandas as pd

    from mlmaster_daemon.tasks.metrics import score
    from mlmaster_daemon.tasks.validation import validate_submission

    path = answers_path(spec)
    problem = validate_submission(spec, submission_path)
    if problem is not None:
        raise GradingError(problem)
    try:
        answers = pd.read_csv(path)
        submission = pd.read_csv(submission_path)
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise GradingError(f"cannot read {path} or {submission_path}: {exc}") from exc
    columns = spec.scored_columns
    target = columns if len(columns) > 1 else spec.target
    return score(spec.metric, answers, submission, spec.id_column, target, k=spec.map_k)


def grade_sample_submission(spec: TaskSpec) -> float:
    """Score of the public sample submission: the baseline a solution must beat."""
    return grade(spec, spec.public_dir / spec.sample_submission_file)


def competition_id(spec: TaskSpec) -> str:
    """The MLE-bench id of the task: the known one, else the competition folder's name."""
    return spec.competition_id or spec.root.name


def grade_report(spec: TaskSpec, submission_path: Path | None, *,
                 leaderboard: Path | None = None,
                 search: Iterable[Path] = ()) -> CompetitionReport:
    """Grade a submission and rank it on the leaderboard, as `mlebench grade` reports it.

    `submission_path` None means the run left no submission. Any problem with the submission
    makes its score None (an invalid submission), never an error. The leaderboard is
    `leaderboard`, else the first `leaderboard.csv` in `search`, the competition root and
    their `prepared/` folders. Raises `LeaderboardError` without a leaderboard and
    `GradingError` without private answers: those are the setup's problems, not the run's.
    """
    answers_path(spec)
    board = thresholds(read_leaderboard(leaderboard or find_leaderboard([*search, spec.root])))
    exists = (submission_path is not None and submission_path.is_file()
              and submission_path.suffix.lower() == ".csv")
    score: float | None = None
    if exists and submission_path is not None:
        try:
            score = float(grade(spec, submission_path))
        except Exception:
            # MLE-bench grades any failure of a submission as invalid (score None).
            score = None
    return CompetitionReport.ranked(
        competition_id(spec), score, board, submission_exists=exists,
        submission_path="" if submission_path is None else str(submission_path),
    )
