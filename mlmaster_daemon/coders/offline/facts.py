"""What a parent's run printed that its children use: the machine-readable lines of the
offline coder's scripts (`columns: ...`, `target: ...`, `member=1 ...`, `time budget: ...`).

Output from other scripts simply gives no facts; every field is then unknown (None).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_PAIR = re.compile(r"(\w+)=([-\w.]+)")
_METRIC = re.compile(r"^validation_metric=(\S+)$", re.MULTILINE)


@dataclass(frozen=True)
class RunFacts:
    """Facts about a parent's data and run; None where its output did not say."""

    rows: int | None = None
    numeric: int | None = None
    categorical: int | None = None
    dates: int | None = None
    texts: int | None = None
    missing: int | None = None
    classes: int | None = None
    imbalance: float | None = None
    # The main member's LightGBM rounds: the mean best round over folds, and the cap.
    best_iteration: int | None = None
    rounds_cap: int | None = None
    # How the main member stopped: patience, cap (ran out of rounds), time or done.
    stopped: str | None = None
    seconds: float | None = None
    validation_metric: float | None = None
    # Whether the time budget cut any member short (rounds, trees or folds).
    time_bound: bool = False

    @property
    def hit_rounds_cap(self) -> bool:
        """Whether LightGBM was still improving when it ran out of rounds."""
        return self.stopped == "cap"

    def has(self, kind: str) -> bool:
        """Whether the data has columns of `kind` (numeric, categorical, dates, texts,
        missing); True when unknown, so that a change is never ruled out on no evidence."""
        count: int | None = getattr(self, kind)
        return count is None or count > 0


def read_facts(output: str | None) -> RunFacts:
    """The facts in a script's output (or its tail); the last line of each kind wins."""
    text = output or ""
    columns: dict[str, str] = {}
    target: dict[str, str] = {}
    member: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("columns: "):
            columns = dict(_PAIR.findall(line))
        elif line.startswith("target: "):
            target = dict(_PAIR.findall(line))
        elif line.startswith("member=1 "):
            member = dict(_PAIR.findall(line))
    found = _METRIC.findall(text)
    return RunFacts(
        rows=_int(columns.get("rows")),
        numeric=_int(columns.get("numeric")),
        categorical=_int(columns.get("categorical")),
        dates=_int(columns.get("date")),
        texts=_int(columns.get("text")),
        missing=_int(columns.get("missing")),
        classes=_int(target.get("classes")),
        imbalance=_float(target.get("imbalance")),
        best_iteration=_int(member.get("best_iteration")),
        rounds_cap=_int(member.get("rounds_cap")),
        stopped=member.get("stopped"),
        seconds=_float(member.get("seconds")),
        validation_metric=_float(found[-1]) if found else None,
        time_bound="time budget:" in text,
    )


def _int(text: str | None) -> int | None:
    try:
        return None if text is None else int(text)
    except ValueError:
        return None


def _float(text: str | None) -> float | None:
    try:
        return None if text is None else float(text)
    except ValueError:
        return None
