"""GET /v1/tasks/{id}/report.html and `mlmaster report-html`: one self-contained HTML page that
shows a task's search (its tree, best score, operators, failure causes, tokens and cost, slots).

The page needs no network: its script and style (report_assets/) are inlined, a
Content-Security-Policy lets only that script run and forbids every fetch, and the data lies
in a `<script type="application/json">` block in which no `<`, `>` or `&` is left, so no text a
model or a job wrote (code, output, memory) can close the block or add markup. Every node's
texts are cut to a cap that shrinks as the tree grows, and the page says where it cut.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import html
import json
import re
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from mlmaster_daemon import untrusted
from mlmaster_daemon.artefacts import node_dir
from mlmaster_daemon.execution.workspace import Workspace
from mlmaster_daemon.models import NodeState
from mlmaster_daemon.redact import redact, redact_value
from mlmaster_daemon.store import NodeRecord, Store

# What all the nodes' texts may take together; each node's caps shrink to fit it, down to
# the floors (a very large tree makes a larger page rather than an unreadable one).
TEXT_BUDGET_CHARS = 8 * 1024 * 1024
_TEXT_FIELDS = ("plan", "summary", "error", "analysis")


@dataclass(frozen=True)
class Caps:
    """How many characters of each text a node shows in the page."""

    code: int = 30_000
    output: int = 8_000
    memory: int = 8_000
    text: int = 4_000

    @property
    def per_node(self) -> int:
        return self.code + self.output + self.memory + self.text * len(_TEXT_FIELDS)


DEFAULT_CAPS = Caps()
FLOOR_CAPS = Caps(code=2_000, output=500, memory=500, text=500)


def caps_for(nodes: int, budget: int = TEXT_BUDGET_CHARS) -> Caps:
    """The default caps, scaled down so `nodes` nodes fit `budget`, never below FLOOR_CAPS."""
    if nodes * DEFAULT_CAPS.per_node <= budget:
        return DEFAULT_CAPS
    share = budget / (nodes * DEFAULT_CAPS.per_node)
    return Caps(*(max(floor, int(full * share)) for full, floor in
                  zip(asdict(DEFAULT_CAPS).values(), asdict(FLOOR_CAPS).values(), strict=True)))


def clip(text: str | None, cap: int) -> tuple[str | None, int]:
    """(text cut to `cap` characters keeping its head and tail, its full length when it was
    cut else 0)."""
    if text is None or len(text) <= cap:
        return text, 0
    half = (cap - 60) // 2
    return (f"{text[:half]}\n... [{len(text) - 2 * half} characters cut from this report] ...\n"
            f"{text[-half:]}", len(text))


_EXCEPTION = re.compile(r"\b([A-Z][A-Za-z0-9_]*(?:Error|Exception|Interrupt|Exit))\b")
# (words in a node's error, the cause shown), checked in order.
_CAUSES = (
    (("time limit", "timed out", "killed after"), "timeout"),
    (("out of memory", "memory limit"), "out of memory"),
    (("interrupted", "stopped abnormally", "daemon stopped"), "interrupted"),
    (("without a python code block", "no code"), "no code in answer"),
    (("submission invalid", "submission.csv"), "invalid submission"),
    (("metrics.json", "validation_metric"), "no valid metric"),
    (("workspace larger than", "file size limit", "process limit"), "resource limit"),
)


def failure_cause(error: str) -> str:
    """A short name for why a node failed, for counting: a kind of limit, or the exception
    the script raised."""
    lowered = error.lower()
    for words, cause in _CAUSES:
        if any(word in lowered for word in words):
            return cause
    found = _EXCEPTION.findall(error)
    if found:
        return str(found[-1])
    if "exited" in lowered or "signal" in lowered:
        return "script crashed"
    return "other"


def _node_time(node: NodeRecord) -> float:
    """When a node's model calls were paid for, as near as the store knows (they are
    committed with its code, before it runs)."""
    return node.started_at or node.finished_at or node.created_at


def _better(a: float, b: float, lower_is_better: bool) -> bool:
    return a < b if lower_is_better else a > b


def _best_over_time(nodes: list[NodeRecord], start: float,
                    lower_is_better: bool) -> list[dict[str, Any]]:
    """Each node that beat the best so far, as it finished."""
    best: list[dict[str, Any]] = []
    current: float | None = None
    finished = sorted((n.finished_at, n.id, n.metric) for n in nodes
                      if n.finished_at is not None and n.state is NodeState.DONE)
    for at, node_id, metric in finished:
        if metric is not None and (current is None or _better(metric, current, lower_is_better)):
            current = metric
            best.append({"t": at - start, "metric": metric, "node": node_id})
    return best


def _spend_over_time(nodes: list[NodeRecord], usage: dict[int, dict[str, Any]],
                     task_usage: dict[str, Any], start: float,
                     end: float) -> list[dict[str, Any]]:
    """Tokens and cost so far after each node's model calls."""
    spend: list[dict[str, Any]] = []
    tokens, cost = 0, 0.0
    for node in sorted(nodes, key=lambda n: (_node_time(n), n.id)):
        spent = usage.get(node.id, {})
        if spent.get("calls"):
            tokens += int(spent["total_tokens"])
            cost += float(spent["cost"])
            spend.append({"t": _node_time(node) - start, "tokens": tokens,
                          "cost": round(cost, 6), "node": node.id})
    # Calls tied to no node (phase summaries, lessons) count at the end, so the line ends at
    # the task's total.
    if int(task_usage.get("total_tokens", 0)) > tokens:
        spend.append({"t": end - start, "tokens": int(task_usage["total_tokens"]),
                      "cost": round(float(task_usage["cost"]), 6), "node": None})
    return spend


