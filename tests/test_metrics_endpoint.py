"""Prometheus metrics: a real daemon with `[metrics] port` set serves `GET /metrics` over TCP on
loopback, in the text format prometheus-client's own parser reads; off by default, loopback
only, and a port in use stops the start saying which key to change."""

from __future__ import annotations

import collections
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import pytest
from conftest import daemon_config, start_refused, wait_terminal
from openai_server import FakeOpenAI
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from mlmaster_daemon.api.client import Client
from mlmaster_daemon.bus import EventBus, NodeStateChanged, TaskStateChanged
from mlmaster_daemon.coders.offline.recipe import safe_baseline
from mlmaster_daemon.coders.offline.render import render
from mlmaster_daemon.config import Config, load_config
from mlmaster_daemon.daemon import Daemon
from mlmaster_daemon.errors import ConfigError
from mlmaster_daemon.execution.slots import SlotPool
from mlmaster_daemon.metrics import DaemonMetrics, endpoint_label
from mlmaster_daemon.store import Store
from mlmaster_daemon.tasks.competition import load_task

KEY = "sk-metrics-never-shows-5a4b3c"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


async def scrape(port: int) -> tuple[str, dict[str, Metric]]:
    """(the text, its families by name) of one real GET /metrics."""
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{port}/metrics") as response:
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/plain; version=")
            text = await response.text()
    return text, {f.name: f for f in text_string_to_metric_families(text)}


def total(families: dict[str, Metric], family: str, sample: str | None = None,
          **labels: str) -> float:
    """The sum of the family's samples named `sample` (default: the family's name) whose
    labels include `labels`."""
    name = sample or family
    return sum(s.value for s in families[family].samples
               if s.name == name and labels.items() <= s.labels.items())


async def run_task(config: Config, body: dict[str, Any]
                   ) -> tuple[dict[str, Any], list[dict[str, Any]], str, dict[str, Metric]]:
    """Run one task to its end on a daemon with metrics; (task, nodes, scraped text, families)
    scraped once the task has ended, while the daemon still runs."""
    daemon = Daemon(config)
    await daemon.start()
    try:
        async with Client(daemon.socket_path) as client:
            task = await wait_terminal(client, (await client.submit(body))["id"])
            nodes = await client.nodes(task["id"])
        text, families = await scrape(config.metrics.port)
    finally:
        await daemon.stop()
    return task, nodes, text, families


async def test_a_finished_task_shows_in_every_family(short_dir: Path,
                                                     breast_cancer: Path) -> None:
    port = free_port()
    config = daemon_config(short_dir / "state", short_dir / "api.sock",
                           extra={"metrics.port": port})
    task, nodes, text, families = await run_task(
        config, {"task_dir": str(breast_cancer), "steps": 3})
    assert task["state"] == "finished"
    assert total(families, "mlmaster_tasks", state="finished") == 1
    assert total(families, "mlmaster_tasks") == 1
    # Nodes by operator and status: what the API lists, one count per node.
    by_kind = collections.Counter((n["operator"], n["status"]) for n in nodes)
    assert len(nodes) == 3
    assert total(families, "mlmaster_nodes_finished", "mlmaster_nodes_finished_total") == 3
    for (operator, status), count in by_kind.items():
        assert total(families, "mlmaster_nodes_finished", "mlmaster_nodes_finished_total",
                     operator=operator, status=status) == count
    assert families["mlmaster_nodes_open"].samples == []
    # Every node ran its script (an offline coder's nodes all do): done or buggy.
    ran = sum(1 for n in nodes if n["status"] in ("done", "buggy"))
    assert ran == 3
    assert total(families, "mlmaster_node_run_seconds", "mlmaster_node_run_seconds_count") == ran
    assert total(families, "mlmaster_node_run_seconds", "mlmaster_node_run_seconds_sum") > 0
    assert total(families, "mlmaster_slot_wait_seconds",
                 "mlmaster_slot_wait_seconds_count") == ran
    assert total(families, "mlmaster_task_queue_wait_seconds",
                 "mlmaster_task_queue_wait_seconds_count") == 1
    assert total(families, "mlmaster_slots") == 2
    assert total(families, "mlmaster_slots_busy") == 0
    assert total(families, "mlmaster_slots_waiting") == 0
    assert total(families, "mlmaster_event_bus_dropped", "mlmaster_event_bus_dropped_total") == 0
    assert total(families, "process_resident_memory_bytes") > 0
    assert total(families, "process_open_fds") > 0
    # The offline coder calls no model: the families are there, empty.
    assert families["mlmaster_llm_calls"].samples == []
    # Kinds, never ids or contents: no task id, no path.
    assert task["id"] not in text
    assert str(breast_cancer) not in text


@pytest.fixture
async def server(breast_cancer: Path) -> AsyncIterator[FakeOpenAI]:
    fake = FakeOpenAI(code=render(safe_baseline(7), load_task(breast_cancer)))
    await fake.start()
    yield fake
    await fake.stop()


