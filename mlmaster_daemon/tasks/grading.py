"""Score submissions on a task's hidden answers (`prepared/private`) and rank them on the
competition's leaderboard.

Two scores exist for one file. `grade` is the project's strict check and metric (the search's
own validation: columns, ids, values as the sample submission has them, rows matched by id).
`grade_report`, what `mlmaster grade` and `report` print, gives a known MLE-bench competition
the score mle-bench's own grader gives it (`mlebench_graders`), lenient or strict where that
grader is, and notes when the two disagree.

pandas, scikit-learn and the metrics load on the first grade, not when this module is
imported: the daemon imports it at start.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlmaster_daemon import untrusted
from mlmaster_daemon.errors import GradingError
from mlmaster_daemon.tasks import registry
from mlmaster_daemon.tasks.medals import (
    LeaderboardError,
    Thresholds,
    find_leaderboard,
    read_leaderboard,
    thresholds,
)
from mlmaster_daemon.tasks.report import CompetitionReport
from mlmaster_daemon.tasks.spec import Metric, TaskSpec

if TYPE_CHECKING:
    import pandas as pd

ANSWER_FILE_NAMES = ("test.csv", "answers.csv")
# The answers hold the sample's rows, sometimes with every test column: bounded generously.
MIN_ANSWERS_LIMIT = 1024**3
ANSWERS_SIZE_FACTOR = 50
# Scores this close are the same score (mle-bench rounds to 5 decimals).
SAME_SCORE = 1e-9


def answers_path(spec: TaskSpec) -> Path:
    """The hidden answers file: the known competition's, else private/test.csv, else
    private/answers.csv.

    Raises `GradingError` saying where it looked when the task has neither.
    """
    private = spec.private_dir or spec.root / "prepared" / "private"
    known = registry.lookup(spec.competition_id or "")
    names = ((known.answers,) if known is not None and known.answers else ()) + ANSWER_FILE_NAMES
    for name in names:
        candidate = private / name
        if candidate.is_file():
            return candidate
    looked = " or ".join(str(private / name) for name in names)
    raise GradingError(
        f"task {spec.name} has no private answers to grade against: looked for {looked}; "
        "add the answers there (columns "
        f"{spec.id_column}, {', '.join(spec.scored_columns)}) to enable grading"
    )


def read_table(path: Path, max_bytes: int, *, strict: bool = False,
               follow_link: bool = False) -> pd.DataFrame:
    """The CSV at `path` as mle-bench reads it (`float_precision="round_trip"`; `strict`: only
    empty cells are missing, as the strict check reads; a `.jsonl` file as JSON lines), refused
    when it is over `max_bytes`,
    not a regular file, or a link (unless `follow_link`: the operator's own answers may be
    one). Raises `GradingError`."""
    import pandas as pd

    from mlmaster_daemon.tasks.validation import ONLY_BLANKS_MISSING

    options: dict[str, Any] = dict(ONLY_BLANKS_MISSING) if strict else {}
    if int(pd.__version__.split(".")[0]) < 3:
        # pandas 3 parses floats exactly by default and deprecates the option.
        options["float_precision"] = "round_trip"

    try:
        opened = path.open("rb") if follow_link else untrusted.open_file(path.parent, path.name)
        with opened as handle:
            size = os.fstat(handle.fileno()).st_size
            if size > max_bytes:
                raise GradingError(f"{path} is {size / 2**20:.1f} MiB, more than the "
                                   f"{max_bytes / 2**20:.1f} MiB a table for this task may hold")
            if path.suffix.lower() == ".jsonl":
                # JSON lines (tensorflow2-question-answering's answers), values as written.
                lines: pd.DataFrame = pd.read_json(handle, lines=True, dtype=False)
                return lines
            frame: pd.DataFrame = pd.read_csv(handle, **options)
            return frame
    except GradingError:
        raise
    except untrusted.UnsafeFile as exc:
        raise GradingError(f"{path} cannot be read safely ({exc.strerror}): grade the file "
                           "itself, not a link to it") from None
    except (OSError, ValueError, UnicodeDecodeError, pd.errors.ParserError,
            pd.errors.EmptyDataError) as exc:
        kind = "JSON lines" if path.suffix.lower() == ".jsonl" else "CSV"
        raise GradingError(f"cannot read {path} as {kind}: {exc}") from None


def _answers(spec: TaskSpec, *, strict: bool = False) -> pd.DataFrame:
    from mlmaster_daemon.tasks.validation import submission_size_limit

    limit = max(MIN_ANSWERS_LIMIT, ANSWERS_SIZE_FACTOR * submission_size_limit(spec))
    return read_table(answers_path(spec), limit, strict=strict, follow_link=True)


def grade(spec: TaskSpec, submission_path: Path) -> float:
    """The strict score: the submission must pass `validate_submission` (the sample's columns,
    rows and ids), then the task's metric scores it with rows matched by id (the "competition"
    metric: mle-bench's grader of the competition, reproduced).

    Raises `GradingError` when there are no answers or the submission is invalid.
    """
    from mlmaster_daemon.tasks.metrics import score
    from mlmaster_daemon.tasks.validation import submission_size_limit, validate_submission

    answers_path(spec)
    problem = validate_submission(spec, submission_path)
    if problem is not None:
        raise GradingError(problem)
    if spec.metric is Metric.COMPETITION:
        # The competition's own metric exists only as mle-bench's grader of it.
        return grade_like_mlebench(spec, submission_path)
    answers = _answers(spec, strict=True)
    submission = read_table(submission_path, submission_size_limit(spec), strict=True)
    columns = spec.scored_columns
    target = columns if len(columns) > 1 else columns[0]
    return score(spec.metric, answers, submission, spec.id_column, target, k=spec.map_k)


def grade_like_mlebench(spec: TaskSpec, submission_path: Path) -> float:
    """The score mle-bench's own grader gives the submission (unrounded), for a known
    competition; the strict `grade` for any other. Raises `GradingError` where that grader
    refuses the file."""
    from mlmaster_daemon.tasks import mlebench_graders
    from mlmaster_daemon.tasks.validation import submission_size_limit

    known = registry.lookup(spec.competition_id or "")
    if known is None or known.grader is None:
        return grade(spec, submission_path)
    answers = _answers(spec)
    submission = read_table(submission_path, submission_size_limit(spec))
    return mlebench_graders.grade(known.grader, submission, answers, spec.id_column,
                                  known.targets or spec.scored_columns, known.answer_columns)


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
    makes its score None (an invalid submission), never an error. A known competition is
    scored as mle-bench scores it; `notes` say where the strict check disagrees. The
    leaderboard is `leaderboard`, else the first `leaderboard.csv` in `search`, the
    competition root and their `prepared/` folders; without one the medals are None and a
    note says so. Raises `GradingError` without private answers (the setup's problem, not the
    run's) and `LeaderboardError` when a leaderboard exists but cannot be read.
    """
    answers_path(spec)
    notes: list[str] = []
    board = _board(spec, leaderboard, search, notes)
    exists = (submission_path is not None and submission_path.is_file()
              and submission_path.suffix.lower() == ".csv")
    score: float | None = None
    if exists and submission_path is not None:
        score = _score_and_compare(spec, submission_path, notes)
    return CompetitionReport.ranked(
        competition_id(spec), score, board, submission_exists=exists,
        submission_path="" if submission_path is None else str(submission_path),
        notes=tuple(notes), lower_is_better=_direction(spec),
    )