def series(task: dict[str, Any], nodes: list[NodeRecord],
           usage: dict[int, dict[str, Any]], now: float) -> dict[str, Any]:
    """The charts' data, in seconds since the task started: the best metric as each node
    finished, cumulative tokens and cost, each slot's runs, operator and failure counts."""
    start = task.get("started_at") or task.get("created_at") or now
    # A finished task's charts end where it ended, not when the page was written.
    end = task.get("finished_at") or now
    runs = [{"slot": node.slot, "node": node.id, "status": node.state.value,
             "start": node.started_at - start, "end": (node.finished_at or now) - start}
            for node in nodes if node.started_at is not None and node.slot]
    operators: dict[str, int] = {}
    causes: dict[str, int] = {}
    for node in nodes:
        operators[node.operator.value] = operators.get(node.operator.value, 0) + 1
        if node.state in (NodeState.BUGGY, NodeState.FAILED) and node.error:
            cause = failure_cause(node.error)
            causes[cause] = causes.get(cause, 0) + 1
    return {"best": _best_over_time(nodes, start, bool(task.get("lower_is_better"))),
            "tokens": _spend_over_time(nodes, usage, task.get("usage") or {}, start, end),
            "runs": runs, "operators": operators, "causes": causes, "now": end - start}


def _node_texts(state_dir: Path, task_id: str, node_ids: list[int],
                caps: Caps) -> dict[int, tuple[str, str]]:
    """(output tail, memory section) of each node, read bounded and never through a link."""
    texts: dict[int, tuple[str, str]] = {}
    for node_id in node_ids:
        ws = Workspace(node_dir(state_dir, task_id, node_id))
        memory = untrusted.text_excerpt(ws.root, "memory.md", caps.memory)
        texts[node_id] = (ws.output_tail(caps.output), memory)
    return texts


def node_entry(node: NodeRecord, output: str, memory: str, spent: dict[str, Any],
               caps: Caps) -> dict[str, Any]:
    """What the page knows of one node; `cut` maps each text that was cut to its length."""
    cut: dict[str, int] = {}
    entry: dict[str, Any] = {
        **node.public(),
        "slot": node.slot, "exit_code": node.exit_code, "created_at": node.created_at,
        "started_at": node.started_at, "finished_at": node.finished_at,
        "cause": failure_cause(node.error) if node.error and node.state in (
            NodeState.BUGGY, NodeState.FAILED) else None,
        "tokens": int(spent.get("total_tokens", 0)), "cost": float(spent.get("cost", 0.0)),
        "calls": int(spent.get("calls", 0)),
    }
    for key, value, cap in (("code", node.code, caps.code), ("output", output, caps.output),
                            ("memory", memory, caps.memory),
                            *((key, getattr(node, key), caps.text) for key in _TEXT_FIELDS)):
        entry[key], full = clip(value, cap)
        if full:
            cut[key] = full
    entry["cut"] = cut
    return entry


async def report_data(store: Store, state_dir: Path, task: dict[str, Any],
                      now: float) -> dict[str, Any]:
    """Everything the page shows of `task` (the API's view of it), secrets redacted."""
    nodes = await store.list_nodes(task["id"])
    caps = caps_for(len(nodes))
    usage = {node.id: await store.usage(task["id"], node.id) for node in nodes}
    texts = await asyncio.to_thread(_node_texts, state_dir, task["id"],
                                    [node.id for node in nodes], caps)
    data = {
        "generated_at": now,
        "task": {key: task.get(key) for key in (
            "id", "name", "state", "error", "policy", "metric", "lower_is_better", "steps",
            "time_limit_s", "nodes_total", "nodes_done", "best", "usage", "budget",
            "holdout", "selection", "created_at", "started_at", "finished_at")},
        "caps": asdict(caps),
        "nodes": [node_entry(node, *texts[node.id], usage[node.id], caps) for node in nodes],
        "series": series(task, nodes, usage, now),
    }
    redacted: dict[str, Any] = redact_value(data)
    return redacted


def embed_json(value: Any) -> str:
    """`value` as JSON safe inside <script type="application/json">: `<`, `>` and `&` are
    written as \\u escapes (JSON.parse reads them back), so no `</script>` or `<!--` is left."""
    text = json.dumps(value, ensure_ascii=False, allow_nan=False)
    for char, escape in (("&", "\\u0026"), ("<", "\\u003c"), (">", "\\u003e"),
                         ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(char, escape)
    return text


def _asset(name: str) -> str:
    return resources.files("mlmaster_daemon").joinpath("report_assets", name).read_text()


def render(data: dict[str, Any]) -> str:
    """The page: style, data and script inline; a policy that lets only that script run and
    the page reach nothing outside itself."""
    script = _asset("report.js")
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    policy = (f"default-src 'none'; script-src 'sha256-{digest}'; style-src 'unsafe-inline'; "
              "img-src data:; base-uri 'none'; form-action 'none'")
    title = html.escape(redact(f"mlmaster {data['task']['id']}: {data['task']['name']}"))
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f"<meta http-equiv=\"Content-Security-Policy\" content=\"{policy}\">\n"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
        f"<title>{title}</title>\n<style>\n{_asset('report.css')}</style>\n</head>\n<body>\n"
        "<noscript>This report draws its tree and charts with JavaScript; enable it to see "
        "them.</noscript>\n"
        f"<script type=\"application/json\" id=\"report-data\">{embed_json(data)}</script>\n"
        f"<script>{script}</script>\n</body>\n</html>\n")


async def report_page(store: Store, state_dir: Path, task: dict[str, Any], now: float) -> str:
    """The HTML report of `task` (the API's view of it) as the store and its folder hold it."""
    return render(await report_data(store, state_dir, task, now))
