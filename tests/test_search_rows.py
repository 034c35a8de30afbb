"""The search tree is saved incrementally (issue 18): a commit writes the head (policy without
its tree's nodes, open picks, memory) and only the tree rows that changed, so its cost does not
grow with the tree; what the rows add up to is always the whole tree."""

from __future__ import annotations

import gc
import json
import random
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlmaster_daemon.config import load_config
from mlmaster_daemon.models import NodeState, Operator, TaskState
from mlmaster_daemon.policy_config import make_policy, restore_policy
from mlmaster_daemon.scheduler.resume import collector_paused
from mlmaster_daemon.search.hcc import HierarchicalCache, L2Summary, StagnationDetector
from mlmaster_daemon.search.memory import MemoryEntry
from mlmaster_daemon.search.policy import Pick, Policy
from mlmaster_daemon.search.tree import ROWS_APART, Tree
from mlmaster_daemon.store import NodeRecord, Store, TaskRecord
from mlmaster_daemon.store.migrations import available
from mlmaster_daemon.store.records import SavedSearch
from mlmaster_daemon.tasks.spec import Metric, TaskSpec

SEARCH = load_config(None, environ={}).search


class Rows:
    """What the store keeps of a policy: the last head and a row per tree node."""

    def __init__(self) -> None:
        self.head: dict[str, Any] = {}
        self.rows: dict[int, list[Any]] = {}
        self.written: list[int] = []

    def save(self, policy: Policy) -> None:
        rows, dropped = policy.tree.take_unsaved()
        self.head = json.loads(json.dumps(policy.to_state(nodes=False)))
        self.rows.update({i: json.loads(json.dumps(row)) for i, row in rows.items()})
        for node_id in dropped:
            self.rows.pop(node_id, None)
        self.written.append(len(rows) + len(dropped))

    def whole(self) -> dict[str, Any]:
        state = json.loads(json.dumps(self.head))
        state["tree"]["nodes"] = [self.rows[i] for i in sorted(self.rows)]
        return state


def _by_id(state: dict[str, Any]) -> dict[str, Any]:
    """A whole state with its tree's nodes keyed by id (their order is not part of it)."""
    state = json.loads(json.dumps(state))
    tree = dict(state["tree"])
    tree["nodes"] = {raw[0]: raw for raw in tree.pop("nodes")}
    tree.pop("rows", None)
    return {**state, "tree": tree}


def _drive(policy: Policy, rng: random.Random, steps: int, parallel: int, rows: Rows,
           save_every: int = 1) -> None:
    """Run the policy as the scheduler does (up to `parallel` picks open, some aborted),
    saving through `rows` after every `save_every`-th change."""
    inflight: dict[int, Pick] = {}
    next_id, changes = 1, 0
    while next_id <= steps or inflight:
        if next_id <= steps and len(inflight) < parallel:
            pick = policy.select()
            if pick is not None:
                policy.add(next_id, pick)
                inflight[next_id] = pick
                next_id += 1
        if inflight and (len(inflight) >= parallel or next_id > steps or rng.random() < 0.5):
            node_id = rng.choice(sorted(inflight))
            pick = inflight.pop(node_id)
            roll = rng.random()
            if roll < 0.05:
                policy.abort(node_id, pick)
            else:
                policy.complete(node_id, pick, None if roll < 0.3 else rng.random())
        changes += 1
        if changes % save_every == 0:
            rows.save(policy)
    rows.save(policy)


@pytest.mark.parametrize("name", ["mcts", "greedy", "evolutionary"])
@given(seed=st.integers(0, 2**16), parallel=st.integers(1, 5), save_every=st.integers(1, 4))
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_the_saved_rows_always_add_up_to_the_whole_tree(name: str, seed: int, parallel: int,
                                                        save_every: int) -> None:
    policy = make_policy(name, SEARCH, False, 60, seed)
    rows = Rows()
    _drive(policy, random.Random(seed), 60, parallel, rows, save_every)
    assert rows.head["tree"]["rows"] == ROWS_APART and "nodes" not in rows.head["tree"]
    assert _by_id(rows.whole()) == _by_id(policy.to_state())
    # Restored from the rows, the policy is the same policy.
    restored = restore_policy(name, SEARCH, rows.whole())
    assert _by_id(restored.to_state()) == _by_id(policy.to_state())
    assert restored.tree.take_unsaved() == ({}, [])


