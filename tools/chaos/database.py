"""The daemon's database as the chaos run reads it between kills: directly and read-only.

Column names are those of `mlmaster_daemon/store/migrations/*.sql`; state strings are the
values of `mlmaster_daemon.models.NodeState` and `TaskState`.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlmaster_daemon.models import NodeState, TaskState

NodeKey = tuple[str, int]

# A finished node's own outcome. visits and value are not here: backpropagation changes them.
OUTCOME_COLUMNS = ("state", "operator", "parent_id", "parent_ids", "plan", "summary", "code",
                   "metric", "error", "exit_code", "analysis", "pid", "created_at",
                   "started_at", "finished_at", "interrupted", "holdout_metric")

# The state strings of finished nodes and ended tasks, taken from the enums' `terminal`, for
# callers that test a raw database string (tools.hostile).
FINISHED = frozenset(state.value for state in NodeState if state.terminal)
TERMINAL_TASK = frozenset(state.value for state in TaskState if state.terminal)


@dataclass(frozen=True)
class NodeRow:
    """One node as the database shows it: its state and its own outcome columns."""

    task_id: str
    id: int
    state: str
    outcome: tuple[tuple[str, Any], ...]

    @property
    def finished(self) -> bool:
        """Whether the node has its outcome (done, buggy or failed)."""
        return NodeState(self.state).terminal

    def differences(self, later: NodeRow) -> list[str]:
        return [name for (name, a), (_n, b) in zip(self.outcome, later.outcome, strict=True)
                if a != b]


def connect(db: Path) -> sqlite3.Connection:
    """A read-only connection to the database `db`."""
    return sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True, timeout=10)


def _marks(ids: list[str]) -> str:
    return ", ".join("?" * len(ids))


def read_nodes(db: Path, task_ids: Iterable[str]) -> dict[NodeKey, NodeRow]:
    """Every node of `task_ids`, read-only; the code is kept as its SHA-256."""
    ids = list(task_ids)
    query = (f"SELECT task_id, id, {', '.join(OUTCOME_COLUMNS)} FROM nodes "
             f"WHERE task_id IN ({_marks(ids)})")
    with connect(db) as conn:
        rows = conn.execute(query, ids).fetchall()
    conn.close()
    nodes = {}
    for task_id, node_id, *values in rows:
        outcome = dict(zip(OUTCOME_COLUMNS, values, strict=True))
        if outcome["code"] is not None:
            outcome["code"] = hashlib.sha256(outcome["code"].encode()).hexdigest()
        nodes[(task_id, node_id)] = NodeRow(task_id, node_id, outcome["state"],
                                            tuple(outcome.items()))
    return nodes


def read_states(conn: sqlite3.Connection, task_ids: Iterable[str]) -> dict[NodeKey, str]:
    """Just the state of every node of `task_ids`, on an open read-only connection (cheap
    enough to poll every few milliseconds)."""
    ids = list(task_ids)
    rows = conn.execute(f"SELECT task_id, id, state FROM nodes WHERE task_id IN ({_marks(ids)})",
                        ids).fetchall()
    return {(task_id, node_id): state for task_id, node_id, state in rows}


def read_tasks(db: Path, task_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
    """state, error, steps, best node and metric, spec, search state (and its tree's rows, as
    `tree_rows`) and final selection of each task."""
    ids = list(task_ids)
    with connect(db) as conn:
        conn.row_factory = sqlite3.Row
        rows = conn.execute(
            "SELECT id, state, error, steps, best_node_id, best_metric, spec, search_state,"
            " selection "
            f"FROM tasks WHERE id IN ({_marks(ids)})", ids).fetchall()
        tasks = {row["id"]: {**dict(row), "tree_rows": []} for row in rows}
        # The search tree's nodes, saved one row each apart from the rest of the state.
        for task_id, raw in conn.execute(
                f"SELECT task_id, row FROM search_nodes WHERE task_id IN ({_marks(ids)})"
                " ORDER BY task_id, id", ids):
            tasks[task_id]["tree_rows"].append(raw)
    conn.close()
    return tasks


def task_ended(task: dict[str, Any]) -> bool:
    """Whether a task read by `read_tasks` has ended (finished, cancelled or failed)."""
    return TaskState(task["state"]).terminal
