"""The store's reads for listings: a page of a task's nodes, and what a task list shows of
many tasks in one read each (not one read per task)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from mlmaster_daemon.models import NodeState
from mlmaster_daemon.store.base import StoreBase
from mlmaster_daemon.store.rows import USAGE_SUMS, usage_totals


class ListingReads(StoreBase):
    """Reads for the API's listings."""

    async def node_counts_of(self, task_ids: Sequence[str]) -> dict[str, tuple[int, int]]:
        """`node_counts` of several tasks in one read (a listing's): task id -> (nodes in the
        tree, nodes finished), (0, 0) for a task without nodes."""
        if not task_ids:
            return {}
        terminal = tuple(s.value for s in NodeState if s.terminal)
        rows = await self._fetch(
            "SELECT task_id, COUNT(*), COALESCE(SUM(state IN (?, ?, ?)), 0) FROM nodes"
            f" WHERE task_id IN ({', '.join('?' * len(task_ids))}) GROUP BY task_id",
            (*terminal, *task_ids))
        counts = {str(r[0]): (int(r[1]), int(r[2])) for r in rows}
        return {task_id: counts.get(task_id, (0, 0)) for task_id in task_ids}

    async def usage_of(self, task_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """`usage` of several tasks in one read (a listing's): task id -> the totals `usage`
        gives, all 0 for a task without model calls."""
        if not task_ids:
            return {}
        rows = await self._fetch(
            f"SELECT task_id, {USAGE_SUMS} FROM llm_calls"
            f" WHERE task_id IN ({', '.join('?' * len(task_ids))}) GROUP BY task_id",
            tuple(task_ids))
        found = {str(r[0]): r[1:] for r in rows}
        return {task_id: usage_totals(found.get(task_id, (0, 0, 0, 0, 0, 0)))
                for task_id in task_ids}

    async def node_summaries_page(self, task_id: str, after: int | None,
                                  limit: int) -> list[dict[str, Any]]:
        """At most `limit` of the task's nodes whose id is above `after`, by id, as
        `NodeRecord.public()` dicts, read without the nodes' code, plans and analyses, which
        a listing leaves out (a third of the time on a tree of 2 KB scripts). Built here,
        not through `NodeRecord`: that takes five times as long per page."""
        rows = await self._fetch(
            "SELECT id, parent_id, parent_ids, operator, state, metric, holdout_metric, visits,"
            " value, uct, pick_reason, summary, error FROM nodes"
            " WHERE task_id = ? AND id > ? ORDER BY id LIMIT ?",
            (task_id, -1 if after is None else after, limit))
        return [{"id": r[0], "parent_id": r[1],
                 "parent_ids": json.loads(r[2]) if r[2] else [] if r[1] is None else [r[1]],
                 "operator": r[3], "status": r[4], "metric": r[5], "holdout_metric": r[6],
                 "visits": r[7], "value": r[8], "uct": r[9], "picked_by": r[10],
                 "summary": r[11], "error": r[12]} for r in rows]

    async def data_version(self) -> int:
        """A number that changes whenever a commit changed the database since the last call
        (SQLite's `data_version` on the reader, which the writer's commits move): what a
        cache of reads keys on."""
        row = await self._fetch_one("PRAGMA data_version")
        return int(row[0])