def _direction(spec: TaskSpec) -> bool:
    """Whether lower scores rank higher: the competition's direction for a known one (its
    grader gives the score, whichever metric the search was told to use), else the task's."""
    known = registry.lookup(spec.competition_id or "")
    return known.lower_is_better if known is not None else spec.lower_is_better


def _board(spec: TaskSpec, leaderboard: Path | None, search: Iterable[Path],
           notes: list[str]) -> Thresholds | None:
    if leaderboard is None:
        try:
            leaderboard = find_leaderboard([*search, spec.root])
        except LeaderboardError as exc:
            notes.append(f"medals are null: ranking needs leaderboard.csv ({exc.message})")
            return None
    return thresholds(read_leaderboard(leaderboard))


def _score_and_compare(spec: TaskSpec, submission: Path, notes: list[str]) -> float | None:
    """mle-bench's score of the file (None: refused), with a note when the strict check
    refuses it or scores it otherwise."""
    official, official_problem = _attempt(lambda: grade_like_mlebench(spec, submission))
    known = registry.lookup(spec.competition_id or "")
    if known is None or known.grader is None:
        if official_problem:
            notes.append(f"invalid submission: {official_problem}")
        return official
    strict, strict_problem = _attempt(lambda: grade(spec, submission))
    if official is not None and strict is None:
        notes.append("mle-bench's grader accepts this file, but the project's strict check "
                     f"(the search's own validation) refuses it: {strict_problem}")
    elif official is None and strict is not None:
        notes.append(f"mle-bench's grader refuses this file ({official_problem}), though the "
                     f"strict check would score it {strict!r}")
    elif official is None:
        notes.append(f"invalid submission: {official_problem}")
    elif strict is not None and not _same(official, strict):
        notes.append(f"mle-bench scores this file {official!r}; the strict check (rows "
                     f"matched by id, as the search validates) scores it {strict!r}")
    return official


def _attempt(scoring: Callable[[], float]) -> tuple[float | None, str]:
    try:
        return float(scoring()), ""
    except GradingError as exc:
        return None, exc.message
    except Exception as exc:
        # MLE-bench grades any failure of a submission as invalid (score None).
        return None, f"{type(exc).__name__}: {exc}"


def _same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or abs(a - b) <= SAME_SCORE
