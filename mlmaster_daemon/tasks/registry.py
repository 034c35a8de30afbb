"""The MLE-bench competitions the project knows (tasks/data/mlebench.toml): how each is scored
and where its files are, so a folder prepared by `mlebench prepare` runs as it is."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from functools import cache
from importlib import resources

from mlmaster_daemon.tasks.spec import Metric

SPLITS = ("lite", "dev")


@dataclass(frozen=True)
class Competition:
    """One known competition. `train_file`/`test_file` None: the usual name; "": none."""

    id: str
    metric: Metric
    id_column: str
    targets: tuple[str, ...]
    split: str
    modality: str
    label: str | None = None
    train_file: str | None = None
    test_file: str | None = None
    sample: str | None = None
    map_k: int = 5
    unsupported: str | None = None


@cache
def competitions() -> dict[str, Competition]:
    """Every known competition by id."""
    text = resources.files("mlmaster_daemon.tasks").joinpath("data/mlebench.toml").read_text()
    known: dict[str, Competition] = {}
    for cid, raw in tomllib.loads(text).items():
        known[cid] = Competition(
            id=cid, metric=Metric(raw["metric"]), id_column=str(raw["id_column"]),
            targets=tuple(raw.get("targets", ())), split=str(raw["split"]),
            modality=str(raw["modality"]), label=raw.get("label"),
            train_file=raw.get("train_file"), test_file=raw.get("test_file"),
            sample=raw.get("sample"), map_k=int(raw.get("map_k", 5)),
            unsupported=raw.get("unsupported"),
        )
    return known


def lookup(competition_id: str) -> Competition | None:
    return competitions().get(competition_id)


def split_ids(split: str) -> list[str]:
    """The ids of one split ("lite" or "dev"), sorted."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; known: {', '.join(SPLITS)}")
    return sorted(c.id for c in competitions().values() if c.split == split)
