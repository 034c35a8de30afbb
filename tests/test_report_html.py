"""The HTML report of a task (GET /v1/tasks/{id}/report.html, `mlmaster report-html`): built from
a real daemon's run against a real OpenAI-compatible server whose code, plan and output are
hostile, read back as HTML and JSON, and opened in a real headless Chromium."""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import redirect_stdout
from dataclasses import asdict, dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from browser import MISSING, browser_page, chromium
from conftest import daemon_config, wait_terminal
from openai_server import FakeOpenAI
from PIL import Image

from mlmaster_daemon.api.client import ApiError, Client
from mlmaster_daemon.daemon import Daemon
from mlmaster_daemon.errors import MlmasterError
from mlmaster_daemon.models import NodeState, Operator
from mlmaster_daemon.report_html import (
    Caps,
    caps_for,
    embed_json,
    failure_cause,
    node_entry,
    render,
    series,
)
from mlmaster_daemon.report_html_cli import add_parser, default_output, write_page
from mlmaster_daemon.store import NodeRecord

KEY = "sk-live-report-must-not-show-4b3c2a"
BREAKOUT = "</script><script>alert(1)</script><!--"
HOSTILE_NAME = "<img src=x onerror=alert(5)>"
# A quick script (the sample submission, a metric that grows with the node id) whose comment,
# output and error try to break out of the page; node 1 (its folder is its cwd) raises, so the
# tree holds a buggy node and its debug child.
HOSTILE_CODE = f"""# {BREAKOUT} key={KEY}
import json, os, shutil
node = int(os.path.basename(os.getcwd()))
print({BREAKOUT!r} + ' <b>bold</b> & done')
if node == 1:
    raise KeyError({BREAKOUT!r})
os.makedirs("submission", exist_ok=True)
shutil.copy("input/sample_submission.csv", "submission/submission.csv")
with open("metrics.json", "w") as handle:
    json.dump({{"validation_metric": 0.5 + node / 100}}, handle)
"""


@dataclass(frozen=True)
class Report:
    task: dict[str, Any]
    nodes: list[dict[str, Any]]
    page: str
    cli_page: str
    cli_printed: str
    default_page: Path
    refusals: dict[str, tuple[int, str]]
    content_type: str
    path: Path