def test_a_commit_writes_the_same_few_rows_and_head_however_big_the_tree() -> None:
    policy = make_policy("mcts", SEARCH, False, 20000, 7)
    rows = Rows()
    heads: list[int] = []
    rng = random.Random(7)
    inflight: dict[int, Pick] = {}
    for node_id in range(1, 4001):
        pick = policy.select()
        assert pick is not None
        policy.add(node_id, pick)
        inflight[node_id] = pick
        if len(inflight) >= 4:
            done = min(inflight)
            policy.complete(done, inflight.pop(done), None if rng.random() < 0.2 else rng.random())
        rows.save(policy)
        heads.append(len(json.dumps(rows.head)))
    # A commit rewrites the nodes a step touched (the new node, its parent, the path it
    # backpropagated along and the siblings UCT compared), never the tree.
    early, late = rows.written[100:300], rows.written[3800:4000]
    assert max(late) < 200 and sum(late) / len(late) < 3 * sum(early) / len(early)
    assert max(heads[3800:]) < 1.2 * max(heads[100:300]) + 200
    assert len(rows.rows) == len(policy.tree.nodes)


def test_l2_keeps_the_newest_phases_whole_and_rolls_up_the_rest() -> None:
    cache = HierarchicalCache(detector=StagnationDetector(window=1, min_gain=10.0), l2_keep=3)
    sizes = []
    for node_id in range(1, 401):
        metric = 0.5 + (0.3 if node_id == 17 else 0.0) + node_id * 1e-6
        cache.record(MemoryEntry(node_id, Operator.DRAFT, (), f"tried idea {node_id}", metric,
                                 False, None, created=node_id), None, False)
        sizes.append(len(json.dumps(cache.to_state())))
    assert cache.phase > 100
    assert len(cache.l2) == 4
    rolled, *kept = cache.l2
    assert rolled.first_phase == 0 and all(s.first_phase is None for s in kept)
    assert [s.phase for s in kept] == [cache.phase - 3, cache.phase - 2, cache.phase - 1]
    assert rolled.phase == kept[0].phase - 1
    # The roll-up keeps the best of what it holds and every node counted.
    assert rolled.best_node_id == 17
    assert sum(s.n_nodes for s in cache.l2) + len(cache.l1) == 400
    assert rolled.text.startswith("Rolled up: ") and "node 17" in rolled.text
    # The saved memory stays the same size however long the task runs.
    assert max(sizes[300:]) < 1.2 * max(sizes[20:60])
    context = cache.context(Operator.IMPROVE, (), Tree(), 5000, _Words())
    assert f"Phases 0-{rolled.phase}:" in context


def test_a_memory_saved_before_l2_was_bounded_is_rolled_up_when_loaded() -> None:
    cache = HierarchicalCache(l2_keep=2)
    state = cache.to_state()
    state["l2"] = [L2Summary(i, f"phase {i}", float(i), i, 3, 2, 1).to_state()
                   for i in range(10)]
    loaded = HierarchicalCache.from_state(json.loads(json.dumps(state)))
    assert len(loaded.l2) == 3 and loaded.l2[0].first_phase == 0
    assert loaded.l2[0].phase == 7 and loaded.l2[0].n_nodes == 24
    # Higher is better here: phase 7 holds the best of the rolled ones.
    assert loaded.l2[0].best_node_id == 7


class _Words:
    def count(self, text: str) -> int:
        return len(text.split())


# -- the store --------------------------------------------------------------------------------

def _task(tmp: Path, task_id: str = "t1") -> TaskRecord:
    spec = TaskSpec(name="rows", root=tmp, public_dir=tmp, private_dir=None, description="",
                    metric=Metric.RMSE, lower_is_better=True, target="y", id_column="id")
    return TaskRecord(id=task_id, name="rows", task_dir=str(tmp), spec=spec, policy="mcts",
                      steps=10, time_limit_s=60.0, node_timeout_s=10.0, state=TaskState.RUNNING,
                      created_at=time.time())


def _saved(policy: Policy) -> SavedSearch:
    tree = policy.tree
    rows, dropped = tree.take_unsaved()
    return SavedSearch({"policy": policy.to_state(nodes=False), "inflight": {}, "memory": {}},
                       rows, dropped, lambda: tree.keep_unsaved(rows, dropped))


async def test_the_store_writes_changed_rows_and_reads_the_whole_state_back(
        tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "m.db")
    try:
        await store.insert_task(_task(tmp_path))
        policy = make_policy("mcts", SEARCH, True, 50, 3)
        picks = {}
        for node_id in (1, 2, 3):
            pick = policy.select()
            assert pick is not None
            policy.add(node_id, pick)
            picks[node_id] = pick
            await store.insert_node(NodeRecord(task_id="t1", id=node_id, parent_id=None,
                                               operator=pick.operator, state=NodeState.PENDING,
                                               created_at=time.time()))
        await store.mark_ready("t1", 1, {"code": "print(1)"}, [], time.time(), _saved(policy))
        policy.complete(1, picks[1], 0.5)
        policy.abort(3, picks[3])
        saved = _saved(policy)
        assert 3 in saved.dropped and 1 in saved.rows and 2 not in saved.rows
        await store.finish_node("t1", 1, {"state": NodeState.DONE, "metric": 0.5}, [], saved)
        whole = await store.search_state("t1")
        assert whole is not None and whole["inflight"] == {}
        assert _by_id(whole["policy"]) == _by_id(policy.to_state())
        head = await store.search_head("t1")
        assert head is not None and "nodes" not in head["policy"]["tree"]
        assert [i for i, _ in await store.search_rows("t1", -1, 2)] == [0, 1]
        assert [i for i, _ in await store.search_rows("t1", 1, 10)] == [2]
    finally:
        await store.close()


