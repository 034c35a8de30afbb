"""The live view of `mlmaster watch`: the state it builds from events and snapshots, rendered to
text without a terminal; and the real command on a forced terminal against a real daemon."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import random
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console

from mlmaster_daemon.api.client import Client
from mlmaster_daemon.clock import ManualClock
from mlmaster_daemon.watch import follow_live, live_console
from mlmaster_daemon.watch_state import (
    WatchState,
    apply_event,
    apply_nodes,
    apply_slots,
    apply_task,
    estimate,
)
from mlmaster_daemon.watch_view import progress_line, render
from tests.daemon_process import MLMASTER, running_daemon

TASK = "t0123456789a"
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
STARTED = 1_000_000.0


def _text(state: WatchState, now: float = STARTED + 65, height: int = 40,
          width: int = 120) -> str:
    console = Console(record=True, width=width, file=io.StringIO())
    console.print(render(state, now, height, width))
    return console.export_text()


def _task(**fields: Any) -> dict[str, Any]:
    task: dict[str, Any] = {
        "id": TASK, "name": "breast", "state": "running", "policy": "mcts", "metric": "auc",
        "lower_is_better": False, "steps": 20, "nodes_done": 5, "time_limit_s": 3600.0,
        "started_at": STARTED, "finished_at": None,
        "best": {"node_id": 3, "metric": 0.97, "submission_path": "/x"},
        "usage": {"calls": 7, "total_tokens": 12345, "cost": 0.0123},
        "budget": {"max_tokens": 100000, "max_cost": 0.0}, "error": None}
    task.update(fields)
    return task


def _node(node_id: int, parent: int | None, operator: str, status: str, **fields: Any
          ) -> dict[str, Any]:
    return {"id": node_id, "parent_id": parent, "parent_ids": [] if parent is None else [parent],
            "operator": operator, "status": status, "metric": None, "visits": 0,
            "picked_by": None, "error": None, **fields}


def _small_state() -> WatchState:
    state = WatchState(TASK)
    apply_task(state, _task())
    apply_nodes(state, [
        _node(1, None, "draft", "done", metric=0.9, visits=4, picked_by="draft"),
        _node(2, None, "draft", "buggy", visits=1, error="KeyError: 'label'\nTraceback"),
        _node(3, 1, "improve", "done", metric=0.97, visits=2, picked_by="uct"),
        _node(4, 2, "debug", "running", picked_by="debug"),
        _node(5, 3, "improve", "generating", picked_by="continuation"),
        _node(6, 1, "crossover", "done", metric=0.95, parent_ids=[1, 2]),
    ])
    apply_slots(state, {"mode": "no NVML", "slots": [
        {"id": "cpu0", "busy": True, "task_id": TASK, "gpu_uuid": None},
        {"id": "cpu1", "busy": False, "task_id": None, "gpu_uuid": None},
        {"id": "cpu2", "busy": True, "task_id": "t999999999999", "gpu_uuid": None}]})
    return state


def _row(text: str, node_id: int) -> str:
    """The tree's line for the node."""
    return next(line for line in text.splitlines()
                if re.search(rf"─ (⋯\d+ )?#{node_id} ", line))


def test_every_node_shows_its_operator_status_metric_and_visits() -> None:
    text = _text(_small_state())
    assert re.search(r"#1 draft\s+done\s+0\.90000 visits 4 \[draft\]", _row(text, 1))
    assert re.search(r"#3 improve\s+done\s+0\.97000 visits 2 \[uct\] ★ best", _row(text, 3))
    assert "buggy" in _row(text, 2) and "KeyError: 'label'" in _row(text, 2)
    assert "Traceback" not in text, "an error shows its first line only"
    assert "with #2" in _row(text, 6), "a crossover names its other parent"
    # The tree: #3 hangs below #1, #5 below #3, #4 below #2.
    lines = text.splitlines()
    assert lines.index(_row(text, 1)) < lines.index(_row(text, 3)) < lines.index(_row(text, 5))
    assert _row(text, 5).index("#5") > _row(text, 3).index("#3") > _row(text, 1).index("#1")


