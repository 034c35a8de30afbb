"""Grading reports in MLE-bench's format: one per competition run, and their aggregate."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mlmaster_daemon.tasks import registry
from mlmaster_daemon.tasks.medals import Medals, Thresholds

# experiments/splits/low.txt in MLE-bench: the "Lite" split, from the known competitions.
LITE_COMPETITION_IDS = frozenset(registry.split_ids("lite"))
# MLE-bench's splits (low = lite, medium, high, dev) and "full", the 75 of split75.txt.
SPLIT_NAMES = (*registry.SPLITS, "full")
SPLITS: dict[str, frozenset[str]] = {name: frozenset(registry.split_ids(name))
                                     for name in SPLIT_NAMES}

SCORE_DECIMALS = 5


@dataclass(frozen=True)
class CompetitionReport:
    """One graded run; `to_dict` has MLE-bench's `CompetitionReport` fields in its order.
    Without a leaderboard the thresholds and medals are None (null). `notes` (not a report
    field) say what the user should know: a missing leaderboard, a strict check that
    disagrees with mle-bench's grader."""

    competition_id: str
    score: float | None
    gold_threshold: float | None
    silver_threshold: float | None
    bronze_threshold: float | None
    median_threshold: float | None
    any_medal: bool | None
    gold_medal: bool | None
    silver_medal: bool | None
    bronze_medal: bool | None
    above_median: bool | None
    submission_exists: bool
    valid_submission: bool
    is_lower_better: bool | None
    created_at: datetime
    submission_path: str
    notes: tuple[str, ...] = ()

    @classmethod
    def ranked(cls, competition_id: str, score: float | None, board: Thresholds | None, *,
               submission_exists: bool, submission_path: str,
               created_at: datetime | None = None, notes: tuple[str, ...] = (),
               lower_is_better: bool | None = None) -> CompetitionReport:
        """The report of `score` (None: no valid submission) on a leaderboard's thresholds
        (None: no leaderboard, so no medals either; the direction is then `lower_is_better`,
        the metric's).

        The score is rounded to 5 decimals before it is ranked, as MLE-bench does.
        """
        if score is not None and not math.isnan(score):
            score = round(score, SCORE_DECIMALS)
        medals: Medals | None = None if board is None else board.rank(score)
        return cls(
            competition_id=competition_id,
            score=score,
            gold_threshold=None if board is None else board.gold,
            silver_threshold=None if board is None else board.silver,
            bronze_threshold=None if board is None else board.bronze,
            median_threshold=None if board is None else board.median,
            any_medal=None if medals is None else medals.any,
            gold_medal=None if medals is None else medals.gold,
            silver_medal=None if medals is None else medals.silver,
            bronze_medal=None if medals is None else medals.bronze,
            above_median=None if medals is None else medals.above_median,
            submission_exists=submission_exists,
            valid_submission=score is not None,
            is_lower_better=lower_is_better if board is None else board.lower_is_better,
            # Local time without a zone, like MLE-bench's reports.
            created_at=created_at or datetime.now(),
            submission_path=submission_path,
            notes=notes,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "competition_id": self.competition_id,
            "score": None if self.score is None else float(self.score),
            "gold_threshold": _float_or_none(self.gold_threshold),
            "silver_threshold": _float_or_none(self.silver_threshold),
            "bronze_threshold": _float_or_none(self.bronze_threshold),
            "median_threshold": _float_or_none(self.median_threshold),
            "any_medal": self.any_medal,
            "gold_medal": self.gold_medal,
            "silver_medal": self.silver_medal,
            "bronze_medal": self.bronze_medal,
            "above_median": self.above_median,
            "submission_exists": self.submission_exists,
            "valid_submission": self.valid_submission,
            "is_lower_better": self.is_lower_better,
            "created_at": self.created_at.isoformat(),
            "submission_path": self.submission_path,
        }


def _float_or_none(value: float | None) -> float | None:
    return None if value is None else float(value)


def in_split(competition_id: str, split: str | None) -> bool:
    """Whether the competition belongs to `split` (one of SPLIT_NAMES); every one does to
    None."""
    return split is None or competition_id in SPLITS[split]


def aggregate(reports: Sequence[CompetitionReport]) -> dict[str, Any]:
    """MLE-bench's summary of several runs: totals, then every competition report. A run
    ranked on no leaderboard counts no medals."""
    gold = sum(bool(r.gold_medal) for r in reports)
    silver = sum(bool(r.silver_medal) for r in reports)
    bronze = sum(bool(r.bronze_medal) for r in reports)
    return {
        "total_runs": len(reports),
        "total_runs_with_submissions": sum(r.submission_exists for r in reports),
        "total_valid_submissions": sum(r.valid_submission for r in reports),
        "total_medals": gold + silver + bronze,
        "total_gold_medals": gold,
        "total_silver_medals": silver,
        "total_bronze_medals": bronze,
        "total_above_median": sum(bool(r.above_median) for r in reports),
        "competition_reports": [r.to_dict() for r in reports],
    }


def write_aggregate(summary: dict[str, Any], output_dir: Path,
                    now: datetime | None = None) -> Path:
    """Write `summary` to `output_dir/<UTC time>-GMT_grading_report.json`, named as MLE-bench
    names it (`time.strftime("%Y-%m-%dT%H-%M-%S-%Z", time.gmtime())`); the path written.
    `now` is the time to name it by (a naive one is taken as UTC)."""
    moment = now or datetime.now(UTC)
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC)
    stamp = moment.strftime("%Y-%m-%dT%H-%M-%S")
    output_dir.mkdir(parents=True, exist_ok=True)
    path = output_dir / f"{stamp}-GMT_grading_report.json"
    path.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return path
