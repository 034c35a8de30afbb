"""`mlmaster grade`, `report` and `competitions`: grading submissions on the hidden answers as
MLE-bench does, and listing the competitions the registry knows."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlmaster_daemon.api.schemas import is_task_id
from mlmaster_daemon.cli import _client_call, _print
from mlmaster_daemon.errors import MlmasterError
from mlmaster_daemon.tasks.spec import Metric

if TYPE_CHECKING:
    from mlmaster_daemon.tasks.report import CompetitionReport
    from mlmaster_daemon.tasks.spec import TaskSpec


def _daemon_task_spec(task: dict[str, Any]) -> TaskSpec:
    """The daemon task's competition, loaded with the metric the task was searched with."""
    from mlmaster_daemon.tasks.competition import load_task
    from mlmaster_daemon.tasks.spec import TaskOverrides

    overrides = TaskOverrides(metric=task.get("metric"),
                              lower_is_better=task.get("lower_is_better"))
    try:
        return load_task(task["task_dir"], overrides)
    except MlmasterError as exc:
        raise MlmasterError(f"task {task['id']}: {exc.message}") from None


def _best_submission(task: dict[str, Any]) -> Path | None:
    best = task.get("best")
    return Path(best["submission_path"]) if best else None


def _grade_daemon_task(task: dict[str, Any], spec: TaskSpec, submission: Path | None,
                       leaderboard: Path | None) -> CompetitionReport:
    from mlmaster_daemon.tasks.grading import grade_report

    try:
        return grade_report(spec, submission, leaderboard=leaderboard)
    except MlmasterError as exc:
        raise MlmasterError(f"task {task['id']}: {exc.message}") from None


def _print_notes(report: CompetitionReport, who: str = "") -> None:
    for note in report.notes:
        print(f"mlmaster: note: {who}{note}", file=sys.stderr)


def _board_in(folder: Path | None, competition: str) -> Path | None:
    """The competition's leaderboard in a `--leaderboard-dir`: mle-bench's layout
    (<dir>/<id>/leaderboard.csv, as in mlebench/competitions) or <dir>/<id>.csv."""
    if folder is None:
        return None
    for candidate in (folder / competition / "leaderboard.csv", folder / f"{competition}.csv"):
        if candidate.is_file():
            return candidate
    return None


def grade(args: argparse.Namespace) -> int:
    """`mlmaster grade`: one submission's report, as `mlebench grade-sample` prints it."""
    from mlmaster_daemon.tasks.competition import load_task
    from mlmaster_daemon.tasks.grading import grade_report

    given = Path(args.task).expanduser()
    submission = Path(args.submission).expanduser() if args.submission else None
    leaderboard = Path(args.leaderboard).expanduser() if args.leaderboard else None
    if is_task_id(args.task) and not given.exists():
        task = _client_call(args, lambda client: client.task(args.task))
        spec = _daemon_task_spec(task)
        report = _grade_daemon_task(task, spec, submission or _best_submission(task),
                                    leaderboard)
    else:
        if submission is None:
            raise MlmasterError(
                f"give the submission to grade: mlmaster grade {args.task} SUBMISSION.csv "
                "(or pass a daemon task id, e.g. t0123456789a, to grade its best submission)")
        spec = load_task(given)
        report = grade_report(spec, submission, leaderboard=leaderboard, search=[given])
    if not report.submission_exists:
        print(f"mlmaster: note: no CSV submission at {report.submission_path or '(none)'}; "
              "graded as a run without a submission", file=sys.stderr)
    _print_notes(report)
    _print(json.dumps(report.to_dict(), indent=2))
    return 0


def report(args: argparse.Namespace) -> int:
    """`mlmaster report`: every finished task's best submission, as `mlebench grade` sums them."""
    from mlmaster_daemon.tasks.grading import competition_id
    from mlmaster_daemon.tasks.report import aggregate, in_split, write_aggregate

    tasks = _client_call(args, lambda client: client.tasks())
    boards = Path(args.leaderboard_dir).expanduser() if args.leaderboard_dir else None
    if boards is not None and not boards.is_dir():
        raise MlmasterError(f"--leaderboard-dir {boards} is not a folder: give mle-bench's "
                            "mlebench/competitions (after `git lfs pull`) or a folder of "
                            "<competition-id>.csv leaderboards")
    reports = []
    for task in tasks:
        if task["state"] != "finished":
            continue
        try:
            spec = _daemon_task_spec(task)
        except MlmasterError:
            # A task outside the split may have lost its folder without spoiling the report.
            if not in_split(Path(task["task_dir"]).name, args.split):
                continue
            raise
        if not in_split(competition_id(spec), args.split):
            continue
        graded = _grade_daemon_task(task, spec, _best_submission(task),
                                    _board_in(boards, competition_id(spec)))
        _print_notes(graded, f"task {task['id']} ({competition_id(spec)}): ")
        reports.append(graded)
    summary = aggregate(reports)
    path = write_aggregate(summary, Path(args.output_dir).expanduser())
    _print(json.dumps(summary, indent=2))
    print(f"mlmaster: wrote {path}", file=sys.stderr)
    return 0


def competitions(args: argparse.Namespace) -> int:
    """`mlmaster competitions`: the registry, one competition a line."""
    from mlmaster_daemon.tasks import registry

    chosen = set(registry.split_ids(args.split)) if args.split else None
    rows = []
    for known in sorted(registry.competitions().values(),
                        key=lambda c: (c.split == "dev", c.id)):
        if chosen is not None and known.id not in chosen:
            continue
        split = "lite" if known.split == "lite" else ("full" if known.in_full else "dev")
        rows.append({"id": known.id, "metric": known.scoring,
                     "project_metric": known.metric.value if known.metric else None,
                     "lower_is_better": known.lower_is_better, "modality": known.modality,
                     "split": split, "runs_here": known.unsupported is None,
                     "offline_coder": known.metric is not None
                     and known.metric is not Metric.COMPETITION,
                     "note": known.unsupported or ""})
    if args.json:
        _print(json.dumps(rows, indent=2))
        return 0
    _print(f"# MLE-bench competitions as at openai/mle-bench {registry.MLEBENCH_COMMIT[:7]}; "
           "split lite is also in full; m = scored by its own metric, so it needs a model "
           "([llm.code]): the offline coder writes tabular models for the project's metrics; "
           "* = cannot run here yet")
    for row in rows:
        mark = "*" if not row["runs_here"] else (" " if row["offline_coder"] else "m")
        _print(f"{mark} {row['id']:<56} {row['split']:<5} {row['modality']:<14} {row['metric']}")
    return 0