def test_the_header_shows_progress_time_best_slots_picks_and_usage() -> None:
    text = _text(_small_state())
    assert f"mlmaster watch {TASK} running · policy mcts · auc (higher is better)" in text
    assert "[  5/20  done] · 6 nodes in the tree · elapsed 1m05s of 1h00m" in text
    assert "best 0.97000 (node 3) · slots 1 of 3 in use by this task (cpu; 2 busy in all)" in text
    assert ("picks: #4 debug of #2 (debug) running, #5 improve of #3 (continuation) "
            "generating") in text
    assert "tokens 12,345 of 100,000 · cost $0.0123 · 7 model calls" in text


def test_events_update_the_view_at_once() -> None:
    state = _small_state()
    apply_event(state, {"type": "node.state", "task_id": TASK, "node_id": 4, "parent_id": 2,
                        "operator": "debug", "state": "done", "metric": 0.99,
                        "nodes_done": 6, "nodes_total": 7})
    apply_event(state, {"type": "task.best", "task_id": TASK, "node_id": 4, "metric": 0.99,
                        "submission_path": "/x"})
    apply_event(state, {"type": "node.state", "task_id": TASK, "node_id": 7, "parent_id": 4,
                        "operator": "improve", "state": "running", "nodes_done": 6,
                        "nodes_total": 7})
    text = _text(state)
    assert re.search(r"#4 debug\s+done\s+0\.99000 .*★ best", _row(text, 4))
    assert "best 0.99000 (node 4)" in text and "[  6/20  done]" in text
    assert re.search(r"#7 improve\s+running", _row(text, 7))
    # The latest events, as the plain mode prints them, close the view.
    assert text.rstrip().splitlines()[-1].startswith("[  6/20  done] node 7 ")


def test_a_snapshot_read_before_a_node_ended_does_not_revive_it() -> None:
    state = _small_state()
    apply_event(state, {"type": "node.state", "node_id": 4, "operator": "debug",
                        "state": "buggy", "error": "again"})
    apply_nodes(state, [_node(4, 2, "debug", "running")])
    assert state.nodes[4].status == "buggy"


@pytest.mark.parametrize(("fields", "now", "expected"), [
    # 5 of 20 steps in 100 s: 15 more at 20 s each, well inside the hour.
    ({}, STARTED + 100, (300.0, "steps")),
    # 5 of 20 steps in 1000 s would need 3000 s more; the limit leaves 200.
    ({"time_limit_s": 1200.0}, STARTED + 1000, (200.0, "time limit")),
    # Nothing done yet: only the time limit says anything.
    ({"nodes_done": 0}, STARTED + 100, (3500.0, "time limit")),
])
def test_the_eta_is_the_sooner_of_the_steps_left_at_the_pace_so_far_and_the_time_limit(
        fields: dict[str, Any], now: float, expected: tuple[float, str]) -> None:
    state = WatchState(TASK)
    apply_task(state, _task(**fields))
    eta = estimate(state, now)
    assert eta is not None and (eta.seconds, eta.bound) == pytest.approx(expected)


def test_no_eta_before_the_start_or_after_the_end() -> None:
    queued = WatchState(TASK)
    apply_task(queued, _task(state="queued", started_at=None))
    ended = WatchState(TASK)
    apply_task(ended, _task(state="finished", finished_at=STARTED + 50))
    assert estimate(queued, STARTED + 10) is None and estimate(ended, STARTED + 99) is None
    assert "elapsed not started" in _text(queued)
    assert "elapsed 50s of 1h00m" in _text(ended, now=STARTED + 999)


def _big_state(nodes: int, running: set[int], best: int, seed: int = 7) -> WatchState:
    rng = random.Random(seed)
    state = WatchState(TASK)
    apply_task(state, _task(steps=nodes + 50, nodes_done=nodes - len(running),
                            best={"node_id": best, "metric": 0.999}))
    apply_nodes(state, [
        _node(i, None if i <= 5 else rng.randint(max(1, i - 40), i - 1), "improve",
              "running" if i in running else rng.choice(["done", "done", "buggy"]))
        for i in range(1, nodes + 1)])
    return state


def _path(state: WatchState, node_id: int) -> list[int]:
    path = [node_id]
    while (parent := state.nodes[path[-1]].parent_id) is not None:
        path.append(parent)
    return path