def _args(socket: Path, task_id: str, output: str | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="mlmaster")
    sub = parser.add_subparsers(dest="command")

    def with_socket(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--socket")
        p.add_argument("--config")
        return p

    add_parser(sub, with_socket)
    return parser.parse_args(["report-html", task_id, "--socket", str(socket),
                              *(["-o", output] if output else [])])


async def _run_task(folder: Path, breast_cancer: Path) -> Report:
    server = await FakeOpenAI(code=HOSTILE_CODE, plan=f"Plan {BREAKOUT} with key {KEY}").start()
    endpoint = {"base_url": server.base_url, "model": "fake-r1", "api_key_env": "FAKE_KEY",
                "max_retries": 1, "backoff_s": 0.01, "timeout_s": 20, "price_prompt": 0.5,
                "price_completion": 2.0}
    config = daemon_config(folder / "state", folder / "api.sock",
                           extra={"llm.code": endpoint, "search.num_drafts": 1})
    daemon = Daemon(config)
    await daemon.start()
    try:
        async with Client(daemon.socket_path) as client:
            submitted = await client.submit({"task_dir": str(breast_cancer), "steps": 4,
                                             "name": HOSTILE_NAME})
            task = await wait_terminal(client, submitted["id"])
            nodes = [await client.node(task["id"], n["id"])
                     for n in await client.nodes(task["id"])]
            page = await client.report_html(task["id"])
            async with aiohttp.ClientSession(
                    connector=aiohttp.UnixConnector(path=str(daemon.socket_path))) as raw, \
                    raw.get(f"http://localhost/v1/tasks/{task['id']}/report.html") as resp:
                content_type = resp.headers["Content-Type"]
            refusals = {}
            for label, task_id in (("unknown", "t00000000000"), ("malformed", "nope")):
                try:
                    await client.report_html(task_id)
                except ApiError as exc:
                    refusals[label] = (exc.status, exc.code)
        out = folder / "out" / "report.html"
        out.parent.mkdir()
        printed = io.StringIO()
        with redirect_stdout(printed):
            await asyncio.to_thread(_run_cli, _args(daemon.socket_path, task["id"], str(out)))
        with pytest.MonkeyPatch.context() as mp:
            mp.chdir(folder / "out")
            await asyncio.to_thread(_run_cli, _args(daemon.socket_path, task["id"], None))
    finally:
        await daemon.stop()
        await server.stop()
    path = folder / "page.html"
    path.write_text(page)
    return Report(task, nodes, page, out.read_text(), printed.getvalue(),
                  folder / "out" / default_output(task["id"]), refusals, content_type, path)


def _run_cli(args: argparse.Namespace) -> None:
    assert args.fn(args) == 0


@pytest.fixture(scope="module")
def report(breast_cancer: Path) -> Iterator[Report]:
    """One real run for the module: its tests only read what it left."""
    folder = Path(tempfile.mkdtemp(prefix="mlm-"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FAKE_KEY", KEY)
        yield asyncio.run(_run_task(folder, breast_cancer))
    shutil.rmtree(folder, ignore_errors=True)


class _Markup(HTMLParser):
    """The page's tags, and the raw text of each script."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.scripts: list[tuple[dict[str, str | None], str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        if tag == "script":
            self.scripts.append((dict(attrs), ""))

    def handle_data(self, data: str) -> None:
        if self.tags and self.tags[-1][0] == "script" and self.scripts:
            attrs, text = self.scripts[-1]
            self.scripts[-1] = (attrs, text + data)


def _parsed(page: str) -> _Markup:
    markup = _Markup()
    markup.feed(page)
    markup.close()
    return markup


def _data(page: str) -> dict[str, Any]:
    blocks = [text for attrs, text in _parsed(page).scripts
              if attrs.get("type") == "application/json"]
    assert len(blocks) == 1
    data: dict[str, Any] = json.loads(blocks[0])
    return data


# --- the page as served --------------------------------------------------------------------


def test_the_run_left_a_buggy_node_and_a_best_one(report: Report) -> None:
    statuses = {n["id"]: n["status"] for n in report.nodes}
    assert statuses[1] == "buggy" and "done" in statuses.values()
    assert report.task["best"] is not None


def test_the_data_block_holds_every_node_with_its_texts(report: Report) -> None:
    data = _data(report.page)
    assert [n["id"] for n in data["nodes"]] == [n["id"] for n in report.nodes]
    by_id = {n["id"]: n for n in data["nodes"]}
    for node in report.nodes:
        shown = by_id[node["id"]]
        assert shown["code"] == node["code"]
        assert shown["plan"] == node["plan"]
        assert shown["output"] == node["output_tail"]
        assert shown["memory"] == node["memory"]
        assert shown["status"] == node["status"] and shown["metric"] == node["metric"]
        assert shown["tokens"] == node["usage"]["total_tokens"]
    # The hostile texts came through whole, as data.
    assert BREAKOUT in by_id[1]["code"] and BREAKOUT in by_id[1]["output"]
    assert data["task"]["name"] == HOSTILE_NAME
    assert by_id[1]["cause"] == "KeyError"
    assert data["series"]["causes"] == {"KeyError": 1}
    assert sum(data["series"]["operators"].values()) == len(report.nodes)
    # The chart follows the validation metric; the task's best is chosen on the holdout.
    assert data["series"]["best"][-1]["metric"] == max(
        n["metric"] for n in report.nodes if n["status"] == "done")
    assert data["series"]["tokens"][-1]["tokens"] == report.task["usage"]["total_tokens"]


def test_the_data_block_holds_the_holdout_the_selection_and_each_nodes_holdout_score(
        report: Report) -> None:
    data = _data(report.page)
    assert data["task"]["holdout"] == report.task["holdout"]
    assert data["task"]["holdout"]["state"] == "on"
    assert data["task"]["selection"] == report.task["selection"]
    assert [n["holdout_metric"] for n in data["nodes"]] == \
        [n["holdout_metric"] for n in report.nodes]
    assert any(n["holdout_metric"] is not None for n in data["nodes"])


def test_hostile_text_adds_no_markup(report: Report) -> None:
    markup = _parsed(report.page)
    # Only the data block and the page's own script; no element the texts tried to add.
    assert [attrs.get("type") for attrs, _ in markup.scripts] == ["application/json", None]
    assert not any(tag in ("img", "b") for tag, _ in markup.tags)
    assert "alert(" not in markup.scripts[1][1]
    for needle in ("</script><script>", "<!--", "<img", "<b>"):
        assert needle not in report.page
    assert "&lt;img src=x onerror=alert(5)&gt;" in report.page  # the title, escaped


def test_the_page_needs_nothing_from_outside(report: Report) -> None:
    markup = _parsed(report.page)
    assert not any(attrs.get("src") or attrs.get("href") for _, attrs in markup.tags)
    policy = next(attrs["content"] for tag, attrs in markup.tags
                  if tag == "meta" and attrs.get("http-equiv") == "Content-Security-Policy")
    assert policy is not None and "default-src 'none'" in policy


def test_no_secret_reaches_the_page(report: Report) -> None:
    assert KEY not in report.page and KEY not in report.cli_page
    assert "[redacted]" in _data(report.page)["nodes"][0]["code"]


def test_the_page_is_served_as_utf8_html(report: Report) -> None:
    assert report.content_type == "text/html; charset=utf-8"
    assert report.page.startswith("<!DOCTYPE html>")


def test_an_unknown_task_is_404_and_a_bad_id_400(report: Report) -> None:
    assert report.refusals == {"unknown": (404, "task_not_found"),
                               "malformed": (400, "invalid_request")}


def test_report_html_writes_the_page_and_prints_its_path(report: Report) -> None:
    out = report.cli_printed.strip()
    assert out.endswith("report.html") and Path(out).read_text() == report.cli_page
    assert len(_data(report.cli_page)["nodes"]) == len(report.nodes)
    assert report.default_page.name == f"{report.task['id']}-report.html"
    assert len(_data(report.default_page.read_text())["nodes"]) == len(report.nodes)


def test_report_html_names_a_folder_it_cannot_write_to(tmp_path: Path) -> None:
    with pytest.raises(MlmasterError, match=r"folder .*missing does not exist"):
        write_page("<html></html>", tmp_path / "missing" / "r.html")
    with pytest.raises(MlmasterError, match="is a folder; give -o a file name"):
        write_page("<html></html>", tmp_path)
    write_page("<p>x</p>", tmp_path / "r.html")
    assert (tmp_path / "r.html").read_text() == "<p>x</p>"
    assert [p.name for p in tmp_path.iterdir()] == ["r.html"]


def test_report_html_refuses_a_malformed_task_id(tmp_path: Path) -> None:
    args = _args(tmp_path / "none.sock", "../etc", None)
    with pytest.raises(MlmasterError, match="task id must be"):
        args.fn(args)


# --- the pieces, alone ----------------------------------------------------------------------


@pytest.mark.parametrize("text", [BREAKOUT, "<!-- x -->", "a</SCRIPT >b", "&lt;", "\u2028",
                                  "]]>", "<![CDATA[", "</scr" + "ipt"])
def test_embedded_json_has_no_markup_and_reads_back(text: str) -> None:
    embedded = embed_json({"code": text, "nested": [text]})
    assert "<" not in embedded and ">" not in embedded and "&" not in embedded
    assert json.loads(embedded) == {"code": text, "nested": [text]}


@pytest.mark.parametrize(("error", "cause"), [
    ("script exited with code 1: KeyError: 'target'", "KeyError"),
    ("killed after its 60 s time limit", "timeout"),
    ("memory limit of 512 MB reached; last error: MemoryError", "out of memory"),
    ("metrics.json missing: the script must write {...}", "no valid metric"),
    ("submission invalid: 3 rows, expected 143", "invalid submission"),
    ("the model answered 3 times without a python code block", "no code in answer"),
    ("interrupted: the daemon stopped while this node was being generated", "interrupted"),
    ("script killed by signal 9", "script crashed"),
    ("something new", "other"),
])
def test_failures_are_counted_by_cause(error: str, cause: str) -> None:
    assert failure_cause(error) == cause


def _node(nid: int, state: NodeState, metric: float | None, finished: float,
          **extra: Any) -> NodeRecord:
    return NodeRecord(task_id="t0123456789a", id=nid, parent_id=None, operator=Operator.DRAFT,
                      state=state, created_at=100.0, metric=metric, started_at=finished - 5,
                      finished_at=finished, **extra)


@pytest.mark.parametrize(("lower", "expected"), [(False, [0.5, 0.8]), (True, [0.5, 0.3])])
def test_best_over_time_keeps_only_improvements(lower: bool, expected: list[float]) -> None:
    nodes = [_node(1, NodeState.DONE, 0.5, 110), _node(2, NodeState.DONE, 0.3, 120),
             _node(3, NodeState.BUGGY, None, 125, error="boom ValueError"),
             _node(4, NodeState.DONE, 0.8, 130)]
    drawn = series({"started_at": 100.0, "lower_is_better": lower}, nodes, {}, now=140.0)
    assert [p["metric"] for p in drawn["best"]] == expected
    assert drawn["causes"] == {"ValueError": 1} and drawn["now"] == 40.0


def test_slot_runs_and_tokens_follow_the_nodes() -> None:
    nodes = [_node(1, NodeState.DONE, 0.5, 110, slot="cpu0"),
             _node(2, NodeState.RUNNING, None, 130, slot="gpu0")]
    nodes[1] = NodeRecord(**{**nodes[1].__dict__, "finished_at": None})
    usage = {1: {"calls": 1, "total_tokens": 150, "cost": 0.5},
             2: {"calls": 2, "total_tokens": 300, "cost": 1.0}}
    task = {"started_at": 100.0, "usage": {"total_tokens": 500, "cost": 1.75}}
    drawn = series(task, nodes, usage, now=140.0)
    assert drawn["runs"] == [
        {"slot": "cpu0", "node": 1, "status": "done", "start": 5.0, "end": 10.0},
        {"slot": "gpu0", "node": 2, "status": "running", "start": 25.0, "end": 40.0}]
    # The calls tied to no node (a phase summary) come last, so the line ends at the total.
    assert [(p["tokens"], p["cost"], p["node"]) for p in drawn["tokens"]] == [
        (150, 0.5, 1), (450, 1.5, 2), (500, 1.75, None)]


def test_long_texts_are_cut_and_say_so() -> None:
    node = _node(1, NodeState.DONE, 0.5, 110, code="x = 1\n" * 10_000, plan="short plan")
    entry = node_entry(node, output="o" * 50, memory="", spent={}, caps=Caps(code=1000))
    assert len(entry["code"]) <= 1000 and "characters cut from this report" in entry["code"]
    assert entry["cut"] == {"code": 60_000}
    assert entry["plan"] == "short plan"


def test_caps_shrink_as_the_tree_grows_down_to_a_floor() -> None:
    assert caps_for(10) == Caps()
    big = caps_for(500)
    assert big.code < Caps().code and 500 * big.per_node <= 8 * 1024 * 1024
    assert caps_for(1_000_000) == Caps(code=2_000, output=500, memory=500, text=500)


# --- the page in a real browser ---------------------------------------------------------------

needs_chromium = pytest.mark.skipif(chromium() is None, reason=MISSING)


@needs_chromium
async def test_the_page_loads_offline_and_draws_one_element_per_node(
        report: Report, tmp_path: Path) -> None:
    async with browser_page(tmp_path / "profile") as page:
        await page.open(report.path.as_uri())
        assert await page.evaluate("document.body.dataset.ready") == "true"
        drawn = await page.evaluate(
            "[...document.querySelectorAll('#tree .node')].map(g => +g.dataset.id)")
        assert drawn == [n["id"] for n in report.nodes]
        for chart in ("best", "tokens", "cost", "slots", "operators", "causes"):
            shapes = await page.evaluate(
                f"document.querySelectorAll('#chart-{chart} svg path, #chart-{chart} svg rect')"
                ".length")
            assert shapes > 0, chart
        assert page.console_errors() == []
        assert page.requested() == [report.path.as_uri()]
        assert await page.evaluate("window.__dialogs") == []
        assert await page.evaluate("document.scripts.length") == 2


@needs_chromium
async def test_clicking_a_node_shows_its_code_as_text(report: Report, tmp_path: Path) -> None:
    async with browser_page(tmp_path / "profile") as page:
        await page.open(report.path.as_uri())
        await page.click('#tree .node[data-id="1"]')
        shown = await page.evaluate("document.querySelector('#details pre.code').textContent")
        assert shown == report.nodes[0]["code"]
        output = await page.evaluate("document.querySelector('#details pre.output').textContent")
        assert BREAKOUT in output
        assert await page.evaluate("document.querySelector('#details h2').textContent") == \
            "Node 1"
        assert await page.evaluate(
            "document.querySelector('#tree .node[data-id=\"1\"]').classList.contains('selected')")
        # The hostile texts stayed text: no dialog, no new script or element.
        assert await page.evaluate("window.__dialogs") == []
        assert await page.evaluate("document.scripts.length") == 2
        assert await page.evaluate("document.querySelectorAll('img, b').length") == 0
        assert page.console_errors() == []


def _scale(transform: str) -> float:
    return float(transform.split("scale(")[1].rstrip(")"))


@needs_chromium
async def test_the_tree_zooms_pans_and_colours_by_metric(report: Report, tmp_path: Path) -> None:
    transform = "document.querySelector('#tree > g').getAttribute('transform')"
    fills = "[...document.querySelectorAll('#tree .node circle')].map(c => c.getAttribute('fill'))"
    async with browser_page(tmp_path / "profile") as page:
        await page.open(report.path.as_uri())
        before = await page.evaluate(transform)
        await page.wheel("#tree", -300)
        zoomed = await page.evaluate(transform)
        assert _scale(zoomed) > _scale(before)  # the wheel turned up zooms in
        # A drag pans, even one that starts on a node, and selects nothing.
        await page.drag('#tree .node[data-id="2"]', 120, 40)
        panned = await page.evaluate(transform)
        assert panned != zoomed and _scale(panned) == _scale(zoomed)
        assert await page.evaluate("document.querySelectorAll('#tree .selected').length") == 0
        by_status = await page.evaluate(fills)
        await page.evaluate("(() => { const s = document.getElementById('colour-by');"
                            " s.value = 'metric'; s.dispatchEvent(new Event('change')); })()")
        by_metric = await page.evaluate(fills)
        assert by_metric != by_status
        assert by_metric[0] == "#d0d3d9"  # node 1 is buggy: no metric to colour by
        assert page.console_errors() == []


@needs_chromium
async def test_a_screenshot_of_the_page_is_not_blank(report: Report, tmp_path: Path) -> None:
    async with browser_page(tmp_path / "profile") as page:
        await page.open(report.path.as_uri())
        await page.click('#tree .node[data-id="1"]')
        shot = await page.screenshot()
    (tmp_path / "shot.png").write_bytes(shot)
    image = Image.open(io.BytesIO(shot)).convert("RGB")
    area = image.width * image.height
    inked = sum(image.convert("L").histogram()[:235])
    assert inked > 0.03 * area, f"{inked} of {area} pixels are not white"
    colours = image.getcolors(maxcolors=area)
    assert colours is not None and len(colours) > 50


def _synthetic_page(nodes: list[NodeRecord], caps: Caps, **fields: Any) -> str:
    task: dict[str, Any] = {
        "id": "t0123456789a", "name": "synthetic", "state": "running", "error": None,
        "policy": "mcts", "metric": "accuracy", "lower_is_better": False, "steps": 5,
        "time_limit_s": 600.0, "nodes_total": len(nodes), "nodes_done": 0, "best": None,
        "usage": {}, "budget": {}, "created_at": 100.0, "started_at": 100.0,
        "finished_at": None, **fields}
    return render({"generated_at": 200.0, "task": task, "caps": asdict(caps),
                   "nodes": [node_entry(n, "", "", {}, caps) for n in nodes],
                   "series": series(task, nodes, {}, now=200.0)})


@needs_chromium
@pytest.mark.parametrize("nodes", [[], [_node(1, NodeState.RUNNING, None, 150,
                                               code="print(1)\n" * 2_000, slot="cpu0")]],
                         ids=["no-nodes-yet", "running-node-with-cut-code"])
async def test_a_young_task_and_cut_code_draw_without_errors(
        nodes: list[NodeRecord], tmp_path: Path) -> None:
    path = tmp_path / "page.html"
    path.write_text(_synthetic_page(nodes, Caps(code=1_000)))
    async with browser_page(tmp_path / "profile") as page:
        await page.open(path.as_uri())
        assert await page.evaluate("document.body.dataset.ready") == "true"
        assert await page.evaluate("document.querySelectorAll('#tree .node').length") == \
            len(nodes)
        header = await page.evaluate("document.querySelector('header').textContent")
        assert ("Some node texts are cut" in header) == bool(nodes)
        if nodes:
            await page.click('#tree .node[data-id="1"]')
            note = await page.evaluate("document.querySelector('#details .cut').textContent")
            assert note.startswith("cut: 18000 characters in all")
        assert page.console_errors() == []


_DETAILS = ("Object.fromEntries([...document.querySelectorAll('#details dt')]"
            ".map(dt => [dt.textContent, dt.nextElementSibling.textContent]))")
_GAP = "gap (metric \u2212 holdout)"


def _text_of(selector: str) -> str:
    return f"(document.querySelector({json.dumps(selector)}) || {{}}).textContent || null"


@needs_chromium
async def test_the_page_shows_the_holdout_the_final_choice_and_each_nodes_gap(
        report: Report, tmp_path: Path) -> None:
    holdout, selection = report.task["holdout"], report.task["selection"]
    chosen = next(n for n in report.nodes if n["id"] == selection["node_id"])
    async with browser_page(tmp_path / "profile") as page:
        await page.open(report.path.as_uri())
        assert await page.evaluate(_text_of("header .holdout")) == (
            f"holdout: {holdout['rows']} rows ({holdout['fraction'] * 100:.3g}%), "
            "never seen by the search")
        said = await page.evaluate(_text_of("header .selection"))
        assert said.startswith(f"final selection: node {chosen['id']} by the "
                               f"{selection['rule']} rule: {selection['reason']}")
        tooltip = await page.evaluate(
            _text_of(f'#tree .node[data-id="{chosen["id"]}"] title'))
        assert tooltip.endswith(f", holdout {chosen['holdout_metric']:.6g}")
        await page.click(f'#tree .node[data-id="{chosen["id"]}"]')
        facts = await page.evaluate(_DETAILS)
        gap = chosen["metric"] - chosen["holdout_metric"]
        assert facts["holdout metric"] == f"{chosen['holdout_metric']:.6g}"
        assert facts[_GAP] == f"{gap:+.6g}"
        await page.click('#tree .node[data-id="1"]')  # buggy: no holdout score
        facts = await page.evaluate(_DETAILS)
        assert (facts["holdout metric"], facts[_GAP]) == ("-", "-")
        assert page.console_errors() == []


KEPT = {"rule": "holdout", "node_id": 1, "metric": 0.9, "holdout_metric": 0.8,
        "reason": "node 1 has the best holdout score",
        "ensemble": {"kept": True, "members": [1, 2], "method": "mean", "holdout_metric": 0.85,
                     "best_single": {"node_id": 1, "holdout_metric": 0.8},
                     "reason": "the mean of nodes 1, 2 scored 0.85 on the holdout, better "
                               "than node 1 alone (0.8)"}}


@needs_chromium
@pytest.mark.parametrize(("fields", "holdout", "selection"), [
    ({"holdout": {"state": "off", "reason": "no labelled rows </script><b>x</b>"},
      "selection": {**KEPT, "ensemble": {"kept": False, "reason": "only one node"}}},
     "holdout: off (no labelled rows </script><b>x</b>)",
     "final selection: node 1 by the holdout rule: node 1 has the best holdout score; "
     "no ensemble: only one node"),
    ({"holdout": {"state": "on", "rows": 43, "fraction": 0.1, "group_column": None,
                  "columns": ["target"], "warning": "few rows"}, "selection": KEPT},
     "holdout: 43 rows (10%), never seen by the search; warning: few rows",
     "final selection: node 1 by the holdout rule: node 1 has the best holdout score; "
     "ensemble kept (the mean of nodes 1, 2, holdout 0.85): the mean of nodes 1, 2 scored "
     "0.85 on the holdout, better than node 1 alone (0.8)"),
    ({}, None, None),
], ids=["off-no-ensemble", "on-ensemble-kept", "older-task"])
async def test_the_holdout_off_an_ensemble_and_an_older_task_draw_without_errors(
        fields: dict[str, Any], holdout: str | None, selection: str | None,
        tmp_path: Path) -> None:
    nodes = [_node(1, NodeState.DONE, 0.9, 150, holdout_metric=0.95 if fields else None)]
    path = tmp_path / "page.html"
    path.write_text(_synthetic_page(nodes, Caps(), **fields))
    async with browser_page(tmp_path / "profile") as page:
        await page.open(path.as_uri())
        assert await page.evaluate(_text_of("header .holdout")) == holdout
        assert await page.evaluate(_text_of("header .selection")) == selection
        await page.click('#tree .node[data-id="1"]')
        facts = await page.evaluate(_DETAILS)
        assert (facts["holdout metric"], facts[_GAP]) == (
            ("0.95", "-0.05") if fields else ("-", "-"))
        assert await page.evaluate("document.querySelectorAll('b, header script').length") == 0
        assert page.console_errors() == []
