"""Grading reports in MLE-bench's format: one per competition run, and their aggregate."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from mlmaster_daemon.tasks import registry
from mlmaster_daemon.tasks.medals import Thresholds

# experiments/splits/low.txt in MLE-bench: the "Lite" split, from the known competitions.
LITE_COMPETITION_IDS = frozenset(registry.split_ids("lite"))
SPLITS: dict[str, frozenset[str]] = {"lite": LITE_COMPETITION_IDS}

SCORE_DECIMALS = 5


@dataclass(frozen=True)
class CompetitionReport:
    """One graded run; `to_dict` has MLE-bench's `CompetitionReport` fields in its order."""

    competition_id: str
    score: float | None
    gold_threshold: float
    silver_threshold: float
    bronze_threshold: float
    median_threshold: float
    any_medal: bool
    gold_medal: bool
    silver_medal: bool
    bronze_medal: bool
    above_median: bool
    submission_exists: bool
    valid_submission: bool
    is_lower_better: bool
    created_at: datetime
    submission_path: str

    @classmethod
    def ranked(cls, competition_id: str, score: float | None, board: Thresholds, *,
               submission_exists: bool, submission_path: str,
               created_at: datetime | None = None) -> CompetitionReport:
        """The report of `score` (None: no valid submission) on a leaderboard's thresholds.

        The score is rounded to 5 decimals before it is ranked, as MLE-bench does.
        """
        if score is not None and not math.isnan(score):
            score = round(score, SCORE_DECIMALS)
        medals = board.rank(score)
        return cls(
            competition_id=competition_id,
            score=score,
            gold_threshold=board.gold,
            silver_threshold=board.silver,
            bronze_threshold=board.bronze,
            median_threshold=board.median,
            any_medal=medals.any,
            gold_medal=medals.gold,
            silver_medal=medals.silver,
            bronze_medal=medals.bronze,
            above_median=medals.above_median,
            submission_exists=submission_exists,
            valid_submission=score is not None,
            is_lower_better=board.lower_is_better,
            # Local time without a zone, like MLE-bench's reports.
            created_at=created_at or datetime.now(),
            submission_path=submission_path,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "competition_id": self.competition_id,
            "score": None if self.score is None else float(self.score),
            "gold_threshold": float(self.gold_threshold),
            "silver_threshold": float(self.silver_threshold),
            "bronze_threshold": float(self.bronze_threshold),
            "median_threshold": float(self.median_threshold),
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


def in_split(competition_id: str, split: str | None) -> bool:
    """Whether the competition belongs to `split` ("lite"); every one does to None."""
    return split is None or competition_id in SPLITS[split]


def aggregate(reports: Sequence[CompetitionReport]) -> dict[str, Any]:
    """MLE-bench's summary of several runs: totals, then every competition report."""
    gold = sum(r.gold_medal for r in reports)
    silver = sum(r.silver_medal for r in reports)
    bronze = sum(r.bronze_medal for r in reports)
    return {
        "total_runs": len(reports),
        "total_runs_with_submissions": sum(r.submission_exists for r in reports),
        "total_valid_submissions": sum(r.valid_submission for r in reports),
        "total_medals": gold + silver + bronze,
        "total_gold_medals": gold,
        "total_silver_medals": silver,
        "total_bronze_medals": bronze,
        "total_above_median": sum(r.above_median for r in reports),
        "competition_reports": [r.to_dict() for r in reports],
    }


def write_aggregate(summary: dict[str, Any], output_dir: Path,
                    now: datetime | None = None) -> Path:
    """Write `summary` to `output_dir/<timestamp>_grading_report.json`; the path written."""
    stamp = (now or datetime.now()).strftime("%Y-%m-%dT%H-%M-%S")
    output_dir.mkdir(parents=True, exist_ok=True)
    path = output_dir / f"{stamp}_grading_report.json"
    path.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return path