def test_a_big_tree_fits_the_terminal_with_the_best_path_and_running_nodes_first() -> None:
    running = {555, 598, 600}
    state = _big_state(600, running, best=300)
    height = 45
    text = _text(state, height=height, width=140)
    lines = text.rstrip("\n").splitlines()
    assert len(lines) < height
    for node_id in [*_path(state, 300), *running]:
        assert _row(text, node_id), f"node {node_id} is shown"
    # What is left out is counted, so shown + hidden is every node.
    shown = {int(m) for m in re.findall(r"#(\d+) improve", text)}
    hidden = sum(int(n) for n in re.findall(r"… (\d+) more node", text))
    assert len(shown) + hidden == 600


def test_a_deep_chain_is_cut_with_the_hidden_nodes_counted_between() -> None:
    state = WatchState(TASK)
    apply_task(state, _task(best={"node_id": 80, "metric": 0.5}))
    apply_nodes(state, [_node(i, None if i == 1 else i - 1, "improve", "done")
                        for i in range(1, 81)])
    text = _text(state, height=20, width=100)
    assert len(text.rstrip("\n").splitlines()) < 20
    # The chain's top, then a node showing how many hidden nodes lie above it, down to the best.
    assert _row(text, 1) and _row(text, 80)
    skipped = re.search(r"⋯(\d+) #(\d+) improve", text)
    assert skipped is not None and int(skipped[1]) == int(skipped[2]) - 2
    assert all(len(line) <= 100 for line in text.splitlines())


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats()
                    | st.text(max_size=30),
                    lambda inner: st.lists(inner, max_size=3)
                    | st.dictionaries(st.text(max_size=5), inner, max_size=3), max_leaves=6)
KEYS = ["type", "task_id", "node_id", "parent_id", "parent_ids", "operator", "state", "status",
        "metric", "error", "nodes_done", "nodes_total", "id", "visits", "picked_by", "steps",
        "started_at", "finished_at", "time_limit_s", "best", "usage", "budget", "slots",
        "holdout", "selection", "holdout_metric", "rows", "fraction", "reason", "ensemble",
        "members", "kept"]
PAYLOAD = st.dictionaries(st.sampled_from(KEYS), JSON | st.integers(0, 6)
                          | st.sampled_from(["node.state", "task.best", "task.state", "running",
                                             "done", "buggy", "\x1b[2J\x07", "[bold]x"]),
                          max_size=12)


@settings(max_examples=60, deadline=None)
@given(events=st.lists(PAYLOAD | JSON, max_size=8), tasks=st.lists(PAYLOAD, max_size=2),
       nodes=st.lists(st.lists(PAYLOAD, max_size=6) | JSON, max_size=2),
       slots=st.lists(PAYLOAD | JSON, max_size=2),
       now=st.floats(allow_nan=False) | st.integers(-10**12, 10**12))
def test_odd_payloads_never_break_the_view(events: list[Any], tasks: list[Any],
                                           nodes: list[Any], slots: list[Any],
                                           now: float) -> None:
    state = WatchState(TASK)
    for task in tasks:
        apply_task(state, task)
    for listing in nodes:
        apply_nodes(state, listing)
    for snapshot in slots:
        apply_slots(state, snapshot)
    for event in events:
        apply_event(state, event)
        if isinstance(event, dict):
            progress_line(event, None, state.steps)
    text = _text(state, now=float(now), height=25, width=80)
    assert "\x1b" not in text and "\x07" not in text
    assert len(text.splitlines()) < 25


def test_the_live_view_needs_a_terminal_and_plain_turns_it_off(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FORCE_COLOR", raising=False)
    monkeypatch.setenv("TTY_COMPATIBLE", "0")
    assert live_console(plain=False) is None
    monkeypatch.setenv("TTY_COMPATIBLE", "1")
    monkeypatch.setenv("TERM", "xterm")
    assert live_console(plain=False) is not None
    assert live_console(plain=True) is None


async def test_following_live_ends_with_a_frame_of_every_node(client: Client,
                                                               breast_cancer: Path) -> None:
    task = await client.submit({"task_dir": str(breast_cancer), "steps": 2})
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=150, height=60, record=True)
    # A clock that never moves: the view changes on events alone, and nothing sleeps.
    final = await follow_live(client, task["id"], console, ManualClock(STARTED))
    assert final["state"] == "finished"
    text = console.export_text()
    assert re.search(rf"mlmaster watch {task['id']} (queued|running)", text), "drawn live"
    last = text[text.rindex(f"mlmaster watch {task['id']} finished"):]
    for node in await client.nodes(task["id"]):
        assert re.search(rf"#{node['id']} {node['operator']}\s+{node['status']}", last)
    assert "\x1b[" in out.getvalue(), "drawn for a terminal"


