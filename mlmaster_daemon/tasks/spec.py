"""What a task is: the competition's files, its metric and the metric's direction."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any


class Metric(StrEnum):
    """The metrics a task may be scored with. With several target columns (`targets`),
    ROC AUC and RMSLE are averaged over the columns (MLE-bench's column-wise variants)."""

    ACCURACY = "accuracy"
    ROC_AUC = "roc_auc"
    LOG_LOSS = "log_loss"
    RMSE = "rmse"
    MAE = "mae"
    RMSLE = "rmsle"
    # Quadratic weighted kappa on integer (ordinal) labels.
    QWK = "qwk"
    # Mean average precision at k over space-separated predicted labels (k: TaskSpec.map_k).
    MAP_AT_K = "map@k"
    # F1 of the positive (largest) label, and its micro / macro averages over all labels.
    F1 = "f1"
    F1_MICRO = "f1_micro"
    F1_MACRO = "f1_macro"
    # A known MLE-bench competition's own metric (mean Levenshtein distance, Dice over
    # run-length masks, ...), computed by the reproduction of mle-bench's grader for it
    # (`registry.Competition.grader`); its direction is the competition's.
    COMPETITION = "competition"

    @property
    def lower_is_better(self) -> bool:
        """The metric's direction. COMPETITION has none of its own: read the task's
        (`TaskSpec.lower_is_better`, the registry's)."""
        if self is Metric.COMPETITION:
            raise ValueError("the competition metric's direction is the competition's: read "
                             "TaskSpec.lower_is_better")
        return self in (Metric.LOG_LOSS, Metric.RMSE, Metric.MAE, Metric.RMSLE)

    @property
    def is_regression(self) -> bool:
        return self in (Metric.RMSE, Metric.MAE, Metric.RMSLE)

    @property
    def needs_probabilities(self) -> bool:
        return self in (Metric.ROC_AUC, Metric.LOG_LOSS)


# The metrics the project computes itself, for any task (COMPETITION needs a known
# competition's grader).
PROJECT_METRICS: tuple[Metric, ...] = tuple(m for m in Metric if m is not Metric.COMPETITION)


@dataclass(frozen=True)
class TaskSpec:
    """A competition folder resolved and validated. The search never reads `private_dir`."""

    name: str
    root: Path
    public_dir: Path
    private_dir: Path | None
    description: str
    metric: Metric
    lower_is_better: bool
    target: str
    id_column: str
    train_file: str = "train.csv"
    test_file: str = "test.csv"
    sample_submission_file: str = "sample_submission.csv"
    # Every column the metric scores when there are several (e.g. 6 toxicity labels) or when
    # the one scored column is not the training label `target` (jigsaw-unintended-bias scores
    # `prediction`, trains on `target`); empty when `target` alone is scored.
    targets: tuple[str, ...] = ()
    # k of MAP@k.
    map_k: int = 5
    # The MLE-bench competition id this task is, when it is one the project knows.
    competition_id: str | None = None
    # What one node script asks of a Ray worker (task.toml's [resources]; see NodeResources).
    resources: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)
    # task.toml's [holdout] (holdout_config.TaskHoldout): overrides of the daemon's [holdout].
    holdout: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)

    @property
    def scored_columns(self) -> tuple[str, ...]:
        """The submission columns the metric reads."""
        return self.targets or (self.target,)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "root": str(self.root),
            "public_dir": str(self.public_dir),
            "private_dir": str(self.private_dir) if self.private_dir else None,
            "description": self.description,
            "metric": self.metric.value,
            "lower_is_better": self.lower_is_better,
            "target": self.target,
            "id_column": self.id_column,
            "train_file": self.train_file,
            "test_file": self.test_file,
            "sample_submission_file": self.sample_submission_file,
            "targets": list(self.targets),
            "map_k": self.map_k,
            "competition_id": self.competition_id,
            "resources": dict(self.resources),
            "holdout": dict(self.holdout),
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> TaskSpec:
        private = raw.get("private_dir")
        return cls(
            name=str(raw["name"]),
            root=Path(raw["root"]),
            public_dir=Path(raw["public_dir"]),
            private_dir=Path(private) if private else None,
            description=str(raw.get("description", "")),
            metric=Metric(raw["metric"]),
            lower_is_better=bool(raw["lower_is_better"]),
            target=str(raw["target"]),
            id_column=str(raw["id_column"]),
            train_file=str(raw.get("train_file", "train.csv")),
            test_file=str(raw.get("test_file", "test.csv")),
            sample_submission_file=str(raw.get("sample_submission_file", "sample_submission.csv")),
            targets=tuple(str(t) for t in raw.get("targets") or ()),
            map_k=int(raw.get("map_k", 5)),
            competition_id=raw.get("competition_id"),
            resources=dict(raw.get("resources") or {}),
            holdout=dict(raw.get("holdout") or {}),
        )


@dataclass(frozen=True)
class TaskOverrides:
    """Fields a submit may give to complete or override `task.toml`."""

    metric: str | None = None
    lower_is_better: bool | None = None
    target: str | None = None
    id_column: str | None = None
    name: str | None = None
