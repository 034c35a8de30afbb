"""The daemon's Prometheus metrics, served in text format at `GET /metrics` on an opt-in loopback
TCP port (`[metrics] port`).

One `CollectorRegistry` per daemon (never the global one), holding:
- what the parts report as it happens: node runs (execution), slot and task-queue waits, model
  calls (each endpoint), node outcomes (a tap on the event bus);
- what is read when scraped: tasks by state (the store, read before rendering), slot
  occupancy, event-bus drops, and the process's RSS and open fds (`ProcessCollector`).
Labels carry ids of kinds (states, operators, roles, endpoint URLs without credentials), never
task contents; every label value also passes `redact`.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol
from urllib.parse import urlsplit, urlunsplit

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from mlmaster_daemon.api import loopback
from mlmaster_daemon.bus import Event, EventBus, NodeStateChanged, TaskStateChanged
from mlmaster_daemon.logs import get_logger
from mlmaster_daemon.loopback_config import MetricsConfig
from mlmaster_daemon.models import CallRecord, NodeState, TaskState
from mlmaster_daemon.redact import redact

if TYPE_CHECKING:
    from mlmaster_daemon.execution.runner import RunResult
    from mlmaster_daemon.store import Store


class Occupancy(Protocol):
    """Where node scripts run, counted: this machine's slot pool, or a Ray cluster's share."""

    @property
    def capacity(self) -> int: ...

    @property
    def busy(self) -> int: ...

    @property
    def waiting(self) -> int: ...

log = get_logger("mlmaster.metrics")
RUN_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, float("inf"))
LATENCY_BUCKETS = (0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, float("inf"))
WAIT_BUCKETS = (0.01, 0.1, 1, 5, 15, 60, 300, 900, 3600, 14400, float("inf"))
TERMINAL_NODE_STATES = frozenset(s.value for s in NodeState if s.terminal)
TERMINAL_TASK_STATES = frozenset(s.value for s in TaskState if s.terminal)


@dataclass(frozen=True)
class LlmCall:
    """One call to a model as its endpoint saw it: `record` when it was answered, None when it
    failed (after its retries, or refused at once)."""

    role: str
    model: str
    endpoint: str
    attempts: int
    latency_s: float
    record: CallRecord | None


def endpoint_label(base_url: str) -> str:
    """The endpoint's URL without user, password, query or fragment (a key can sit there)."""
    parts = urlsplit(base_url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port else host
    return redact(urlunsplit((parts.scheme, netloc, parts.path, "", "")))


def run_outcome(result: RunResult) -> str:
    """How a node's script ended, as a label: ok, error, timeout or stopped."""
    if result.timed_out:
        return "timeout"
    if result.exit_code is None:
        return "stopped"
    return "ok" if result.exit_code == 0 else "error"


class DaemonMetrics:
    """The daemon's metrics: hooks the parts call where the facts arise, and `render` for a
    scrape. `watch` names the store and slots read at scrape time once they are open."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        r = self.registry
        self.node_run_seconds = Histogram(
            "mlmaster_node_run_seconds", "Seconds a node's script ran, by how it ended.",
            ["outcome"], buckets=RUN_BUCKETS, registry=r)
        self.slot_wait_seconds = Histogram(
            "mlmaster_slot_wait_seconds", "Seconds a node waited for an execution slot.",
            buckets=WAIT_BUCKETS, registry=r)
        self.task_queue_wait_seconds = Histogram(
            "mlmaster_task_queue_wait_seconds",
            "Seconds a task waited in the queue between submit and its start.",
            buckets=WAIT_BUCKETS, registry=r)
        self.nodes_finished = Counter(
            "mlmaster_nodes_finished", "Nodes that reached an outcome, by operator and status.",
            ["operator", "status"], registry=r)
        llm = ["endpoint", "model", "role"]
        self.llm_calls = Counter("mlmaster_llm_calls", "Model calls, by outcome (ok, error).",
                                 [*llm, "outcome"], registry=r)
        self.llm_tokens = Counter(
            "mlmaster_llm_tokens", "Tokens of answered model calls, by kind (prompt, "
            "completion; reasoning is part of completion).", [*llm, "kind"], registry=r)
        self.llm_cost = Counter("mlmaster_llm_cost_usd",
                                "Cost of answered model calls in USD, at the configured prices.",
                                llm, registry=r)
        self.llm_latency_seconds = Histogram(
            "mlmaster_llm_latency_seconds", "Seconds from a model call's start to its end, "
            "retries and waits included.", llm, buckets=LATENCY_BUCKETS, registry=r)
        self.llm_retries = Counter("mlmaster_llm_retries",
                                   "Model call attempts that failed and were tried again.",
                                   llm, registry=r)
        self._live = _Live(self)
        r.register(self._live)
        self.store: Store | None = None
        self.slots: Occupancy | None = None
        self.bus: EventBus | None = None
        # (task id, node id) -> (operator, state) of the nodes not yet at an outcome.
        self.open_nodes: dict[tuple[str, int], tuple[str, str]] = {}
        self.tasks_by_state: dict[str, int] | None = None

    def watch(self, store: Store, slots: Occupancy, bus: EventBus) -> None:
        """Read tasks from `store`, occupancy from `slots` and drops from `bus` when scraped;
        follow node outcomes on `bus`."""
        self.store, self.slots, self.bus = store, slots, bus
        bus.tap(self.observe)

    def observe(self, event: Event) -> None:
        """A bus tap: count node outcomes; keep the nodes under way by operator and state."""
        if isinstance(event, NodeStateChanged):
            key = (event.task_id, event.node_id)
            if event.state in TERMINAL_NODE_STATES:
                self.open_nodes.pop(key, None)
                self.nodes_finished.labels(event.operator, event.state).inc()
            else:
                self.open_nodes[key] = (event.operator, event.state)
        elif isinstance(event, TaskStateChanged) and event.state in TERMINAL_TASK_STATES:
            for key in [k for k in self.open_nodes if k[0] == event.task_id]:
                del self.open_nodes[key]

    def node_ran(self, result: RunResult) -> None:
        self.node_run_seconds.labels(run_outcome(result)).observe(result.duration_s)

    def slot_waited(self, seconds: float) -> None:
        self.slot_wait_seconds.observe(max(seconds, 0.0))

    def task_waited(self, seconds: float) -> None:
        self.task_queue_wait_seconds.observe(max(seconds, 0.0))

    def llm_called(self, call: LlmCall) -> None:
        labels = (endpoint_label(call.endpoint), redact(call.model), call.role)
        record = call.record
        self.llm_calls.labels(*labels, "ok" if record is not None else "error").inc()
        self.llm_retries.labels(*labels).inc(max(call.attempts - 1, 0))
        self.llm_latency_seconds.labels(*labels).observe(max(call.latency_s, 0.0))
        if record is not None:
            self.llm_tokens.labels(*labels, "prompt").inc(record.prompt_tokens)
            self.llm_tokens.labels(*labels, "completion").inc(record.completion_tokens)
            self.llm_cost.labels(*labels).inc(record.cost)

    async def render(self) -> bytes:
        """The text exposition of every metric; the store is read first (asynchronously)."""
        if self.store is not None:
            try:
                tasks = await self.store.list_tasks()
            except Exception as exc:
                # The rest is still worth serving; the tasks gauge is left out this time.
                log.warning("metrics: the tasks could not be read", error=str(exc))
                self.tasks_by_state = None
            else:
                counts = collections.Counter(t.state.value for t in tasks)
                self.tasks_by_state = {s.value: counts[s.value] for s in TaskState}
        return generate_latest(self.registry)


class _Live(Collector):
    """What is read at scrape time rather than counted as it happens."""

    def __init__(self, metrics: DaemonMetrics) -> None:
        self.metrics = metrics

    def describe(self) -> Iterable[Metric]:
        # Nothing up front: the families depend on what the daemon has opened.
        return []

    def collect(self) -> Iterable[Metric]:
        m = self.metrics
        if m.tasks_by_state is not None:
            tasks = GaugeMetricFamily("mlmaster_tasks", "Tasks by state.", labels=["state"])
            for state, count in m.tasks_by_state.items():
                tasks.add_metric([state], count)
            yield tasks
        nodes = GaugeMetricFamily("mlmaster_nodes_open",
                                  "Nodes under way (not at an outcome), by operator and state.",
                                  labels=["operator", "state"])
        for (operator, state), count in sorted(collections.Counter(
                m.open_nodes.values()).items()):
            nodes.add_metric([operator, state], count)
        yield nodes
        if m.slots is not None:
            yield GaugeMetricFamily("mlmaster_slots", "Execution slots in all.",
                                    value=m.slots.capacity)
            yield GaugeMetricFamily("mlmaster_slots_busy", "Execution slots leased to a node.",
                                    value=m.slots.busy)
            yield GaugeMetricFamily("mlmaster_slots_waiting",
                                    "Nodes waiting for an execution slot.",
                                    value=m.slots.waiting)
        if m.bus is not None:
            yield CounterMetricFamily(
                "mlmaster_event_bus_dropped",
                "Events dropped from a full subscriber queue (a reader too slow).",
                value=m.bus.dropped)


async def start_metrics_server(metrics: DaemonMetrics, config: MetricsConfig,
                               shutdown_timeout: float) -> web.AppRunner:
    """Serve `GET /metrics` on `config.host:config.port`; the caller cleans the returned runner
    up. Raises `ConfigError` naming `metrics.port` when the port cannot be bound."""

    async def scrape(_request: web.Request) -> web.Response:
        return web.Response(body=await metrics.render(),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/metrics", scrape)
    return await loopback.serve(app, config.host, config.port, shutdown_timeout,
                                what="the metrics endpoint",
                                key="metrics.port (MLMASTER_METRICS__PORT)")


def address(config: MetricsConfig) -> str:
    """The URL Prometheus scrapes."""
    return loopback.url(config.host, config.port, "metrics")