class _Screen(io.StringIO):
    """A terminal's output that can be waited on until it shows something."""

    def __init__(self) -> None:
        super().__init__()
        self.written = asyncio.Event()

    def write(self, text: str) -> int:
        self.written.set()
        return super().write(text)

    async def shows(self, pattern: str) -> None:
        async with asyncio.timeout(120):
            while not re.search(pattern, ANSI.sub("", self.getvalue())):
                self.written.clear()
                await self.written.wait()


async def test_stopping_the_watch_leaves_the_last_frame_on_the_screen(
        client: Client, breast_cancer: Path) -> None:
    task = await client.submit({"task_dir": str(breast_cancer), "steps": 20})
    screen = _Screen()
    console = Console(file=screen, force_terminal=True, width=150, height=60)
    watching = asyncio.create_task(follow_live(client, task["id"], console,
                                               ManualClock(STARTED)))
    await screen.shows("mlmaster watch")
    watching.cancel()  # what Ctrl-C does to `mlmaster watch`
    with pytest.raises(asyncio.CancelledError):
        await watching
    after_live = ANSI.sub("", screen.getvalue().rsplit("\x1b[2K", 1)[-1])
    assert re.search(rf"mlmaster watch {task['id']} (queued|running)", after_live)
    assert (await client.task(task["id"]))["state"] in ("queued", "running"), \
        "the task goes on"
    await client.cancel(task["id"])


async def test_the_injected_clock_paces_the_redraws_and_the_elapsed_time(
        client: Client, breast_cancer: Path) -> None:
    task = await client.submit({"task_dir": str(breast_cancer), "steps": 20})
    screen = _Screen()
    console = Console(file=screen, force_terminal=True, width=150, height=60)
    # On the daemon's scale (it stamps times with the real clock), from the task's creation.
    clock = ManualClock(task["created_at"])
    watching = asyncio.create_task(follow_live(client, task["id"], console, clock))
    try:
        await screen.shows(rf"mlmaster watch {task['id']} running")
        assert not re.search(r"elapsed 2m\d\ds", ANSI.sub("", screen.getvalue()))
        clock.advance(150)  # the ticker wakes, re-reads the task and redraws
        # 150 s less the time the task waited in the queue.
        await screen.shows(r"elapsed 2m[0-5]\ds of 1h00m · ETA ~\d+m\d\ds")
    finally:
        watching.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watching
        await client.cancel(task["id"])


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("MLMASTER_") and k not in ("FORCE_COLOR", "NO_COLOR")}
    return {**env, **extra}


def _mlmaster(sock: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([*MLMASTER, *args, "--socket", str(sock)], capture_output=True,
                            text=True, env=_env(**env), timeout=240, check=False)
    assert result.returncode == 0, result.stderr
    return result


TERMINAL_ENV = {"TTY_COMPATIBLE": "1", "TERM": "xterm", "COLUMNS": "160", "LINES": "50"}


def test_watch_draws_the_tree_on_a_terminal_and_plain_prints_lines(
        short_dir: Path, breast_cancer: Path) -> None:
    with running_daemon(short_dir, _env()) as sock:
        submitted = _mlmaster(sock, "submit", str(breast_cancer), "--steps", "2").stdout
        task_id = submitted.split()[-1]
        # Started at once, so it follows the search while it runs.
        live = _mlmaster(sock, "watch", task_id, **TERMINAL_ENV).stdout
        listed = json.loads(_mlmaster(sock, "show", task_id, "--json").stdout)["nodes"]
        plain = _mlmaster(sock, "watch", task_id, "--plain", **TERMINAL_ENV).stdout
    assert len(listed) == 2
    assert "\x1b[" in live, "drawn for a terminal"
    frame = ANSI.sub("", live)
    final = frame[frame.rindex(f"mlmaster watch {task_id} finished"):]
    assert "[  2/2   done]" in final
    for node in listed:
        assert re.search(rf"#{node['id']} {node['operator']}\s+{node['status']}", final)
    # It ends with the demo's result block.
    assert "search finished: 2 nodes in" in final and "best validation roc_auc" in final
    assert "mlmaster watch" not in plain and "\x1b[" not in plain
    assert "search finished: 2 nodes in" in plain
