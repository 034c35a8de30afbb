"""Kaggle medal thresholds from a competition's leaderboard, by MLE-bench's rules.

The leaderboard is `leaderboard.csv`, best team first, with a `score` column (other columns
are ignored). Pure Python: the daemon and the CLI read it without loading pandas.
"""

from __future__ import annotations

import csv
import io
import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from mlmaster_daemon import untrusted
from mlmaster_daemon.errors import MlmasterError

LEADERBOARD_FILE = "leaderboard.csv"
MAX_LEADERBOARD_BYTES = 64 * 1024 * 1024
SCORE_COLUMN = "score"


class LeaderboardError(MlmasterError):
    """The competition has no leaderboard, or it cannot be read."""

    code = "leaderboard_error"


@dataclass(frozen=True)
class Medals:
    """Where one score lands on a leaderboard. Medals are exclusive."""

    gold: bool = False
    silver: bool = False
    bronze: bool = False
    above_median: bool = False

    @property
    def any(self) -> bool:
        return self.gold or self.silver or self.bronze


@dataclass(frozen=True)
class Thresholds:
    """The scores a submission must reach for each medal, and the leaderboard's median."""

    gold: float
    silver: float
    bronze: float
    median: float
    lower_is_better: bool

    def rank(self, score: float | None) -> Medals:
        """The medal `score` earns: reaching a threshold (ties included) earns it; above the
        median is strict. None (no valid submission) and NaN earn nothing."""
        if score is None or math.isnan(score):
            return Medals()

        def reaches(threshold: float) -> bool:
            return score <= threshold if self.lower_is_better else score >= threshold

        gold = reaches(self.gold)
        silver = not gold and reaches(self.silver)
        bronze = not gold and not silver and reaches(self.bronze)
        above_median = score < self.median if self.lower_is_better else score > self.median
        return Medals(gold=gold, silver=silver, bronze=bronze, above_median=above_median)


def medal_positions(teams: int) -> tuple[int, int, int]:
    """1-based leaderboard positions of the (gold, silver, bronze) thresholds for `teams` teams
    (kaggle.com/progression as MLE-bench applies it)."""
    if teams < 1:
        raise LeaderboardError("a leaderboard needs at least one team to set medal thresholds")
    if teams < 100:
        return (max(1, teams // 10), max(1, teams // 5), max(1, teams * 2 // 5))
    if teams < 250:
        return (10, teams // 5, teams * 2 // 5)
    gold = 10 + teams // 500
    if teams < 1000:
        return (gold, 50, 100)
    return (gold, teams // 20, teams // 10)


def thresholds(scores: Sequence[float]) -> Thresholds:
    """Medal thresholds of a best-first leaderboard's scores.

    The direction comes from the leaderboard itself: lower is better when the first score is
    below the last. The median leaves out missing (NaN) scores, as pandas does.
    """
    gold, silver, bronze = medal_positions(len(scores))
    present = [s for s in scores if not math.isnan(s)]
    return Thresholds(
        gold=scores[gold - 1],
        silver=scores[silver - 1],
        bronze=scores[bronze - 1],
        median=statistics.median(present) if present else math.nan,
        lower_is_better=scores[0] < scores[-1],
    )


def find_leaderboard(folders: Iterable[Path]) -> Path:
    """The first `leaderboard.csv` in `folders` and their `prepared/` subfolders.

    Raises `LeaderboardError` naming every place it looked.
    """
    looked: list[Path] = []
    for folder in folders:
        for candidate in (folder / LEADERBOARD_FILE, folder / "prepared" / LEADERBOARD_FILE):
            if candidate in looked:
                continue
            if candidate.is_file():
                return candidate
            looked.append(candidate)
    raise LeaderboardError(
        "no leaderboard to rank against: looked for "
        + ", ".join(str(p) for p in looked)
        + "; copy the competition's leaderboard.csv from MLE-bench "
        "(mlebench/competitions/<id>/leaderboard.csv, after `git lfs pull`) beside prepared/, "
        "or pass --leaderboard"
    )


def read_leaderboard(path: Path) -> list[float]:
    """The `score` column of the leaderboard at `path`, in file order (best first); blank
    scores read as NaN. Raises `LeaderboardError` when it cannot be read or is empty."""
    try:
        # Bounded, and never through a link: a leaderboard is a few thousand short rows.
        data = untrusted.read_bounded(path.parent, path.name, MAX_LEADERBOARD_BYTES)
        with io.StringIO(data.decode("utf-8-sig"), newline="") as handle:
            reader = csv.DictReader(handle)
            if reader.fieldnames is None or SCORE_COLUMN not in reader.fieldnames:
                columns = ", ".join(reader.fieldnames or []) or "none"
                raise LeaderboardError(
                    f"{path} has no {SCORE_COLUMN!r} column (columns: {columns}); "
                    "a leaderboard lists teams best first with their score"
                )
            scores = [_score_value(row.get(SCORE_COLUMN), path, n)
                      for n, row in enumerate(reader, start=2)]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise LeaderboardError(f"cannot read the leaderboard {path}: {exc}") from exc
    if not scores:
        raise LeaderboardError(f"the leaderboard {path} has no teams: it needs at least one row")
    return scores


def _score_value(text: str | None, path: Path, line: int) -> float:
    if text is None or not text.strip():
        return math.nan
    try:
        return float(text)
    except ValueError:
        raise LeaderboardError(
            f"{path} line {line}: score {text!r} is not a number; fix or remove the row"
        ) from None
