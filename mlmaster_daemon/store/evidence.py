"""What the files under `<state_dir>/tasks` prove the database once held, and the gaps when it
no longer does (a lost or cut-short `-wal`, a restore of an older copy).

The scheduler commits before it writes, so a file is proof of a commit:
- `tasks/<task>/` exists only after the task's row was committed, `nodes/<node>/` only after
  that node's row was;
- `best/node.json` ({"node_id", "metric"}) only after that node was committed done with that
  metric;
- `committed.json` ({"node_id", "state", "metric", "finished"}) only after that node's outcome
  was committed, when the task had `finished` nodes in a terminal state.
A missing or unreadable proof proves nothing. Reading costs one directory listing per task and
two tiny files, each read bounded and without following links, as everything read back from a
folder that generated code could have written.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from mlmaster_daemon.api.schemas import is_node_id, is_task_id
from mlmaster_daemon.untrusted import read_bounded

COMMITTED_NAME = "committed.json"
BEST_NAME = "best"
MAX_PROOF_BYTES = 64 * 1024
TERMINAL_STATES = ("done", "buggy", "failed")
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True)
class Outcome:
    """A node outcome a file proves was committed."""

    node_id: int
    state: str
    metric: float | None
    # The task had at least this many terminal nodes then (0: the file does not say).
    finished: int
    # The proof: committed.json, or the best/ folder whose node.json it is.
    source: Path


@dataclass(frozen=True)
class TaskFiles:
    """One task's folder as far as it proves anything."""

    task_id: str
    root: Path
    node_ids: frozenset[int]
    outcomes: tuple[Outcome, ...]


class GapKind(StrEnum):
    TASK = "task"
    NODE = "node"
    OUTCOME = "outcome"


@dataclass(frozen=True)
class Gap:
    """One thing the files prove that a database does not hold, and the files
    `--accept-lost-work` moves aside so the next check passes and nothing is overwritten."""

    kind: GapKind
    task_id: str
    description: str
    set_aside: tuple[Path, ...]


