"""GET /v1/tasks/{id}/nodes a page at a time (`limit`, `after`, `fields`, `next_after`), and
the task listing read in batches, through the real API app on a real Unix socket over a real
SQLite store."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from mlmaster_daemon.api.app import ApiParts, build_app
from mlmaster_daemon.api.client import ApiError, Client
from mlmaster_daemon.api.node_pages import DEFAULT_PAGE, MAX_PAGE, NODE_FIELDS
from mlmaster_daemon.api.read_cache import ReadCache
from mlmaster_daemon.bus import EventBus
from mlmaster_daemon.coders.offline.coder import OfflineCoder
from mlmaster_daemon.config import Settings, load_config
from mlmaster_daemon.execution.executor import LocalExecutor
from mlmaster_daemon.execution.slots import SlotPool
from mlmaster_daemon.models import CallRecord, NodeState, Operator, TaskState
from mlmaster_daemon.scheduler import TaskQueue
from mlmaster_daemon.scheduler.parts import SearchParts
from mlmaster_daemon.store import Store, TaskRecord
from mlmaster_daemon.store.records import NodeRecord
from mlmaster_daemon.tasks.spec import Metric, TaskSpec
from mlmaster_daemon.tokenizer import TiktokenCounter

BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_api.py"
SPEC = TaskSpec(name="bc", root=Path("/tasks/bc"), public_dir=Path("/tasks/bc/public"),
                private_dir=None, description="Predict the diagnosis.", metric=Metric.ROC_AUC,
                lower_is_better=False, target="target", id_column="id")
TREE = "t0000000000a"


class Api:
    """A client of the real app, and the store behind it."""

    def __init__(self, client: Client, store: Store) -> None:
        self.client = client
        self.store = store

    async def add_task(self, task_id: str, nodes: int, calls: int = 0) -> None:
        await self.store.insert_task(TaskRecord(
            id=task_id, name="bc", task_dir="/tasks/bc", spec=SPEC, policy="mcts", steps=10,
            time_limit_s=60.0, node_timeout_s=60.0, state=TaskState.FINISHED,
            created_at=time.time()))
        for node_id in range(1, nodes + 1):
            await self.store.insert_node(NodeRecord(
                task_id=task_id, id=node_id, parent_id=None if node_id == 1 else node_id - 1,
                operator=Operator.DRAFT, created_at=time.time(), metric=node_id / 100,
                state=NodeState.DONE if node_id % 2 else NodeState.RUNNING,
                code="print(1)", summary=f"node {node_id}"))
        await self.store.record_calls(task_id, None, [
            CallRecord("code", "m", "http://localhost:1", 100, 50, 0, 1.0, 0.5, 1)
            for _ in range(calls)], time.time())


@pytest.fixture
async def api(short_dir: Path) -> AsyncIterator[Api]:
    config = load_config(None, environ={}, overrides={
        "daemon.state_dir": str(short_dir / "state"), "daemon.socket": str(short_dir / "s")})
    settings, state_dir = Settings(config), config.state_dir()
    store = await Store.open(state_dir / "mlmaster.db")
    bus = EventBus()
    queue = TaskQueue(SearchParts(
        store, bus, OfflineCoder(), LocalExecutor(settings, SlotPool([], 2, 1), state_dir),
        settings, state_dir, TiktokenCounter()))
    runner = web.AppRunner(build_app(ApiParts(store, bus, queue, settings, state_dir, 0.0)))
    await runner.setup()
    await web.UnixSite(runner, str(short_dir / "api.sock")).start()
    try:
        async with Client(short_dir / "api.sock") as client:
            yield Api(client, store)
    finally:
        await runner.cleanup()
        await store.close()


async def _pages(api: Api, limit: int, fields: list[str] | None = None,
                 ) -> list[dict[str, Any]]:
    pages, after = [], None
    while True:
        page = await api.client.nodes_page(TREE, after, limit, fields)
        pages.append(page)
        if page["next_after"] is None:
            return pages
        after = page["next_after"]


async def test_pages_cover_every_node_once_in_id_order_and_end_with_next_after_null(
    api: Api,
) -> None:
    await api.add_task(TREE, 25)
    pages = await _pages(api, 10)
    assert [len(p["nodes"]) for p in pages] == [10, 10, 5]
    assert [p["next_after"] for p in pages] == [10, 20, None]
    assert [n["id"] for p in pages for n in p["nodes"]] == list(range(1, 26))
    assert {p["task_id"] for p in pages} == {TREE}


async def test_a_tree_that_fills_its_last_page_exactly_ends_on_that_page(api: Api) -> None:
    await api.add_task(TREE, 20)
    pages = await _pages(api, 10)
    assert [(len(p["nodes"]), p["next_after"]) for p in pages] == [(10, 10), (10, None)]


async def test_the_default_page_is_bounded_and_says_where_to_go_on(api: Api) -> None:
    await api.add_task(TREE, DEFAULT_PAGE + 1)
    first = await api.client.request("GET", f"/v1/tasks/{TREE}/nodes")
    assert len(first["nodes"]) == DEFAULT_PAGE
    assert first["next_after"] == DEFAULT_PAGE
    rest = await api.client.request("GET",
                                    f"/v1/tasks/{TREE}/nodes?after={first['next_after']}")
    assert [n["id"] for n in rest["nodes"]] == [DEFAULT_PAGE + 1]
    assert rest["next_after"] is None


async def test_a_task_without_nodes_has_one_empty_last_page(api: Api) -> None:
    await api.add_task(TREE, 0)
    page = await api.client.nodes_page(TREE)
    assert page == {"task_id": TREE, "nodes": [], "next_after": None}


async def test_fields_keep_only_the_named_keys_of_each_node(api: Api) -> None:
    await api.add_task(TREE, 3)
    page = await api.client.nodes_page(TREE, fields=["metric", "id", "status"])
    assert page["nodes"] == [{"metric": 0.01, "id": 1, "status": "done"},
                             {"metric": 0.02, "id": 2, "status": "running"},
                             {"metric": 0.03, "id": 3, "status": "done"}]
    whole = await api.client.nodes_page(TREE)
    assert list(whole["nodes"][0]) == list(NODE_FIELDS)


@pytest.mark.parametrize(("query", "fragment"), [
    ("limit=0", f"from 1 to {MAX_PAGE}"),
    (f"limit={MAX_PAGE + 1}", f"from 1 to {MAX_PAGE}"),
    ("limit=-5", f"from 1 to {MAX_PAGE}"),
    ("limit=ten", f"from 1 to {MAX_PAGE}"),
    ("limit=%D9%A1", f"from 1 to {MAX_PAGE}"),
    ("limit=" + "9" * 40, f"from 1 to {MAX_PAGE}"),
    ("after=-1", "after must be a node id"),
    ("after=1.5", "after must be a node id"),
    ("after=1234567890", "after must be a node id"),
    ("fields=id,plan", "unknown field 'plan'"),
    ("fields=", "no field named"),
    ("fields=id,,status", "unknown field ''"),
])
async def test_bad_page_parameters_are_a_400_saying_what_is_allowed(
    api: Api, query: str, fragment: str,
) -> None:
    await api.add_task(TREE, 2)
    with pytest.raises(ApiError) as err:
        await api.client.request("GET", f"/v1/tasks/{TREE}/nodes?{query}")
    assert (err.value.status, err.value.code) == (400, "invalid_request")
    assert fragment in err.value.message
    if query.startswith("fields"):
        assert ", ".join(NODE_FIELDS) in err.value.message


@pytest.mark.parametrize("limit", ["0", "501", "9" * 5000, "%D9%A1"])
async def test_a_bad_task_listing_limit_is_a_400(api: Api, limit: str) -> None:
    with pytest.raises(ApiError) as err:
        await api.client.request("GET", f"/v1/tasks?limit={limit}")
    assert (err.value.status, err.value.code) == (400, "invalid_request")
    assert "from 1 to 500" in err.value.message


async def test_paging_an_unknown_task_is_a_404(api: Api) -> None:
    with pytest.raises(ApiError) as err:
        await api.client.nodes_page("t00000000000", after=3, limit=2)
    assert (err.value.status, err.value.code) == (404, "task_not_found")


async def test_the_client_follows_the_pages_to_every_node(api: Api) -> None:
    await api.add_task(TREE, 23)
    whole = (await api.client.nodes_page(TREE, limit=MAX_PAGE))["nodes"]
    assert len(whole) == 23
    assert await api.client.nodes(TREE, page_size=4) == whole
    assert await api.client.nodes(TREE) == whole
    trimmed = await api.client.nodes(TREE, fields=["id", "status"], page_size=5)
    assert trimmed == [{"id": n["id"], "status": n["status"]} for n in whole]
    # Without the id in each node, next_after still says where the next page starts.
    assert await api.client.nodes(TREE, fields=["metric"], page_size=5) == [
        {"metric": n["metric"]} for n in whole]


async def test_a_listed_node_is_what_its_record_shows(api: Api) -> None:
    await api.add_task(TREE, 3)
    await api.store.insert_node(NodeRecord(
        task_id=TREE, id=4, parent_id=2, parent_ids=(2, 3), operator=Operator.CROSSOVER,
        state=NodeState.BUGGY, created_at=1.0, code="x", error="KeyError", visits=3,
        value=0.25, uct=1.5, pick_reason="uct", holdout_metric=0.5))
    records = await api.store.list_nodes(TREE)
    assert (await api.client.nodes_page(TREE))["nodes"] == [n.public() for n in records]


async def test_the_listing_shows_each_tasks_own_counts_and_usage(api: Api) -> None:
    await api.add_task("t00000000001", 5, calls=2)
    await api.add_task("t00000000002", 0)
    await api.add_task("t00000000003", 2, calls=1)
    listed = {t["id"]: t for t in await api.client.tasks()}
    assert {i: (t["nodes_total"], t["nodes_done"], t["usage"]["calls"])
            for i, t in listed.items()} == {"t00000000001": (5, 3, 2),
                                            "t00000000002": (0, 0, 0),
                                            "t00000000003": (2, 1, 1)}
    assert listed["t00000000001"]["usage"]["total_tokens"] == 300
    assert listed["t00000000001"]["usage"]["cost"] == 1.0
    for task_id, view in listed.items():
        assert await api.client.task(task_id) == view


async def test_a_listing_shows_a_commit_at_once_whatever_it_answered_before(api: Api) -> None:
    await api.add_task(TREE, 2)
    assert [len(await api.client.tasks()), len(await api.client.nodes(TREE))] == [1, 2]
    await api.add_task("t00000000004", 0)
    await api.store.insert_node(NodeRecord(task_id=TREE, id=3, parent_id=1, state=NodeState.DONE,
                                           operator=Operator.IMPROVE, created_at=1.0))
    await api.store.update_task(TREE, state=TaskState.CANCELLED)
    tasks = {t["id"]: t for t in await api.client.tasks()}
    assert set(tasks) == {TREE, "t00000000004"}
    assert (tasks[TREE]["state"], tasks[TREE]["nodes_total"]) == ("cancelled", 3)
    assert [n["id"] for n in await api.client.nodes(TREE)] == [1, 2, 3]


async def test_a_kept_answer_is_reused_until_it_is_too_old() -> None:
    cache, built = ReadCache(max_age_s=1.0), []

    async def build() -> bytes:
        built.append(1)
        return f"answer {len(built)}".encode()

    assert await cache.body("k", 10.0, build) == b"answer 1"
    assert await cache.body("k", 11.0, build) == b"answer 1"
    assert await cache.body("other", 11.0, build) == b"answer 2"
    assert await cache.body("k", 11.5, build) == b"answer 3"


async def test_requests_that_miss_together_share_one_build_and_a_failed_one_is_not_kept(
) -> None:
    cache, built = ReadCache(), []

    async def build() -> bytes:
        built.append(1)
        await asyncio.sleep(0.01)
        return b"answer"

    answers = await asyncio.gather(*(cache.body("k", 0.0, build) for _ in range(5)))
    assert answers == [b"answer"] * 5 and len(built) == 1

    async def fail() -> bytes:
        raise ValueError("no")

    with pytest.raises(ValueError, match="no"):
        await cache.body("bad", 0.0, fail)
    assert await cache.body("bad", 0.0, build) == b"answer"


async def test_the_cache_keeps_only_its_most_recently_used_answers() -> None:
    cache = ReadCache(entries=2)

    def answer(text: str) -> Any:
        async def build() -> bytes:
            return text.encode()
        return build

    await cache.body("a", 0.0, answer("a1"))
    await cache.body("b", 0.0, answer("b1"))
    await cache.body("a", 0.0, answer("a2"))
    await cache.body("c", 0.0, answer("c1"))
    assert await cache.body("a", 0.0, answer("a3")) == b"a1"
    assert await cache.body("b", 0.0, answer("b2")) == b"b2"


async def test_the_document_describes_the_page_parameters_and_next_after(api: Api) -> None:
    spec = await api.client.request("GET", "/v1/openapi.json")
    listing = spec["paths"]["/v1/tasks/{task_id}/nodes"]["get"]
    params = {p["name"]: p for p in listing["parameters"]}
    assert set(params) == {"task_id", "limit", "after", "fields"}
    assert params["limit"]["schema"]["maximum"] == MAX_PAGE
    assert params["fields"]["schema"]["items"]["enum"] == list(NODE_FIELDS)
    node_list = spec["components"]["schemas"]["NodeList"]
    assert {"task_id", "nodes", "next_after"} <= set(node_list["required"])


@pytest.mark.slow
def test_a_quick_bench_run_prints_every_endpoint_at_every_level(tmp_path: Path) -> None:
    out = tmp_path / "figures.json"
    done = subprocess.run([sys.executable, str(BENCH), "--quick", "--json", str(out)],
                          check=False, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    figures = json.loads(out.read_text())
    assert set(figures) == {"idle", "busy"}
    assert set(figures["idle"]) == set(figures["busy"]) == {"1", "10", "50"}
    for row in [*figures["idle"].values(), *figures["busy"].values()]:
        assert set(row) == {"tasks", "nodes", "nodes_fields", "health", "bare"}
        for got in row.values():
            assert got["requests"] > 0 and got["errors"] == 0
    assert "p99 ms" in done.stdout and "bare" in done.stdout
