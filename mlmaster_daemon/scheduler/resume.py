"""A task's start: continue from the search state committed with its last outcome, and put
`best/` right (a crash between an outcome and the copy of its files can leave it behind)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
from collections.abc import Iterator
from typing import Any

from mlmaster_daemon.artefacts import best_dir, best_node_id, has_submission
from mlmaster_daemon.execution.workspace import Workspace
from mlmaster_daemon.logs import get_logger
from mlmaster_daemon.models import NodeState
from mlmaster_daemon.policy_config import restore_policy
from mlmaster_daemon.scheduler.search_state import SearchState
from mlmaster_daemon.scheduler.storage import SearchStore
from mlmaster_daemon.search.policy import Pick
from mlmaster_daemon.search.tree import TreeNode
from mlmaster_daemon.store.records import NodeRecord

log = get_logger("mlmaster.scheduler")
# Saved tree rows a restore reads and parses at a time.
ROWS_PER_SLICE = 2000


class _Pauses:
    """How many restores have the collector paused now."""

    count = 0


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """The cyclic garbage collector off while a task's saved tree is read back, then what was
    built frozen (`gc.freeze`: left out of later collections).

    Reading a 10k-node tree makes hundreds of thousands of objects; each full collection they
    trigger walks every object the daemon holds, 50-90 ms with the event loop stopped (the
    API's worst round trip during a restore). Frozen, the long-lived tree is not walked again
    by each later full collection. Restores of several tasks may overlap: the collector comes
    back when the last ends."""
    _Pauses.count += 1
    gc.disable()
    try:
        yield
    finally:
        _Pauses.count -= 1
        if _Pauses.count == 0:
            gc.freeze()
            gc.enable()


async def restore(state: SearchState, nodes: list[NodeRecord]) -> list[tuple[NodeRecord, Pick]]:
    """The policy, open picks and memory as saved; returns the nodes whose code was paid for
    before the stop (with their code, also when `nodes` were read without), to run now
    without asking again. Other picks that were open then are undone (their nodes were
    marked interrupted at start-up)."""
    parts, task = state.parts, state.task
    saved = await _saved_search(parts.store, task.id)
    resume: list[tuple[NodeRecord, Pick]] = []
    if saved is not None:
        # Off the event loop: rebuilding a big tree's bookkeeping must not stall the API.
        state.policy = await asyncio.to_thread(
            restore_policy, task.policy, parts.settings.config.search, saved["policy"])
        by_id = {n.id: n for n in nodes}
        for key, raw in saved["inflight"].items():
            pick, node = Pick.from_state(raw), by_id.get(int(key))
            if node is not None and node.state is NodeState.READY and node.code is None:
                # Read without its code: this node's is needed.
                node = await parts.store.get_node(task.id, node.id)
            if node is not None and node.state is NodeState.READY and node.code:
                state.open_picks[node.id] = pick
                resume.append((node, pick))
            else:
                state.policy.abort(int(key), pick)
    await state.memory.restore(saved["memory"] if saved is not None else None, nodes)
    known = {node.id for node, _pick in resume}
    for node in nodes:
        if node.state is NodeState.READY and node.id not in known:
            # Ready but unknown to the saved search state: cannot be placed in the tree.
            await parts.store.update_node(task.id, node.id, state=NodeState.FAILED,
                                          error="interrupted before it could run",
                                          finished_at=state.now())
    return resume


async def _saved_search(store: SearchStore, task_id: str) -> dict[str, Any] | None:
    """The task's saved search state with its tree's nodes built, read and parsed
    `ROWS_PER_SLICE` rows at a time off the event loop (a 100k-node tree is never one blob
    in memory, and the API keeps answering meanwhile)."""
    saved = await store.search_head(task_id)
    if saved is None:
        return None
    tree = saved["policy"]["tree"]
    if "nodes" not in tree:
        nodes: list[TreeNode] = []
        after = -1
        while rows := await store.search_rows(task_id, after, ROWS_PER_SLICE):
            nodes.extend(await asyncio.to_thread(_tree_nodes, rows))
            after = rows[-1][0]
        tree["nodes"] = nodes
    return saved


def _tree_nodes(rows: list[tuple[int, str]]) -> list[TreeNode]:
    return [TreeNode.from_state(json.loads(raw)) for _id, raw in rows]


def ranked(state: SearchState, nodes: list[NodeRecord]) -> list[NodeRecord]:
    """The working nodes, best first by the final-selection rule (of equal values, the better
    validation metric first, then the earlier node)."""
    sign = 1.0 if state.task.spec.lower_is_better else -1.0
    done = [n for n in nodes if n.state is NodeState.DONE and n.metric is not None]
    return sorted(done, key=lambda n: (sign * _key(state, n), sign * (n.metric or 0.0), n.id))


def _key(state: SearchState, node: NodeRecord) -> float:
    assert node.metric is not None
    return state.selection_key(node.metric, node.holdout_metric)


async def repair_best(state: SearchState, nodes: list[NodeRecord]) -> None:
    """best/ is derived from the finished nodes: each start makes it hold the best node whose
    submission is still there."""
    task = state.task
    # Off the event loop: a big tree has thousands of working nodes to sort.
    done = await asyncio.to_thread(ranked, state, nodes)
    if not done:
        return
    # A workspace removed by hand cannot be used: the best node whose submission is there.
    found = await asyncio.to_thread(
        lambda: next((n for n in done if has_submission(state.node_dir(n.id))), None))
    if found is None:
        log.warning("no finished node has its submission any more; best/ left as it is",
                    task_id=task.id)
        return
    # The nodes may have been read without their code.
    best = found if found.code is not None else await state.parts.store.get_node(task.id,
                                                                                found.id)
    assert best.metric is not None and best.code is not None
    state.best_key = _key(state, best)
    recorded = await asyncio.to_thread(best_node_id, best_dir(state.parts.state_dir, task.id))
    holder = next((n for n in done if n.id == recorded), None)
    # Another node with the same value may hold it (it finished first): that stands.
    if (holder is not None and _key(state, holder) == state.best_key
            and task.best_node_id == holder.id):
        return
    log.warning("best submission out of date after a restart; rebuilt", task_id=task.id,
                node_id=best.id, was=recorded)
    state.best_metric = best.metric
    await state.publish.best(best.id, Workspace(state.node_dir(best.id)), best.metric, best.code)