def read_disk(state_dir: Path) -> list[TaskFiles]:
    """Every task folder under `state_dir/tasks` with its node folders and outcome proofs."""
    try:
        # tasks/ itself may be a link the admin made (to a bigger disk); nothing below it.
        top = os.open(state_dir / "tasks", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        return []
    found = []
    try:
        for name in _subdirs(top):
            if not is_task_id(name):
                continue
            with _open_dir(name, top) as task_fd:
                if task_fd is None:
                    continue
                found.append(_read_task(state_dir / "tasks" / name, task_fd))
    finally:
        os.close(top)
    return found


def find_gaps(tasks: list[TaskFiles], db: Path, immutable: bool = False) -> list[Gap]:
    """What `tasks` prove that the database at `db` lacks; `immutable` for a backup copy,
    which is read without the locks and side files of a live database."""
    with _Knowledge(db, immutable) as known:
        gaps: list[Gap] = []
        for task in tasks:
            gaps.extend(_task_gaps(task, known))
        return gaps


def _task_gaps(task: TaskFiles, known: _Knowledge) -> Iterator[Gap]:
    if not known.has_task(task.task_id):
        yield Gap(GapKind.TASK, task.task_id,
                  f"task {task.task_id} ({len(task.node_ids)} node folders)", (task.root,))
        return
    nodes = known.nodes(task.task_id)
    for node_id in sorted(task.node_ids - nodes):
        yield Gap(GapKind.NODE, task.task_id, f"node {node_id} of task {task.task_id}",
                  (task.root / "nodes" / str(node_id),))
    for outcome in task.outcomes:
        row = known.node(task.task_id, outcome.node_id)
        proof = outcome.source.relative_to(task.root.parent.parent)
        if row is None or row[0] != outcome.state or not _same_metric(row[1], outcome.metric):
            held = "not at all" if row is None else f"{row[0]}, metric {row[1]}"
            # The node's folder holds the lost run; re-running it would overwrite that.
            folder = task.root / "nodes" / str(outcome.node_id)
            lost_run = (folder,) if row is not None and outcome.node_id in task.node_ids else ()
            yield Gap(GapKind.OUTCOME, task.task_id,
                      f"node {outcome.node_id} of task {task.task_id} finished {outcome.state} "
                      f"with metric {outcome.metric} ({proof}); the database has it {held}",
                      (outcome.source, *lost_run))
            continue
        finished = known.finished(task.task_id)
        if finished < outcome.finished:
            yield Gap(GapKind.OUTCOME, task.task_id,
                      f"task {task.task_id} had {outcome.finished} finished nodes ({proof}); "
                      f"the database has {finished}", (outcome.source,))


def _same_metric(held: float | None, proved: float | None) -> bool:
    if proved is None:
        return held is None
    if not math.isfinite(proved):
        # SQLite stores NaN as NULL: a non-finite metric proves only the state.
        return True
    return held is not None and math.isclose(held, proved, rel_tol=1e-12, abs_tol=0.0)


class _Knowledge:
    """What one database holds of tasks and nodes; a database without the tables (a `-wal`
    lost before anything was checkpointed) holds nothing."""

    def __init__(self, db: Path, immutable: bool):
        self.db, self.immutable = db, immutable
        self._conn: sqlite3.Connection | None = None
        self._tasks: set[str] = set()
        self._nodes: dict[str, set[int]] = {}

    def __enter__(self) -> _Knowledge:
        if not self.db.exists():
            return self
        self._conn = open_readonly(self.db, self.immutable)
        tables = {row[0] for row in self._conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name IN ('tasks', 'nodes')")}
        if tables != {"tasks", "nodes"}:
            return self
        self._tasks = {row[0] for row in self._conn.execute("SELECT id FROM tasks")}
        for task_id, node_id in self._conn.execute("SELECT task_id, id FROM nodes"):
            self._nodes.setdefault(task_id, set()).add(node_id)
        return self

    def __exit__(self, *_exc: object) -> None:
        if self._conn is not None:
            self._conn.close()

    def has_task(self, task_id: str) -> bool:
        return task_id in self._tasks

    def nodes(self, task_id: str) -> set[int]:
        return self._nodes.get(task_id, set())

    def node(self, task_id: str, node_id: int) -> tuple[str, float | None] | None:
        if self._conn is None or node_id not in self.nodes(task_id):
            return None
        row = self._conn.execute("SELECT state, metric FROM nodes WHERE task_id = ? AND id = ?",
                                 (task_id, node_id)).fetchone()
        return None if row is None else (str(row[0]), row[1])

    def finished(self, task_id: str) -> int:
        if self._conn is None:
            return 0
        row = self._conn.execute(
            f"SELECT COUNT(*) FROM nodes WHERE task_id = ? AND state IN "
            f"({', '.join('?' * len(TERMINAL_STATES))})", (task_id, *TERMINAL_STATES)).fetchone()
        return int(row[0])


def open_readonly(db: Path, immutable: bool = False) -> sqlite3.Connection:
    """A connection that cannot change the database (nor fold its `-wal` into it on close)."""
    uri = db.absolute().as_uri() + ("?mode=ro&immutable=1" if immutable else "?mode=ro")
    return sqlite3.connect(uri, uri=True)


def _read_task(root: Path, task_fd: int) -> TaskFiles:
    node_ids: frozenset[int] = frozenset()
    with _open_dir("nodes", task_fd) as nodes_fd:
        if nodes_fd is not None:
            node_ids = frozenset(int(n) for n in _subdirs(nodes_fd) if is_node_id(n) and int(n))
    proofs = (_committed(_read_json(root, COMMITTED_NAME), root / COMMITTED_NAME),
              _best(_read_json(root, f"{BEST_NAME}/node.json"), root / BEST_NAME))
    return TaskFiles(root.name, root, node_ids, tuple(p for p in proofs if p is not None))


def _committed(raw: Any, source: Path) -> Outcome | None:
    if not isinstance(raw, dict):
        return None
    node_id, finished = _count(raw.get("node_id")), _count(raw.get("finished"))
    state, metric = raw.get("state"), raw.get("metric")
    number = _number(metric)
    if (node_id is None or finished is None or state not in TERMINAL_STATES
            or (metric is not None and number is None)):
        return None
    return Outcome(node_id, str(state), number, finished, source)


def _best(raw: Any, source: Path) -> Outcome | None:
    if not isinstance(raw, dict):
        return None
    node_id, metric = _count(raw.get("node_id")), _number(raw.get("metric"))
    if node_id is None or metric is None:
        return None
    return Outcome(node_id, "done", metric, 0, source)


def _count(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None


def _number(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


def _subdirs(dir_fd: int) -> list[str]:
    with os.scandir(dir_fd) as entries:
        return [e.name for e in entries if e.is_dir(follow_symlinks=False)]


@contextlib.contextmanager
def _open_dir(name: str, dir_fd: int) -> Iterator[int | None]:
    """The folder `name` inside `dir_fd`, not through a link; None when there is none."""
    try:
        fd = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    except OSError:
        yield None
        return
    try:
        yield fd
    finally:
        os.close(fd)


def _read_json(root: Path, relative: str) -> Any:
    """A small regular file's JSON, or None (missing, a link, not a file, too big, not JSON)."""
    try:
        data = read_bounded(root, relative, MAX_PROOF_BYTES)
    except (OSError, ValueError):
        return None
    try:
        return json.loads(data)
    except (ValueError, RecursionError):
        return None
