"""The hidden holdout's settings: the daemon's `[holdout]` config section, and a task folder's
own `[holdout]` table in task.toml, which overrides it for that task."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

# How the final submission is chosen among the working nodes (tasks/selection.Rule).
SelectionRule = Literal["validation", "holdout", "holdout+cv"]


class HoldoutConfig(BaseModel):
    """Hold out part of each tabular task's labelled rows from the node scripts, score every
    working node on it, and choose the final submission by that score."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    # The share of labelled train rows held out (stratified for classification).
    fraction: float = Field(default=0.1, gt=0.0, lt=0.5)
    # "validation": the node's own validation metric (what the search sees); "holdout": the
    # holdout score; "holdout+cv": the mean of both. Without a holdout: validation.
    selection: SelectionRule = "holdout"
    # The k best nodes by holdout are averaged at the end; the average becomes the final
    # submission only when it beats the best single node on the holdout. 1: no ensemble.
    ensemble_k: int = Field(default=3, ge=1, le=20)


class TaskHoldout(BaseModel):
    """task.toml's `[holdout]`: `enabled = false` for data a random split would break (a time
    series, say), another `fraction`, or a `group_column` whose groups stay whole."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool | None = None
    fraction: float | None = Field(default=None, gt=0.0, lt=0.5)
    group_column: str | None = Field(default=None, min_length=1)