async def test_model_calls_are_counted_by_endpoint_and_role(
    short_dir: Path, server: FakeOpenAI, breast_cancer: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FAKE_KEY", KEY)
    # The start-up probe answers; the first generation is told to slow down once.
    server.script.extend(["ok", "rate_limit"])
    endpoint = {"base_url": server.base_url, "model": "fake-r1", "api_key_env": "FAKE_KEY",
                "max_retries": 2, "backoff_s": 0.01, "timeout_s": 20, "price_prompt": 0.5,
                "price_completion": 2.0}
    port = free_port()
    config = daemon_config(short_dir / "state", short_dir / "api.sock",
                           extra={"metrics.port": port, "llm.code": endpoint})
    task, _nodes, text, families = await run_task(
        config, {"task_dir": str(breast_cancer), "steps": 2})
    assert task["state"] == "finished"
    calls = task["usage"]["calls"]
    assert calls == 2
    labels = {"endpoint": server.base_url, "model": "fake-r1", "role": "code"}
    assert total(families, "mlmaster_llm_calls", "mlmaster_llm_calls_total",
                 outcome="ok", **labels) == calls
    assert total(families, "mlmaster_llm_calls", "mlmaster_llm_calls_total",
                 outcome="error") == 0
    assert total(families, "mlmaster_llm_retries", "mlmaster_llm_retries_total", **labels) == 1
    assert total(families, "mlmaster_llm_tokens", "mlmaster_llm_tokens_total", kind="prompt",
                 **labels) == task["usage"]["prompt_tokens"] == 200
    assert total(families, "mlmaster_llm_tokens", "mlmaster_llm_tokens_total",
                 kind="completion", **labels) == task["usage"]["completion_tokens"] == 100
    assert total(families, "mlmaster_llm_cost_usd", "mlmaster_llm_cost_usd_total",
                 **labels) == pytest.approx(task["usage"]["cost"])
    assert total(families, "mlmaster_llm_latency_seconds",
                 "mlmaster_llm_latency_seconds_count", **labels) == calls
    assert KEY not in text


async def test_live_figures_follow_the_parts_at_each_scrape(tmp_path: Path) -> None:
    """Slots leased, nodes under way and bus drops, read from real parts when rendered."""
    store = await Store.open(tmp_path / "mlmaster.db")
    try:
        slots, bus, metrics = SlotPool([], 3, 1, cpus=[0]), EventBus(queue_size=2), DaemonMetrics()
        metrics.watch(store, slots, bus)
        lease = await slots.acquire("t1")
        async with bus.subscribe() as _never_read:
            for node_id, state in [(1, "generating"), (2, "running"), (3, "running")]:
                bus.publish(NodeStateChanged(task_id="t1", node_id=node_id, parent_id=None,
                                             operator="draft", state=state))
            families = {f.name: f for f in text_string_to_metric_families(
                (await metrics.render()).decode())}
            assert total(families, "mlmaster_slots_busy") == 1
            assert total(families, "mlmaster_nodes_open", state="running") == 2
            assert total(families, "mlmaster_nodes_open", state="generating") == 1
            # Three events into a queue of two that nobody reads: one dropped.
            assert total(families, "mlmaster_event_bus_dropped",
                         "mlmaster_event_bus_dropped_total") == 1
            assert total(families, "mlmaster_tasks") == 0
            slots.release(lease)
            bus.publish(NodeStateChanged(task_id="t1", node_id=2, parent_id=None,
                                         operator="draft", state="buggy"))
            bus.publish(TaskStateChanged(task_id="t1", state="cancelled"))
            families = {f.name: f for f in text_string_to_metric_families(
                (await metrics.render()).decode())}
        assert total(families, "mlmaster_slots_busy") == 0
        assert families["mlmaster_nodes_open"].samples == []
        assert total(families, "mlmaster_nodes_finished", "mlmaster_nodes_finished_total",
                     operator="draft", status="buggy") == 1
        assert total(families, "mlmaster_event_bus_dropped",
                     "mlmaster_event_bus_dropped_total") == 3
    finally:
        await store.close()


def test_endpoint_labels_keep_no_credentials() -> None:
    assert (endpoint_label("https://user:sk-in-url@api.example.com:8443/v1?key=sk-q#frag")
            == "https://api.example.com:8443/v1")
    assert endpoint_label("http://[::1]:9000/v1") == "http://[::1]:9000/v1"


def _listening_ports() -> set[int]:
    return {c.laddr.port for c in psutil.Process().net_connections(kind="inet")
            if c.status == psutil.CONN_LISTEN}


async def test_no_port_is_opened_by_default(config: Config) -> None:
    assert config.metrics.port == 0
    before = _listening_ports()
    daemon = Daemon(config)
    await daemon.start()
    try:
        assert daemon.metrics is None
        assert _listening_ports() == before
    finally:
        await daemon.stop()


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.10", "::", "localhost"])
def test_a_host_other_than_loopback_is_refused(host: str) -> None:
    with pytest.raises(ConfigError) as refused:
        load_config(None, environ={"MLMASTER_METRICS__HOST": host})
    message = refused.value.message
    assert "metrics.host" in message and "MLMASTER_METRICS__HOST" in message
    assert "loopback address: use 127.0.0.1 or ::1" in message


def test_ipv6_loopback_is_accepted() -> None:
    config = load_config(None, environ={}, overrides={"metrics.host": "::1", "metrics.port": 9})
    assert (config.metrics.host, config.metrics.port) == ("::1", 9)


async def test_a_port_in_use_stops_the_start_naming_the_key(short_dir: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = daemon_config(short_dir / "state", short_dir / "api.sock",
                               extra={"metrics.port": port})
        error = await start_refused(config, ConfigError)
    assert f"127.0.0.1:{port}" in error.message
    assert "metrics.port" in error.message
