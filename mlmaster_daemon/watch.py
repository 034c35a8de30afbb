"""Following a task until it ends, from its event stream: a live view on a terminal (see
watch_state.py, watch_view.py), or one line per event when stdout is not a terminal or --plain
asks for it."""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Callable
from typing import Any

import aiohttp
from rich.console import Console, RenderableType
from rich.live import Live

from mlmaster_daemon.api.client import Client
from mlmaster_daemon.clock import Clock, SystemClock
from mlmaster_daemon.errors import MlmasterError
from mlmaster_daemon.watch_state import (
    NODE_KEYS,
    TERMINAL,
    WatchState,
    apply_event,
    apply_nodes,
    apply_slots,
    apply_task,
)
from mlmaster_daemon.watch_view import format_metric, progress_line, render

# The live view redraws this often (for the elapsed time and ETA), and re-reads the task,
# its nodes and the slots after events, or every SNAPSHOT_S without any.
TICK_S = 1.0
SNAPSHOT_S = 5.0
# A burst of events redraws at most this often; the ticker draws what the burst left.
MIN_REDRAW_S = 0.1
# Once the task ends the last frame is printed, not redrawn: it may be taller than the screen.
FINAL_ROWS = 200


def live_console(plain: bool) -> Console | None:
    """The console for the live view, or None for plain lines: when `plain` is asked for, or
    stdout is not a terminal (or a dumb one). TTY_COMPATIBLE=1 or FORCE_COLOR=1 force the live
    view, COLUMNS and LINES its size (rich's rules)."""
    if plain:
        return None
    console = Console()
    return console if console.is_terminal and not console.is_dumb_terminal else None


async def watch_task(client: Client, task_id: str, emit: Callable[[str], None],
                     console: Console | None, clock: Clock | None = None) -> dict[str, Any]:
    """Follow the task until it ends, live on `console`, or as lines to `emit` when it is
    None (see live_console); return the final task."""
    if console is None:
        return await follow(client, task_id, emit)
    return await follow_live(client, task_id, console, clock or SystemClock())


async def follow(client: Client, task_id: str, emit: Callable[[str], None]) -> dict[str, Any]:
    """Print progress until the task reaches a terminal state; return the final task."""
    best: dict[str, Any] | None = None
    steps: int | None = None
    async for event in client.events(task_id):
        if not isinstance(event, dict):
            continue
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
            best = {"node_id": event.get("node_id"), "metric": event.get("metric")}
        line = progress_line(event, best, steps)
        if line:
            emit(line)
        if event.get("type") == "task.state" and event.get("state") in TERMINAL:
            return await client.task(task_id)
    return await client.task(task_id)


class _LiveWatch:
    """The live view's loop: events fold into the state at once; a ticker redraws and
    re-reads the snapshots (visits, tokens, slots) that events do not carry."""

    def __init__(self, client: Client, task_id: str, console: Console, clock: Clock):
        self.client = client
        self.console = console
        self.clock = clock
        self.state = WatchState(task_id)
        self.stale = True
        self.last_read = clock.time()
        self.last_draw = -math.inf

    async def read_snapshots(self) -> dict[str, Any]:
        """Re-read the task, its nodes and the slots into the state; return the task."""
        self.stale = False
        self.last_read = self.clock.time()
        task_id = self.state.task_id
        task: dict[str, Any]
        task, nodes, slots = await asyncio.gather(
            self.client.task(task_id), self.client.nodes(task_id, fields=NODE_KEYS),
            self.client.request("GET", "/v1/slots"))
        apply_task(self.state, task)
        apply_nodes(self.state, nodes)
        apply_slots(self.state, slots)
        self.state.notice = None
        return task

    def draw(self, live: Live, now: bool = False) -> None:
        if now or self.clock.time() - self.last_draw >= MIN_REDRAW_S:
            self.last_draw = self.clock.time()
            live.update(self.frame(), refresh=True)

    def frame(self, rows: int | None = None) -> RenderableType:
        size = self.console.size
        return render(self.state, self.clock.time(), rows or size.height, size.width)

    async def tick(self, live: Live) -> None:
        while True:
            await self.clock.sleep(TICK_S)
            if self.stale or self.clock.time() - self.last_read >= SNAPSHOT_S:
                try:
                    await self.read_snapshots()
                except (MlmasterError, aiohttp.ClientError, TimeoutError) as exc:
                    # The event stream says when the daemon is gone; here, only say so.
                    self.state.notice = f"could not refresh: {exc}"
            self.draw(live, now=True)

    async def run(self) -> dict[str, Any]:
        try:
            await self.follow()
        except (asyncio.CancelledError, KeyboardInterrupt):
            # Ctrl-C stops following, not the task: leave its last state on the screen.
            self.console.print(self.frame())
            raise
        final = await self.read_snapshots()
        self.console.print(self.frame(max(FINAL_ROWS, self.console.size.height)))
        return final

    async def follow(self) -> None:
        """Redraw on events until the task ends (or the stream does)."""
        ticker: asyncio.Task[None] | None = None
        with Live(console=self.console, auto_refresh=False, transient=True,
                  redirect_stdout=False, redirect_stderr=False) as live:
            try:
                async for event in self.client.events(self.state.task_id):
                    if isinstance(event, dict) and event.get("type") == "hello":
                        # Subscribed first, then read, so no transition slips between them.
                        task = await self.read_snapshots()
                        if task.get("state") in TERMINAL:
                            break
                        ticker = ticker or asyncio.create_task(self.tick(live))
                    else:
                        apply_event(self.state, event)
                        self.stale = True
                    # A change of the task's state is drawn at once, whatever the pace.
                    kind = event.get("type") if isinstance(event, dict) else None
                    self.draw(live, now=kind in ("hello", "task.state"))
                    if self.state.state in TERMINAL:
                        break
            finally:
                if ticker is not None:
                    ticker.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await ticker


async def follow_live(client: Client, task_id: str, console: Console,
                      clock: Clock) -> dict[str, Any]:
    """Show the task live on `console` until it ends, then print its last frame; return the
    final task. `clock` gives the elapsed time and paces the redraws."""
    return await _LiveWatch(client, task_id, console, clock).run()


__all__ = ["TERMINAL", "follow", "follow_live", "format_metric", "live_console",
           "progress_line", "watch_task"]
