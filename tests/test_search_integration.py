"""The search core as a user sees it through the API: policies, memory, lessons, top-k."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from conftest import daemon_config, wait_terminal

from mlmaster_daemon.api.client import Client
from mlmaster_daemon.daemon import Daemon
from mlmaster_daemon.tokenizer import TiktokenCounter

BUDGET = 60


@pytest.fixture
async def small_memory_daemon(short_dir: Path) -> AsyncIterator[Daemon]:
    config = daemon_config(short_dir / "state", short_dir / "api.sock",
                           extra={"memory.budget_tokens": BUDGET}, keep_top_k=3)
    daemon = Daemon(config)
    await daemon.start()
    try:
        yield daemon
    finally:
        await daemon.stop()


async def _run(client: Client, body: dict[str, Any]) -> dict[str, Any]:
    task = await client.submit(body)
    return await wait_terminal(client, task["id"])


async def test_memory_sections_stay_within_the_token_budget_and_lessons_carry_over(
    small_memory_daemon: Daemon, breast_cancer: Path
) -> None:
    counter = TiktokenCounter()
    async with Client(small_memory_daemon.socket_path) as client:
        first = await _run(client, {"task_dir": str(breast_cancer), "steps": 6})
        assert first["state"] == "finished"
        assert first["policy"] == "mcts"
        store = small_memory_daemon.store
        assert store is not None
        lessons = await store.list_lessons()
        assert lessons, "a finished task leaves lessons for later tasks"

        second = await _run(client, {"task_dir": str(breast_cancer), "steps": 3})
        memories = [(await client.node(second["id"], n["id"]))["memory"]
                    for n in await client.nodes(second["id"])]
    assert all(m is not None for m in memories)
    assert all(counter.count(m) <= BUDGET for m in memories)
    # The second task's first draft sees what the first task learnt (L3 prefetch).
    first_memory = memories[0]
    assert any(text[:30] in first_memory for text, _profile, _score in lessons), first_memory


async def test_top_k_submissions_are_kept_best_first(
    small_memory_daemon: Daemon, breast_cancer: Path
) -> None:
    async with Client(small_memory_daemon.socket_path) as client:
        task = await _run(client, {"task_dir": str(breast_cancer), "steps": 5})
        nodes = {n["id"]: n for n in await client.nodes(task["id"])}
    top = task["top"]
    assert 1 <= len(top) <= 3
    assert top[0]["node_id"] == task["best"]["node_id"]
    # Best first by the final-selection rule: the hidden holdout's score.
    scores = [nodes[t["node_id"]]["holdout_metric"] for t in top]
    assert scores == sorted(scores, reverse=True)
    assert all(Path(t["submission_path"]).exists() for t in top)


@pytest.mark.parametrize("policy", ["greedy", "evolutionary"])
async def test_each_policy_runs_a_task_to_a_best_submission(
    client: Client, breast_cancer: Path, policy: str
) -> None:
    task = await _run(client, {"task_dir": str(breast_cancer), "steps": 6, "policy": policy})
    assert task["policy"] == policy
    assert task["state"] == "finished" and task["best"] is not None
    nodes = await client.nodes(task["id"])
    for node in nodes:
        assert node["operator"] in ("draft", "improve", "debug", "crossover")
        expected = 0 if node["operator"] == "draft" else (
            2 if node["operator"] == "crossover" else 1)
        assert len(node["parent_ids"]) == expected
        if node["parent_ids"]:
            assert node["parent_id"] == node["parent_ids"][0]


async def test_the_saved_search_state_matches_the_nodes(
    client: Client, daemon: Daemon, breast_cancer: Path
) -> None:
    task = await _run(client, {"task_dir": str(breast_cancer), "steps": 4})
    assert daemon.store is not None
    state = await daemon.store.search_state(task["id"])
    assert state is not None
    tree = {raw[0]: raw for raw in state["policy"]["tree"]["nodes"]}
    for node in await client.nodes(task["id"]):
        if node["status"] in ("done", "buggy"):
            assert tree[node["id"]][6] == node["visits"]


async def test_the_api_shows_a_live_tree_visits_scores_and_why_each_node_was_picked(
    client: Client, daemon: Daemon, breast_cancer: Path
) -> None:
    task = await _run(client, {"task_dir": str(breast_cancer), "steps": 6, "policy": "mcts"})
    nodes = {n["id"]: n for n in await client.nodes(task["id"])}
    finished = {i for i, n in nodes.items() if n["status"] in ("done", "buggy")}
    assert len(finished) >= 4

    def finished_below(node_id: int) -> int:
        children = [i for i, n in nodes.items() if n["parent_id"] == node_id]
        return (node_id in finished) + sum(finished_below(c) for c in children)

    for node_id, node in nodes.items():
        # Every finished node backpropagated at once: visits count its finished subtree.
        assert node["visits"] == finished_below(node_id)
        assert node["picked_by"] in ("draft", "uct", "continuation", "debug", "blend")
        assert "uct" in node
    assert nodes[min(nodes)]["picked_by"] == "draft"
    # Drafts were compared by UCT once any pick descended past the root.
    if any(n["picked_by"] == "uct" for n in nodes.values()):
        assert any(n["uct"] is not None for n in nodes.values())
