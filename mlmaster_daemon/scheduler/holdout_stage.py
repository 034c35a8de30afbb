"""A task's hidden holdout while it runs (the split itself is `tasks/holdout.py`).

At the task's first start the holdout is planned and the nodes' view of the data is built in
the task's folder: `holdout/view/` (what every node's `input/` shows, read-only) and
`holdout/private/` (the answers, the id map and the plan; inside the daemon's state, which the
sandbox hides). A resumed task keeps the saved plan. Each working node's submission to the view
is split: the competition's rows become its `submission/submission.csv`, the holdout rows are
kept in the private folder and scored (`holdout_metric`). Nothing here reaches the search or a
prompt: the holdout stays an honest estimate of how a node generalises.

Blocking file work: async callers use `asyncio.to_thread`.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from mlmaster_daemon.errors import GradingError
from mlmaster_daemon.evaluation import SUBMISSION
from mlmaster_daemon.execution.workspace import Workspace
from mlmaster_daemon.holdout_config import HoldoutConfig, TaskHoldout
from mlmaster_daemon.tasks import holdout
from mlmaster_daemon.tasks.holdout import HoldoutError, HoldoutPlan, Refusal
from mlmaster_daemon.tasks.spec import TaskSpec

HOLDOUT_DIR = "holdout"


@dataclass(frozen=True)
class ActiveHoldout:
    """A task's holdout in use: `view` is the spec its node scripts work on (the original
    spec with the view as public folder); `spec` is the original, for grading and scoring."""

    spec: TaskSpec
    view: TaskSpec
    private_dir: Path
    plan: HoldoutPlan

    def rows_file(self, node_id: int) -> str:
        """Where node `node_id`'s holdout rows are kept, relative to `private_dir`."""
        return f"nodes/{node_id}.csv"

    def split_and_score(self, ws: Workspace, node_id: int) -> float:
        """Split the node's submission to the view (already validated against the view's
        sample): its competition rows replace `submission/submission.csv`, its holdout rows
        are kept privately and scored. Raises `HoldoutError` for a submission that cannot be
        split and `GradingError` for holdout rows the metric refuses."""
        if (ws.root / "submission").is_symlink():
            raise HoldoutError("submission/ must be a folder, not a link")
        nodes = self.private_dir / "nodes"
        nodes.mkdir(parents=True, exist_ok=True)
        staged = nodes / f"{node_id}.real.csv"
        rows = holdout.split_submission(replace(self.view, private_dir=self.private_dir),
                                        ws.root / SUBMISSION, staged)
        kept = self.private_dir / self.rows_file(node_id)
        rows.to_csv(kept, index=False, lineterminator="\n")
        # A rename replaces whatever name the job left there, never writing through it.
        os.replace(staged, ws.root / SUBMISSION)
        return holdout.score_holdout(self.spec, rows, self.private_dir)


def task_settings(config: HoldoutConfig, spec: TaskSpec) -> tuple[bool, float, str | None, str]:
    """Whether the task gets a holdout, its fraction and group column, and who said so last
    (task.toml's [holdout] over the daemon's)."""
    own = TaskHoldout.model_validate(spec.holdout or {})
    enabled = config.enabled if own.enabled is None else own.enabled
    who = ("task.toml's [holdout] enabled = false" if own.enabled is False
           else "the daemon's [holdout] enabled = false")
    return enabled, own.fraction or config.fraction, own.group_column, who


def seed_for(task_id: str, seed: int) -> int:
    """The task's split seed: stable for the task, different between tasks."""
    digest = hashlib.sha256(f"{seed}:{task_id}".encode()).digest()
    return int.from_bytes(digest[:4], "big")


def prepare(spec: TaskSpec, task_root: Path, task_id: str, config: HoldoutConfig,
            seed: int, started: bool = False) -> tuple[ActiveHoldout | None, dict[str, Any]]:
    """The task's holdout, planned and built at its first start and kept from then on, and
    what the task record says of it: {"state": "on", ...} or {"state": "off", "reason"}.
    `started`: the task had its holdout before this start, which keeps it whatever the
    settings say now (its nodes were compared on it)."""
    enabled, fraction, group, who = task_settings(config, spec)
    if not enabled and not started:
        return None, {"state": "off", "reason": f"turned off by {who}"}
    base = task_root / HOLDOUT_DIR
    view_dir, private_dir = base / "view", base / "private"
    try:
        saved = holdout.load_plan(private_dir)
        if saved is None and started:
            return None, {"state": "off", "reason": f"its saved split in {private_dir} is "
                          "gone: the nodes scored so far cannot be compared on another"}
        if saved is None:
            planned = holdout.plan(spec, seed=seed_for(task_id, seed), fraction=fraction,
                                   group_column=group)
            if isinstance(planned, Refusal):
                return None, {"state": "off", "reason": planned.reason}
            saved = planned
        if not view_dir.is_dir() or view_dir.is_symlink():
            # Built aside and renamed: a crash never leaves a half view in use.
            building = base / "view.new"
            holdout.build_view(spec, saved, building, private_dir)
            shutil.rmtree(view_dir, ignore_errors=True)
            building.rename(view_dir)
    except HoldoutError as exc:
        return None, {"state": "off", "reason": exc.message}
    active = ActiveHoldout(spec, replace(spec, public_dir=view_dir), private_dir, saved)
    return active, {"state": "on", "rows": len(saved.rows), "fraction": saved.fraction,
                    "group_column": saved.group_column,
                    "columns": list(saved.label_columns)}


def score_node(active: ActiveHoldout, ws: Workspace, node_id: int) -> tuple[float | None,
                                                                             str | None]:
    """(holdout metric, None), or (None, why the submission is invalid for the competition):
    a submission that cannot be split back has no valid competition part. Holdout rows the
    metric refuses leave the node working, without a holdout score."""
    try:
        return active.split_and_score(ws, node_id), None
    except HoldoutError as exc:
        return None, exc.message.removeprefix("the submission cannot be split: ")
    except GradingError:
        return None, None
