"""The store's reads for listings: a page of a task's nodes, and what a task list shows of
many tasks in one read each (not one read per task)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from typing import Any

from mlmaster_daemon.models import NodeState
from mlmaster_daemon.store.base import StoreBase
from mlmaster_daemon.store.records import NodeRecord
from mlmaster_daemon.store.rows import NODE_COLUMNS, node_of


class ListingReads(StoreBase):
    """Reads for the API's listings."""

    async def list_nodes_page(self, task_id: str, after: int | None,
                              limit: int) -> list[NodeRecord]:
        """At most `limit` of the task's nodes whose id is above `after`, by id: a page of a
        tree too large to send or hold whole (the primary key orders it, so a page costs the
        same wherever it starts)."""
        rows = await self._fetch(
            f"SELECT {NODE_COLUMNS} FROM nodes WHERE task_id = ? AND id > ? ORDER BY id LIMIT ?",
            (task_id, -1 if after is None else after, limit))
        return [node_of(r) for r in rows]

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
            "SELECT task_id, COUNT(*), COALESCE(SUM(prompt_tokens), 0),"
            " COALESCE(SUM(completion_tokens), 0), COALESCE(SUM(reasoning_tokens), 0),"
            " COALESCE(SUM(cost), 0), COALESCE(SUM(latency_s), 0) FROM llm_calls"
            f" WHERE task_id IN ({', '.join('?' * len(task_ids))}) GROUP BY task_id",
            tuple(task_ids))
        found = {str(r[0]): r[1:] for r in rows}
        usage = {}
        for task_id in task_ids:
            calls, prompt, completion, reasoning, cost, latency = found.get(
                task_id, (0, 0, 0, 0, 0, 0))
            usage[task_id] = {
                "calls": calls, "prompt_tokens": prompt, "completion_tokens": completion,
                "reasoning_tokens": reasoning, "total_tokens": prompt + completion,
                "cost": round(float(cost), 6), "latency_s": round(float(latency), 3)}
        return usage

    async def node_summaries_page(self, task_id: str, after: int | None,
                                  limit: int) -> list[dict[str, Any]]:
        """`list_nodes_page` as `NodeRecord.public()` dicts, read without the nodes' code,
        plans and analyses, which a listing leaves out (a third of the time on a tree of
        2 KB scripts)."""
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
        # One thread hop, not `_fetch_one`'s three: every listing request asks.
        rows = await asyncio.shield(self._reader.execute_fetchall("PRAGMA data_version"))
        return int(next(iter(rows))[0])
