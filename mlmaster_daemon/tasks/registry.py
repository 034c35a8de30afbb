"""The MLE-bench competitions the project knows (tasks/data/mlebench.toml, after openai/mle-bench
commit 783b15a): how each is scored and where its files are, so a folder prepared by
`mlebench prepare` runs as it is."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

from mlmaster_daemon.tasks.spec import Metric

MLEBENCH_COMMIT = "783b15af77404fbaffe7255b0c4a934b46153389"
# experiments/splits in MLE-bench: low.txt ("lite"), medium.txt, high.txt and dev.txt.
SPLITS = ("lite", "medium", "high", "dev")
# The 75 of the full benchmark (split75.txt) are low + medium + high.
FULL_SPLITS = ("lite", "medium", "high")


@dataclass(frozen=True)
class Competition:
    """One known competition. `train_file`/`test_file` None: the usual name; "": none.
    `metric` None: the project cannot score it (`unsupported` says why); COMPETITION: the
    search and `grade` use the reproduction of mle-bench's `grader` and `scoring` names it."""

    id: str
    metric: Metric | None
    id_column: str
    targets: tuple[str, ...]
    split: str
    modality: str
    scoring: str
    lower_is_better: bool
    grader: str | None = None
    label: str | None = None
    train_file: str | None = None
    test_file: str | None = None
    sample: str | None = None
    answers: str | None = None
    map_k: int = 5
    unsupported: str | None = None
    answer_columns: tuple[str, ...] = ()

    @property
    def in_full(self) -> bool:
        """Whether it is one of the 75 competitions of the full benchmark."""
        return self.split in FULL_SPLITS


@cache
def competitions() -> dict[str, Competition]:
    """Every known competition by id."""
    text = resources.files("mlmaster_daemon.tasks").joinpath("data/mlebench.toml").read_text()
    return {cid: _competition(cid, raw) for cid, raw in tomllib.loads(text).items()}


def _competition(cid: str, raw: dict[str, Any]) -> Competition:
    metric = Metric(raw["metric"]) if "metric" in raw else None
    if metric is None and "unsupported" not in raw:
        raise ValueError(f"mlebench.toml: {cid} has no metric and no `unsupported` reason")
    if raw["split"] not in SPLITS:
        raise ValueError(f"mlebench.toml: {cid} has unknown split {raw['split']!r}")
    if metric is not None and "grader" not in raw:
        raise ValueError(f"mlebench.toml: {cid} has a metric but names no grader (every "
                         "runnable competition is graded as mle-bench grades it)")
    own = None if metric in (None, Metric.COMPETITION) else metric
    lower = raw.get("lower_is_better", own.lower_is_better if own is not None else None)
    if lower is None:
        raise ValueError(f"mlebench.toml: {cid} needs lower_is_better (its metric has no "
                         "direction of its own)")
    return Competition(
        id=cid, metric=metric, id_column=str(raw["id_column"]),
        targets=tuple(raw.get("targets", ())), split=str(raw["split"]),
        modality=str(raw["modality"]),
        scoring=str(raw.get("scoring") or (metric.value if metric else "")),
        lower_is_better=bool(lower), grader=raw.get("grader"), label=raw.get("label"),
        train_file=raw.get("train_file"), test_file=raw.get("test_file"),
        sample=raw.get("sample"), answers=raw.get("answers"), map_k=int(raw.get("map_k", 5)),
        unsupported=raw.get("unsupported"),
        answer_columns=tuple(raw.get("answer_columns", ())),
    )


def lookup(competition_id: str) -> Competition | None:
    return competitions().get(competition_id)


def split_ids(split: str) -> list[str]:
    """The ids of one split ("lite", "medium", "high", "dev", or "full": the 75), sorted."""
    if split == "full":
        return sorted(c.id for c in competitions().values() if c.in_full)
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; known: {', '.join(SPLITS)}, full")
    return sorted(c.id for c in competitions().values() if c.split == split)
