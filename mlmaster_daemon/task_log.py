"""Each task's human-readable log, `tasks/<id>/task.log`, besides the daemon's JSON logs: one line
per event of that task (its state changes and pauses, each node's states with its operator and
parent, its metric or error, every new best), appended as the events are published.

The lines are formatted when the event is published (a bus tap, cheap) and written off the
event loop by one writer. A file is bounded: once it would pass `max_bytes` it becomes
`task.log.1` (replacing the one before) and a fresh `task.log` begins, so a task keeps at most
twice `max_bytes` of log, the newest lines always in `task.log`. Every line passes `redact`;
the file is opened without following a link.
"""

from __future__ import annotations

import asyncio
import os
from datetime import UTC, datetime
from pathlib import Path

from mlmaster_daemon.artefacts import task_root
from mlmaster_daemon.bus import BestImproved, Event, EventBus, NodeStateChanged, TaskStateChanged
from mlmaster_daemon.logs import get_logger
from mlmaster_daemon.models import NodeState
from mlmaster_daemon.redact import redact

log = get_logger("mlmaster.task_log")
TASK_LOG = "task.log"
MAX_TASK_LOG_BYTES = 1024 * 1024
# An error in a line is cut to this many characters (its node's log has it whole).
MAX_ERROR_CHARS = 300
_OPEN_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _metric(value: float) -> str:
    return f"{value:.6g}"


def _error(text: str) -> str:
    # Redacted before the cut: a key cut in two would no longer be recognised.
    flat = " ".join(redact(text).split())
    return flat if len(flat) <= MAX_ERROR_CHARS else flat[:MAX_ERROR_CHARS - 3] + "..."


def describe(event: Event) -> str | None:
    """The event as one line of its task's log (no newline), or None for events it skips."""
    if isinstance(event, TaskStateChanged):
        text = f"task {event.task_id} {event.state}"
        if event.error:
            text += f": {_error(event.error)}"
    elif isinstance(event, NodeStateChanged):
        parent = f"from node {event.parent_id}" if event.parent_id is not None else "from root"
        text = f"node {event.node_id} {event.operator} {parent}: {event.state}"
        if event.metric is not None:
            text += f", metric {_metric(event.metric)}"
        if event.error:
            text += f", error: {_error(event.error)}"
        if NodeState(event.state).terminal:
            text += f" [{event.nodes_done}/{event.nodes_total} nodes done]"
    elif isinstance(event, BestImproved):
        text = f"best improved: node {event.node_id}, metric {_metric(event.metric)}"
    else:
        return None
    return redact(f"{_when(event.ts)}  {text}")


def append_lines(path: Path, lines: list[str], max_bytes: int) -> None:
    """Append `lines` to `path`, first turning it into `path.1` when they would take it past
    `max_bytes`. Blocking: call it off the event loop."""
    data = "".join(line + "\n" for line in lines).encode("utf-8", "replace")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, _OPEN_FLAGS, 0o640)
    try:
        size = os.fstat(fd).st_size
        if size and size + len(data) > max_bytes:
            os.close(fd)
            fd = -1
            os.replace(path, path.with_name(path.name + ".1"))
            note = (f"(earlier lines are in {path.name}.1; each file holds about "
                    f"{max_bytes // 1024} KiB)\n").encode()
            fd = os.open(path, _OPEN_FLAGS, 0o640)
            data = note + data
        # One line never passes the bound alone by much: the cut keeps the file bounded.
        os.write(fd, data[:max_bytes])
    finally:
        if fd >= 0:
            os.close(fd)


class TaskLogs:
    """The task logs under `state_dir`: `record` is the bus tap; `flush` waits until every line
    recorded so far is written."""

    def __init__(self, state_dir: Path, max_bytes: int = MAX_TASK_LOG_BYTES) -> None:
        self.state_dir = state_dir
        self.max_bytes = max_bytes
        self._pending: dict[str, list[str]] = {}
        self._writer: asyncio.Task[None] | None = None
        # Tasks whose log could not be written last time: said once, not at every line.
        self._failing: set[str] = set()

    def follow(self, bus: EventBus) -> None:
        bus.tap(self.record)

    def path(self, task_id: str) -> Path:
        return task_root(self.state_dir, task_id) / TASK_LOG

    def record(self, event: Event) -> None:
        line = describe(event)
        if line is None:
            return
        self._pending.setdefault(event.task_id, []).append(line)
        if self._writer is None or self._writer.done():
            self._writer = asyncio.get_running_loop().create_task(self._write(),
                                                                  name="task logs")

    async def _write(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, {}
            await asyncio.to_thread(self._write_batch, batch)

    def _write_batch(self, batch: dict[str, list[str]]) -> None:
        for task_id, lines in batch.items():
            try:
                append_lines(self.path(task_id), lines, self.max_bytes)
            except OSError as exc:
                # The task goes on; its JSON log lines still say what happened.
                if task_id not in self._failing:
                    self._failing.add(task_id)
                    log.warning("could not write the task's log; its lines are lost until "
                                "a write works again", task_id=task_id,
                                path=str(self.path(task_id)), error=str(exc))
            else:
                self._failing.discard(task_id)

    async def flush(self) -> None:
        while self._writer is not None and not self._writer.done():
            await asyncio.wait([self._writer])

