"""Following a task live: progress lines from the event stream until the task ends."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mlmaster_daemon.api.client import Client

TERMINAL = {"finished", "cancelled", "failed"}


def format_metric(value: float | None) -> str:
    return "-" if value is None else f"{value:.5f}"


def progress_line(event: dict[str, Any], best: dict[str, Any] | None,
                  steps: int | None = None) -> str | None:
    """One human line for an event worth showing, or None. The counter is nodes finished
    out of the task's step budget `steps` (the nodes created so far when it is not known)."""
    kind = event.get("type")
    if kind == "node.state" and event.get("state") in ("running", "done", "buggy", "failed"):
        best_text = "none yet" if best is None else (
            f"{format_metric(best['metric'])} (node {best['node_id']})")
        outcome = event["state"]
        if outcome == "done":
            outcome = f"done    metric={format_metric(event.get('metric'))}"
        elif outcome in ("buggy", "failed") and event.get("error"):
            outcome = f"{outcome:<7} {str(event['error'])[:70]}"
        out_of = steps if steps is not None else event.get("nodes_total", 0)
        return (f"[{event.get('nodes_done', 0):>3}/{out_of:<3} done] "
                f"node {event['node_id']:<3} {event['operator']:<7} {outcome}  | best {best_text}")
    if kind == "task.best":
        metric = format_metric(event["metric"])
        return f"           new best: node {event['node_id']} metric={metric}"
    if kind == "task.state":
        suffix = f" ({event['error']})" if event.get("error") else ""
        return f"task {event['task_id']} is {event['state']}{suffix}"
    return None


async def follow(client: Client, task_id: str, emit: Callable[[str], None]) -> dict[str, Any]:
    """Print progress until the task reaches a terminal state; return the final task."""
    best: dict[str, Any] | None = None
    steps: int | None = None
    async for event in client.events(task_id):
        if event.get("type") == "hello":
            # Subscribed first, then read the state, so no transition can slip between the two.
            task = await client.task(task_id)
            if task["state"] in TERMINAL:
                return task
            steps = task.get("steps")
            emit(f"task {task_id} is {task['state']}: {task['nodes_done']} of {steps} steps "
                 f"done")
            best = task.get("best")
            continue
        if event.get("type") == "task.best":
            best = {"node_id": event["node_id"], "metric": event["metric"]}
        line = progress_line(event, best, steps)
        if line:
            emit(line)
        if event.get("type") == "task.state" and event.get("state") in TERMINAL:
            return await client.task(task_id)
    return await client.task(task_id)