async def test_rows_of_a_commit_that_failed_are_saved_by_the_next(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "m.db")
    try:
        await store.insert_task(_task(tmp_path))
        policy = make_policy("mcts", SEARCH, True, 50, 3)
        pick = policy.select()
        assert pick is not None
        policy.add(1, pick)
        # No task "gone": the rows' foreign key refuses the commit, which rolls back whole.
        with pytest.raises(sqlite3.IntegrityError):
            await store.finish_node("gone", 1, {}, [], _saved(policy))
        assert policy.tree.unsaved == {0, 1}
        await store.finish_node("t1", 1, {}, [], _saved(policy))
        whole = await store.search_state("t1")
        assert whole is not None
        assert _by_id(whole["policy"]) == _by_id(policy.to_state())
    finally:
        await store.close()


async def test_a_database_from_before_moves_its_tree_into_rows(tmp_path: Path) -> None:
    db = tmp_path / "m.db"
    store = await Store.open(db)
    await store.insert_task(_task(tmp_path))
    await store.close()
    policy = make_policy("mcts", SEARCH, True, 50, 3)
    rows = Rows()
    _drive(policy, random.Random(1), 30, 3, rows)
    old = {"policy": policy.to_state(), "inflight": {"31": [1]}, "memory": {"l2": []}}
    # The database as the version before this one left it: the whole state in one blob.
    with sqlite3.connect(db) as conn:
        conn.execute("DROP TABLE search_nodes")
        conn.execute("DROP INDEX nodes_by_state")
        conn.execute("UPDATE tasks SET search_state = ?", (json.dumps(old),))
        rows = next(m.version for m in available() if m.name == "0012_search_rows.sql")
        conn.execute(f"PRAGMA user_version = {rows - 1}")
    conn.close()
    store = await Store.open(db)
    try:
        head = await store.search_head("t1")
        assert head is not None and head["policy"]["tree"]["rows"] == ROWS_APART
        assert "nodes" not in head["policy"]["tree"] and head["inflight"] == {"31": [1]}
        whole = await store.search_state("t1")
        assert whole is not None
        assert _by_id(whole["policy"]) == _by_id(old["policy"])
        restored = restore_policy("mcts", SEARCH, whole["policy"])
        assert restored.tree.take_unsaved() == ({}, [])
    finally:
        await store.close()


def test_a_tree_saved_whole_counts_all_its_nodes_unsaved() -> None:
    policy = make_policy("greedy", SEARCH, False, 20, 0)
    _drive(policy, random.Random(0), 20, 2, Rows())
    restored = restore_policy("greedy", SEARCH, json.loads(json.dumps(policy.to_state())))
    rows, dropped = restored.tree.take_unsaved()
    assert sorted(rows) == sorted(policy.tree.nodes) and dropped == []


def test_a_restore_pauses_the_collector_and_then_freezes_what_it_built() -> None:
    assert gc.isenabled()
    gc.unfreeze()
    try:
        with collector_paused():
            assert not gc.isenabled()
            # Two tasks restoring at once: the first to end leaves it off for the other.
            with collector_paused():
                assert not gc.isenabled()
            assert not gc.isenabled()
            built = [[i] for i in range(5000)]
        assert gc.isenabled() and gc.get_freeze_count() >= len(built)
        gc.unfreeze()
        with pytest.raises(RuntimeError), collector_paused():
            raise RuntimeError("a restore that fails")
        assert gc.isenabled()
    finally:
        gc.unfreeze()
        gc.enable()


async def test_the_start_finds_nodes_by_state_without_reading_every_node(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "m.db")
    await store.close()
    with sqlite3.connect(tmp_path / "m.db") as conn:
        for query in ("SELECT task_id, id FROM nodes WHERE state IN ('running', 'evaluating')"
                      " AND pid IS NOT NULL",
                      "UPDATE nodes SET state = 'ready' WHERE state IN ('ready', 'running',"
                      " 'evaluating') AND code IS NOT NULL"):
            plan = " ".join(str(row[-1]) for row in conn.execute(f"EXPLAIN QUERY PLAN {query}"))
            assert "USING INDEX nodes_by_state" in plan, plan
    conn.close()
