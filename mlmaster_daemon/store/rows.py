"""Rows of the store's tables: their columns, and the mapping between rows and records.
Every value written goes through `redact`: no key the daemon holds reaches the database."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import aiosqlite

from mlmaster_daemon.models import CallRecord, NodeState, Operator, TaskState
from mlmaster_daemon.redact import redact, redact_value
from mlmaster_daemon.store.records import NodeRecord, PromptedCall, TaskRecord
from mlmaster_daemon.tasks.spec import TaskSpec

TASK_COLUMNS = (
    "id, name, task_dir, spec, policy, steps, time_limit_s, node_timeout_s, state, error,"
    " best_node_id, best_metric, created_at, started_at, finished_at, max_tokens, max_cost,"
    " submitter_uid, submitter, active_s, holdout, selection"
)
NODE_COLUMNS = (
    "task_id, id, parent_id, operator, state, plan, summary, code, metric, error, exit_code,"
    " pid, visits, value, created_at, started_at, finished_at, parent_ids, analysis,"
    " pid_start_time, boot_id, slot, gpu_peak_mb, gpu_seconds, interrupted, uct, pick_reason,"
    " holdout_metric"
)
# The node columns with the code left out (read as NULL): a big tree's code is hundreds of MB.
NODE_COLUMNS_WITHOUT_CODE = NODE_COLUMNS.replace(" code,", " NULL,", 1)
NODE_UPDATABLE = frozenset(
    {"state", "plan", "summary", "code", "metric", "error", "exit_code", "pid", "started_at",
     "finished_at", "analysis", "pid_start_time", "boot_id", "slot", "gpu_peak_mb",
     "gpu_seconds", "interrupted", "holdout_metric"}
)
CALL_COLUMNS = (
    "role, model, endpoint, prompt_tokens, completion_tokens, reasoning_tokens, latency_s, cost,"
    " attempts, content, reasoning, prompt"
)
TASK_UPDATABLE = frozenset(
    {"state", "error", "best_node_id", "best_metric", "started_at", "finished_at", "active_s",
     "holdout", "selection"}
)
# Task columns that hold a JSON object (None: not set).
TASK_JSON = frozenset({"holdout", "selection"})


async def insert_calls(db: aiosqlite.Connection, task_id: str, node_id: int | None,
                        calls: Iterable[CallRecord], now: float) -> None:
    await db.executemany(
        f"INSERT INTO llm_calls (task_id, node_id, {CALL_COLUMNS}, created_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [(task_id, node_id, c.role, c.model, c.endpoint, c.prompt_tokens, c.completion_tokens,
          c.reasoning_tokens, c.latency_s, c.cost, c.attempts, redact(c.content),
          redact(c.reasoning),
          # The prompt was redacted before it became JSON (see records.prompt_json).
          redact(c.prompt) if isinstance(c, PromptedCall) and c.prompt else None, now)
         for c in calls],
    )


async def update_row(
    db: aiosqlite.Connection, table: str, allowed: frozenset[str], where: str,
    key: tuple[Any, ...], fields: Mapping[str, Any],
) -> int:
    """Set `fields` on the rows `where` selects; how many rows changed."""
    unknown = set(fields) - allowed
    if unknown:
        raise ValueError(f"cannot update {table} columns {sorted(unknown)}")
    if not fields:
        return 0
    # No key the daemon holds is ever written: errors and summaries quote what jobs printed.
    values = [v.value if isinstance(v, TaskState | NodeState)
              else json.dumps(redact_value(v)) if isinstance(v, dict) else redact_value(v)
              for v in fields.values()]
    assignments = ", ".join(f"{name} = ?" for name in fields)
    cursor = await db.execute(f"UPDATE {table} SET {assignments} WHERE {where}",
                              (*values, *key))
    return cursor.rowcount


def task_of(row: Any, description: str = "") -> TaskRecord:
    spec = json.loads(row[3])
    spec["description"] = description
    return TaskRecord(
        id=row[0], name=row[1], task_dir=row[2], spec=TaskSpec.from_dict(spec),
        policy=row[4], steps=row[5], time_limit_s=row[6], node_timeout_s=row[7],
        state=TaskState(row[8]), error=row[9], best_node_id=row[10], best_metric=row[11],
        created_at=row[12], started_at=row[13], finished_at=row[14], max_tokens=row[15],
        max_cost=row[16], submitter_uid=row[17], submitter=row[18], active_s=row[19],
        holdout=_json_object(row[20]), selection=_json_object(row[21]),
    )


def _json_object(text: str | None) -> dict[str, Any] | None:
    value = json.loads(text) if text else None
    return value if isinstance(value, dict) else None


def node_of(row: Any) -> NodeRecord:
    return NodeRecord(
        task_id=row[0], id=row[1], parent_id=row[2], operator=Operator(row[3]),
        state=NodeState(row[4]), plan=row[5], summary=row[6], code=row[7], metric=row[8],
        error=row[9], exit_code=row[10], pid=row[11], visits=row[12], value=row[13],
        created_at=row[14], started_at=row[15], finished_at=row[16],
        parent_ids=tuple(json.loads(row[17])) if row[17] else (
            () if row[2] is None else (row[2],)),
        analysis=row[18], pid_start_time=row[19], boot_id=row[20], slot=row[21],
        gpu_peak_mb=row[22], gpu_seconds=row[23], interrupted=bool(row[24]), uct=row[25],
        pick_reason=row[26], holdout_metric=row[27],
    )


# The sums `usage_totals` reads, in its order, over a selection of llm_calls.
USAGE_SUMS = ("COUNT(*), COALESCE(SUM(prompt_tokens), 0), COALESCE(SUM(completion_tokens), 0),"
              " COALESCE(SUM(reasoning_tokens), 0), COALESCE(SUM(cost), 0),"
              " COALESCE(SUM(latency_s), 0)")


def usage_totals(sums: Sequence[Any]) -> dict[str, Any]:
    """Model usage as the API shows it, from a row of `USAGE_SUMS`."""
    calls, prompt, completion, reasoning, cost, latency = sums
    return {"calls": calls, "prompt_tokens": prompt, "completion_tokens": completion,
            "reasoning_tokens": reasoning, "total_tokens": prompt + completion,
            "cost": round(float(cost), 6), "latency_s": round(float(latency), 3)}


def call_of(row: Any) -> PromptedCall:
    """A row read with CALL_COLUMNS ("" for a prompt that was not kept)."""
    return PromptedCall(
        role=row[0], model=row[1], endpoint=row[2], prompt_tokens=row[3],
        completion_tokens=row[4], reasoning_tokens=row[5], latency_s=row[6], cost=row[7],
        attempts=row[8], content=row[9], reasoning=row[10], prompt=row[11] or "",
    )
