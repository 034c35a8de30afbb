"""SQLite store: one writer connection behind a lock, one reader connection, WAL, migrations.

Every write is one `BEGIN IMMEDIATE` transaction, so a state change is durable before the
caller publishes it or acts on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import aiosqlite

from mlmaster_daemon.errors import NodeNotFound, TaskNotFound
from mlmaster_daemon.logs import get_logger
from mlmaster_daemon.models import CallRecord, NodeState, TaskState
from mlmaster_daemon.redact import redact
from mlmaster_daemon.store.listings import ListingReads
from mlmaster_daemon.store.migrations import migrate
from mlmaster_daemon.store.records import NodeRecord, PromptedCall, SavedSearch, TaskRecord
from mlmaster_daemon.store.rows import (
    CALL_COLUMNS,
    NODE_COLUMNS,
    NODE_COLUMNS_WITHOUT_CODE,
    NODE_UPDATABLE,
    TASK_COLUMNS,
    TASK_UPDATABLE,
    USAGE_SUMS,
    call_of,
    insert_calls,
    node_of,
    task_of,
    update_row,
    usage_totals,
)
from mlmaster_daemon.store.search_saves import SearchSaves, save_search

log = get_logger("mlmaster.store")
MAX_CRASHES = 2
# Node rows a read turns into records on the event loop; more are built on a thread.
NODES_ON_THE_LOOP = 1000


def crashed_too_often(crashes: int) -> str:
    """The error of a node failed for having been running at `crashes` daemon crashes."""
    return (f"the daemon stopped abnormally {crashes} times while this node ran (killed, out "
            "of memory, a power cut); it may be what brings the daemon down, so it is not run "
            "again")


CRASHED_TOO_OFTEN = crashed_too_often(MAX_CRASHES)
async def _connect(path: Path) -> aiosqlite.Connection:
    # isolation_level=None: we issue BEGIN/COMMIT ourselves.
    conn = await aiosqlite.connect(path, isolation_level=None)
    await conn.execute("PRAGMA busy_timeout = 5000")
    await conn.execute("PRAGMA foreign_keys = ON")
    # FULL: a node's transition must survive power loss, and the write rate is low.
    await conn.execute("PRAGMA synchronous = FULL")
    return conn


class Store(SearchSaves, ListingReads):
    """The daemon's only door to SQLite."""

    @classmethod
    async def open(cls, path: Path) -> Store:
        path.parent.mkdir(parents=True, exist_ok=True)
        writer = await _connect(path)
        try:
            await writer.execute("PRAGMA journal_mode = WAL")
            await migrate(writer)
            reader = await _connect(path)
        except BaseException:
            await writer.close()
            raise
        return cls(path, writer, reader)

    async def close(self) -> None:
        async with self._lock:
            await self._reader.close()
            # A clean stop folds the WAL into the database file, so the file alone is whole.
            with contextlib.suppress(aiosqlite.Error):
                await self._writer.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            await self._writer.close()

    async def insert_task(self, task: TaskRecord) -> None:
        """Store a new task; its description goes apart from the row (see `get_task`)."""
        spec = task.spec.to_dict()
        description = redact(spec.pop("description"))
        async with self._transaction() as db:
            await db.execute(
                f"INSERT INTO tasks ({TASK_COLUMNS}) VALUES ({', '.join('?' * 22)})",
                (
                    task.id, task.name, task.task_dir, json.dumps(spec),
                    task.policy, task.steps, task.time_limit_s, task.node_timeout_s,
                    task.state.value, task.error, task.best_node_id, task.best_metric,
                    task.created_at, task.started_at, task.finished_at, task.max_tokens,
                    task.max_cost, task.submitter_uid, task.submitter, task.active_s,
                    *(None if v is None else json.dumps(v) for v in (task.holdout,
                                                                      task.selection)),
                ),
            )
            await db.execute("INSERT INTO task_texts (task_id, description) VALUES (?, ?)",
                             (task.id, description))

    async def update_task(self, task_id: str, **fields: Any) -> None:
        await self._update("tasks", TASK_UPDATABLE, "id = ?", (task_id,), fields)

    async def get_task(self, task_id: str) -> TaskRecord:
        """The task with its description (which listings leave out)."""
        row = await self._fetch_one(
            f"SELECT {TASK_COLUMNS}, (SELECT description FROM task_texts WHERE task_id = id) FROM"
            " tasks WHERE id = ?",
            (task_id,))
        if row is None:
            raise TaskNotFound(f"no task with id {task_id!r}; `mlmaster ls` lists the tasks")
        return task_of(row, description=row[-1] or "")

    async def list_tasks(self, states: Iterable[TaskState] | None = None) -> list[TaskRecord]:
        """The tasks, oldest first; their specs leave the description out (`get_task` has
        it), so a listing costs the same whatever the descriptions hold."""
        query = f"SELECT {TASK_COLUMNS} FROM tasks"
        params: tuple[str, ...] = ()
        if states is not None:
            params = tuple(s.value for s in states)
            query += f" WHERE state IN ({', '.join('?' * len(params))})"
        rows = await self._fetch(query + " ORDER BY created_at, id", params)
        return [task_of(r) for r in rows]

    async def list_recent_tasks(self, limit: int) -> tuple[list[TaskRecord], int]:
        """The newest `limit` tasks, oldest first, without descriptions; and how many tasks
        there are in all."""
        rows = await self._fetch(
            f"SELECT {TASK_COLUMNS} FROM tasks ORDER BY created_at DESC, id DESC LIMIT ?",
            (limit,))
        count = await self._fetch_one("SELECT COUNT(*) FROM tasks")
        return [task_of(r) for r in list(rows)[::-1]], int(count[0]) if count else 0

    async def insert_node(self, node: NodeRecord) -> None:
        async with self._transaction() as db:
            await db.execute(
                f"INSERT INTO nodes ({NODE_COLUMNS}) VALUES ({', '.join('?' * 28)})",
                (
                    node.task_id, node.id, node.parent_id, node.operator.value, node.state.value,
                    node.plan, node.summary, node.code, node.metric, node.error, node.exit_code,
                    node.pid, node.visits, node.value, node.created_at, node.started_at,
                    node.finished_at, json.dumps(list(node.parent_ids)), node.analysis,
                    node.pid_start_time, node.boot_id, node.slot, node.gpu_peak_mb,
                    node.gpu_seconds, int(node.interrupted), node.uct, node.pick_reason,
                    node.holdout_metric,
                ),
            )

    async def update_node(self, task_id: str, node_id: int, **fields: Any) -> None:
        await self._update("nodes", NODE_UPDATABLE, "task_id = ? AND id = ?", (task_id, node_id),
                           fields)

    async def update_unfinished_node(self, task_id: str, node_id: int, **fields: Any) -> bool:
        """`update_node`, but only while the node has no outcome (done, buggy, failed): a stop
        or cancel that lands just after an outcome was committed must not undo it. Whether the
        node was changed."""
        terminal = tuple(s.value for s in NodeState if s.terminal)
        async with self._transaction() as db:
            changed = await update_row(
                db, "nodes", NODE_UPDATABLE, "task_id = ? AND id = ? AND state NOT IN (?, ?, ?)",
                (task_id, node_id, *terminal), fields)
            return changed > 0

    async def finish_node(
        self,
        task_id: str,
        node_id: int,
        node_fields: Mapping[str, Any],
        stats: Iterable[tuple[int, int, float, float | None]],
        search_state: SavedSearch | None = None,
    ) -> None:
        """Record a node's outcome, the search statistics that changed (id, visits, value,
        UCT score) and the policy's state in one commit, so a restart sees all of them or
        none."""
        async with self._search_transaction(search_state) as db:
            await update_row(db, "nodes", NODE_UPDATABLE, "task_id = ? AND id = ?",
                              (task_id, node_id), node_fields)
            await db.executemany(
                "UPDATE nodes SET visits = ?, value = ?, uct = ? WHERE task_id = ? AND id = ?",
                [(visits, value, uct, task_id, nid) for nid, visits, value, uct in stats],
            )
            await save_search(db, task_id, search_state)

    async def mark_ready(self, task_id: str, node_id: int, fields: Mapping[str, Any],
                         calls: Iterable[CallRecord], now: float,
                         search_state: SavedSearch | None = None) -> None:
        """The node's code, the model calls that wrote it and the search state that knows
        the node, in one commit: after a crash the node is run, not generated again."""
        async with self._search_transaction(search_state) as db:
            await update_row(db, "nodes", NODE_UPDATABLE, "task_id = ? AND id = ?",
                              (task_id, node_id), fields)
            await insert_calls(db, task_id, node_id, calls, now)
            await save_search(db, task_id, search_state)

    async def record_calls(self, task_id: str, node_id: int | None,
                           calls: Iterable[CallRecord], now: float) -> None:
        async with self._transaction() as db:
            await insert_calls(db, task_id, node_id, calls, now)

    async def usage(self, task_id: str, node_id: int | None = None) -> dict[str, Any]:
        """Token, cost and latency totals of a task's (or one node's) model calls."""
        query = f"SELECT {USAGE_SUMS} FROM llm_calls WHERE task_id = ?"
        params: tuple[Any, ...] = (task_id,)
        if node_id is not None:
            query += " AND node_id = ?"
            params += (node_id,)
        row = await self._fetch_one(query, params)
        assert row is not None
        return usage_totals(row)

    async def node_calls(self, task_id: str, node_id: int) -> list[PromptedCall]:
        """The model calls recorded for one node, oldest first, with their prompts."""
        rows = await self._fetch(
            f"SELECT {CALL_COLUMNS} FROM llm_calls WHERE task_id = ? AND node_id = ? ORDER BY id",
            (task_id, node_id))
        return [call_of(r) for r in rows]

    async def get_node(self, task_id: str, node_id: int) -> NodeRecord:
        row = await self._fetch_one(
            f"SELECT {NODE_COLUMNS} FROM nodes WHERE task_id = ? AND id = ?",
            (task_id, node_id))
        if row is None:
            raise NodeNotFound(f"task {task_id} has no node {node_id}")
        return node_of(row)

    async def list_nodes(self, task_id: str, code: bool = True) -> list[NodeRecord]:
        """The task's nodes by id; with `code` False without their code (None: `get_node`
        reads one node's), which is most of a big tree's bytes."""
        columns = NODE_COLUMNS if code else NODE_COLUMNS_WITHOUT_CODE
        rows = await self._fetch(
            f"SELECT {columns} FROM nodes WHERE task_id = ? ORDER BY id", (task_id,))
        if len(rows) < NODES_ON_THE_LOOP:
            return [node_of(r) for r in rows]
        # Off the event loop: building ten thousand records would stall the API meanwhile.
        return await asyncio.to_thread(lambda: [node_of(r) for r in rows])

    async def steps_used(self, task_id: str) -> int:
        """Nodes that count against the task's step budget: all but those a daemon stop
        interrupted before they had code."""
        row = await self._fetch_one(
            "SELECT COUNT(*) FROM nodes WHERE task_id = ? AND interrupted = 0",
            (task_id,))
        assert row is not None
        return int(row[0])

    async def node_counts(self, task_id: str) -> tuple[int, int]:
        """(nodes in the tree, nodes finished) for one task."""
        return (await self.node_counts_of([task_id]))[task_id]

    async def add_lessons(self, task_id: str, lessons: Iterable[tuple[str, str, float]],
                          now: float) -> None:
        """Keep (text, profile JSON, score) lessons learnt on a task."""
        async with self._transaction() as db:
            await db.executemany(
                "INSERT INTO lessons (task_id, text, profile, score, created_at) "
                "VALUES (?, ?, ?, ?, ?)",
                [(task_id, text, profile, score, now) for text, profile, score in lessons],
            )

    async def list_lessons(self, limit: int = 5000) -> list[tuple[str, str, float]]:
        """The most recent lessons, newest first, as (text, profile JSON, score)."""
        rows = await self._fetch(
            "SELECT text, profile, score FROM lessons ORDER BY id DESC LIMIT ?",
            (limit,))
        return [(r[0], r[1], float(r[2])) for r in rows]

    async def running_processes(self) -> list[NodeRecord]:
        """Nodes whose process may still be alive from before a restart."""
        rows = await self._fetch(
            f"SELECT {NODE_COLUMNS} FROM nodes WHERE state IN (?, ?) AND pid IS NOT NULL",
            (NodeState.RUNNING.value, NodeState.EVALUATING.value))
        return [node_of(r) for r in rows]

    async def unfinished_with_code(self) -> list[tuple[str, int]]:
        """(task id, node id) of nodes whose script may have been started: code written, no
        outcome yet, with or without a pid in the journal."""
        rows = await self._fetch(
            "SELECT task_id, id FROM nodes WHERE state IN (?, ?, ?) AND code IS NOT NULL",
            (NodeState.READY.value, NodeState.RUNNING.value, NodeState.EVALUATING.value))
        return [(str(r[0]), int(r[1])) for r in rows]

    async def interrupt_unfinished(self, reason: str, now: float, *, task_id: str | None = None,
                                   crashed: bool = True, max_crashes: int = MAX_CRASHES,
                                   ) -> tuple[int, int]:
        """After a restart (`crashed`), or before a task that stopped on a fault resumes
        (`task_id`, not `crashed`): nodes whose code was already written go back to `ready`
        (their paid answer is run, not asked again); nodes still being generated fail.

        A restart counts a crash against each node that was running or being judged; a node
        at `max_crashes` fails instead of running again (it may be what kills the daemon).
        Returns (requeued, failed)."""
        with_code = (NodeState.READY.value, NodeState.RUNNING.value, NodeState.EVALUATING.value)
        before_code = (NodeState.PENDING.value, NodeState.GENERATING.value)
        during_run = (NodeState.RUNNING.value, NodeState.EVALUATING.value)
        scope, key = ("", ()) if task_id is None else (" AND task_id = ?", (task_id,))
        async with self._transaction() as db:
            crashed_out = 0
            if crashed:
                async with db.execute(
                    f"SELECT task_id, id, crashes + 1 FROM nodes WHERE state IN (?, ?){scope}",
                    (*during_run, *key)) as cur:
                    for row in await cur.fetchall():
                        log.warning("a node was running when the daemon stopped abnormally",
                                    task_id=row[0], node_id=row[1], crashes=row[2],
                                    failed_now=row[2] >= max_crashes)
                await db.execute("UPDATE nodes SET crashes = crashes + 1 "
                                 f"WHERE state IN (?, ?){scope}", (*during_run, *key))
                failed_crash = await db.execute(
                    "UPDATE nodes SET state = ?, error = ?, finished_at = ? "
                    f"WHERE state IN (?, ?) AND crashes >= ?{scope}",
                    (NodeState.FAILED.value, crashed_too_often(max_crashes), now, *during_run,
                     max_crashes,
                     *key))
                crashed_out = failed_crash.rowcount
            requeued = await db.execute(
                "UPDATE nodes SET state = ?, pid = NULL, started_at = NULL "
                f"WHERE state IN (?, ?, ?) AND code IS NOT NULL{scope}",
                (NodeState.READY.value, *with_code, *key),
            )
            failed = await db.execute(
                "UPDATE nodes SET state = ?, error = ?, finished_at = ?, interrupted = 1 "
                f"WHERE (state IN (?, ?) OR (state IN (?, ?, ?) AND code IS NULL)){scope}",
                (NodeState.FAILED.value, reason, now, *before_code, *with_code, *key),
            )
            return requeued.rowcount, failed.rowcount + crashed_out
