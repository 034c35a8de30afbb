"""`mlmaster export`: AIDE's journal and step-wise trajectories of a real daemon's search, read
back from the files the CLI wrote; the step rewards as export.py documents them; the prompts
stored with each model call, redacted and bounded."""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from conftest import daemon_config, wait_terminal
from openai_server import FakeOpenAI

from mlmaster_daemon.api.app import API_PARTS, errors_as_json
from mlmaster_daemon.api.client import Client
from mlmaster_daemon.api.export import routes
from mlmaster_daemon.daemon import Daemon
from mlmaster_daemon.errors import MlmasterError
from mlmaster_daemon.export import (
    BUG_PENALTY,
    FAILED_REWARD,
    FORMAT_ERROR_PENALTY,
    INVALID_SUBMISSION_PENALTY,
    NodeFiles,
    OutcomeKind,
    finished_nodes,
    step_rewards,
    trajectory_record,
)
from mlmaster_daemon.export_cli import add_parser
from mlmaster_daemon.models import NodeState, Operator, TaskState
from mlmaster_daemon.redact import forget_secrets, register_secret
from mlmaster_daemon.store.records import (
    MAX_PROMPT_CHARS,
    NodeRecord,
    PromptedCall,
    TaskRecord,
    prompt_json,
)
from mlmaster_daemon.tasks.spec import Metric, TaskSpec

KEY = "sk-live-export-never-4b7c2a"
AIDE_NODE_KEYS = {"code", "plan", "step", "id", "ctime", "parent", "children", "_term_out",
                  "exec_time", "exc_type", "exc_info", "exc_stack", "analysis", "metric",
                  "is_buggy"}
# One script for every node; what it does depends on its node id (its folder's name, with no
# sandbox): node 2 crashes, node 3 writes no metrics.json, node 4 a malformed submission, the
# others the sample submission and a metric that grows with the id. It prints the key, which
# must never reach an export.
SCRIPT = f"""import json, os, shutil
node = int(os.path.basename(os.getcwd()))
print("node", node, "{KEY}")
if node == 2:
    raise ValueError("this draft breaks on purpose")
shutil.copy("input/sample_submission.csv", "submission/submission.csv")
if node == 4:
    open("submission/submission.csv", "w").write("nothing,useful\\n")
if node != 3:
    json.dump({{"validation_metric": 0.5 + node / 100}}, open("metrics.json", "w"))
"""


def _node(node_id: int, state: NodeState, finished_at: float, metric: float | None = None,
          error: str | None = None, parents: tuple[int, ...] = (),
          interrupted: bool = False) -> NodeRecord:
    return NodeRecord(task_id="t000000000001", id=node_id,
                      parent_id=parents[0] if parents else None,
                      operator=Operator.IMPROVE if parents else Operator.DRAFT, state=state,
                      created_at=finished_at - 1, finished_at=finished_at, metric=metric,
                      error=error, parent_ids=parents, interrupted=interrupted)


SEARCH = [
    _node(1, NodeState.DONE, 10, 0.80),
    _node(2, NodeState.BUGGY, 11, error="script exited with code 1: ValueError: x"),
    _node(3, NodeState.DONE, 12, 0.90, parents=(1,)),
    _node(4, NodeState.DONE, 13, 0.70, parents=(2,)),
    _node(5, NodeState.BUGGY, 14, error="submission invalid: 3 rows, expected 10"),
    _node(6, NodeState.FAILED, 15, error="the model answered 3 times without a python code "
                                         "block"),
    _node(7, NodeState.BUGGY, 16, error="metrics.json missing: the script must write it"),
    _node(8, NodeState.FAILED, 17, error="the daemon stopped abnormally 2 times while ..."),
    _node(9, NodeState.BUGGY, 18, error="judged buggy: it reads the test labels"),
    _node(10, NodeState.FAILED, 19, error="interrupted", interrupted=True),
    _node(11, NodeState.RUNNING, 20),
]


def test_each_outcome_kind_gets_its_documented_reward() -> None:
    rewards = step_rewards(finished_nodes(SEARCH), lower_is_better=False)
    assert sorted(rewards) == [1, 2, 3, 4, 5, 6, 7, 8, 9]
    kinds = {n: (r.kind, r.reward) for n, r in rewards.items() if r.kind is not OutcomeKind.VALID}
    assert kinds == {
        2: (OutcomeKind.BUG, BUG_PENALTY),
        5: (OutcomeKind.INVALID_SUBMISSION, INVALID_SUBMISSION_PENALTY),
        6: (OutcomeKind.FORMAT_ERROR, FORMAT_ERROR_PENALTY),
        7: (OutcomeKind.FORMAT_ERROR, FORMAT_ERROR_PENALTY),
        8: (OutcomeKind.FAILED, FAILED_REWARD),
        9: (OutcomeKind.BUG, BUG_PENALTY),
    }


def test_a_valid_step_earns_its_gain_over_its_parent_normalised_by_the_spread() -> None:
    rewards = step_rewards(finished_nodes(SEARCH), lower_is_better=False)
    # Valid metrics 0.70 .. 0.90: spread 0.2. Node 1 has nothing to beat; node 3 gains 0.10
    # over its parent; node 4 (a debug of a buggy parent) falls 0.20 below the best so far.
    assert (rewards[1].gain, rewards[1].reward, rewards[1].score) == (0.0, 0.5, 0.5)
    assert rewards[3].reference == 0.80
    assert (rewards[3].gain, rewards[3].reward, rewards[3].score) == (0.5, 0.75, 1.0)
    assert rewards[4].reference == 0.90
    assert (rewards[4].gain, rewards[4].reward, rewards[4].score) == (-1.0, 0.0, 0.0)


def test_when_lower_is_better_the_same_metrics_reward_the_other_way() -> None:
    rewards = step_rewards(finished_nodes(SEARCH), lower_is_better=True)
    assert (rewards[3].gain, rewards[3].reward, rewards[3].score) == (-0.5, 0.25, 0.0)
    # The best so far when node 4 finished is 0.80 (lower wins); 0.70 beats it.
    assert rewards[4].reference == 0.80
    assert (rewards[4].gain, rewards[4].reward, rewards[4].score) == (0.5, 0.75, 1.0)


def test_stored_prompts_are_redacted_and_bounded() -> None:
    register_secret(KEY)
    try:
        stored = prompt_json([{"role": "system", "content": f"key {KEY}"},
                              {"role": "user", "content": "x" * (MAX_PROMPT_CHARS + 500)},
                              {"role": "user", "content": "never reached"}])
    finally:
        forget_secrets()
    assert KEY not in stored
    call = PromptedCall("code", "m", "e", 1, 1, 0, 0.1, 0.0, 1, prompt=stored)
    messages = call.messages()
    assert isinstance(messages, list) and messages[0]["content"] == "key [redacted]"
    assert sum(len(m["content"]) for m in messages) < MAX_PROMPT_CHARS + 100
    assert messages[1]["content"].endswith("characters cut]")
    assert messages[2]["content"].startswith("\n[... 13 characters cut]")


SPEC = TaskSpec(name="bc", root=Path("/tasks/bc"), public_dir=Path("/tasks/bc/public"),
                private_dir=None, description="Predict the diagnosis.", metric=Metric.ROC_AUC,
                lower_is_better=False, target="target", id_column="id")


def test_an_offline_step_has_no_sft_pair() -> None:
    task = TaskRecord(id="t000000000001", name="bc", task_dir="/x", spec=SPEC, policy="mcts",
                      steps=4, time_limit_s=60, node_timeout_s=60, state=TaskState.FINISHED,
                      created_at=1.0)
    node = replace(SEARCH[0], plan="a plan", code="print(1)")
    reward = step_rewards([node], lower_is_better=False)[1]
    record = trajectory_record(task, node, 0, reward, NodeFiles("memory", "out"), [])
    assert (record["coder"], record["sft"], record["state"]["prompt"]) == ("offline", None, None)
    assert record["action"] == {"plan": "a plan", "code": "print(1)"}
    assert record["state"]["memory"] == "memory" and record["outcome"]["output"] == "out"


@asynccontextmanager
async def export_api(daemon: Daemon, socket: Path) -> AsyncIterator[Path]:
    """The export routes over the daemon's own parts (store, state dir), on their own socket,
    as app.py serves them once it registers `routes()`."""
    parts = daemon.api_parts
    assert parts is not None, "the daemon is started"
    app = web.Application(middlewares=[errors_as_json])
    app[API_PARTS] = parts
    app.add_routes(routes())
    runner = web.AppRunner(app)
    await runner.setup()
    await web.UnixSite(runner, str(socket)).start()
    try:
        yield socket
    finally:
        await runner.cleanup()


def _cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="mlmaster")
    sub = parser.add_subparsers(dest="command", required=True)

    def with_socket(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--socket")
        p.add_argument("--config")
        return p

    add_parser(sub, with_socket)
    args = parser.parse_args(argv)
    code: int = args.fn(args)
    return code


async def _export(socket: Path, task_id: str, fmt: str, target: Path) -> str:
    """Run `mlmaster export` (in a thread: it runs its own event loop); the file's text."""
    assert await asyncio.to_thread(_cli, "export", task_id, "--format", fmt, "--socket",
                                   str(socket), "-o", str(target)) == 0
    return target.read_text()


async def _search_and_export(short_dir: Path, task_dir: Path, *formats: str,
                             ) -> tuple[dict[str, Any], dict[int, dict[str, Any]], list[str]]:
    """A real daemon and a real OpenAI-compatible server run SCRIPT for six steps; the task,
    its nodes by id, and each export as `mlmaster export` wrote it."""
    server = await FakeOpenAI(code=SCRIPT, plan=f"Copy the sample (key {KEY}).").start()
    endpoint = {"base_url": server.base_url, "model": "fake-r1", "api_key_env": "FAKE_KEY",
                "max_retries": 1, "backoff_s": 0.01, "timeout_s": 20}
    config = daemon_config(short_dir / "state", short_dir / "api.sock", extra={
        "llm.code": endpoint, "execution.sandbox": "none"})
    (short_dir / "out").mkdir()
    daemon = Daemon(config)
    await daemon.start()
    try:
        async with Client(daemon.socket_path) as client, \
                export_api(daemon, short_dir / "x.sock") as socket:
            task = await wait_terminal(client, (await client.submit(
                {"task_dir": str(task_dir), "steps": 6}))["id"])
            nodes = {n["id"]: n for n in await client.nodes(task["id"])}
            texts = [await _export(socket, task["id"], fmt, short_dir / "out" / fmt)
                     for fmt in formats]
    finally:
        await daemon.stop()
        await server.stop()
    return task, nodes, texts


async def test_the_journal_reads_as_aides_with_one_node_per_finished_node(
    short_dir: Path, breast_cancer: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("FAKE_KEY", KEY)
    _task, nodes, [text] = await _search_and_export(short_dir, breast_cancer, "journal")
    # The command prints the file it wrote (the daemon logs to stdout here too).
    assert str(short_dir / "out" / "journal") in capsys.readouterr().out.splitlines()
    assert KEY not in text
    journal = json.loads(text)
    finished = [n for n in nodes.values() if n["status"] in ("done", "buggy", "failed")]
    assert len(journal["nodes"]) == len(finished) == 6
    assert journal["__version"] == "2"
    by_id = {e["id"]: e for e in journal["nodes"]}
    for step, entry in enumerate(journal["nodes"]):
        assert AIDE_NODE_KEYS <= set(entry)
        node = nodes[int(entry["id"])]
        assert entry["step"] == step
        assert entry["code"] and entry["plan"]
        assert entry["is_buggy"] == (node["status"] != "done")
        assert entry["metric"] == ({"value": node["metric"], "maximize": True}
                                   if node["status"] == "done"
                                   else {"value": None, "maximize": None})
        # AIDE's loader rebuilds parent and children from node2parent; ours say them too.
        assert (entry["parent"], entry["children"]) == (None, [])
        expected_parent = None if node["parent_id"] is None else str(node["parent_id"])
        assert entry["parent_id"] == expected_parent
        assert journal["node2parent"].get(entry["id"]) == expected_parent
        for child in entry["children_ids"]:
            assert by_id[child]["parent_id"] == entry["id"]
    assert sum(len(e["children_ids"]) for e in journal["nodes"]) == len(journal["node2parent"])
    assert journal["node2parent"], "improve and debug steps have parents"
    assert by_id["2"]["exc_type"] == "ValueError" and by_id["1"]["exc_type"] is None
    assert any(e["_term_out"] for e in journal["nodes"])


async def test_trajectories_of_a_model_written_search(
    short_dir: Path, breast_cancer: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FAKE_KEY", KEY)
    task, nodes, [text] = await _search_and_export(short_dir, breast_cancer, "trajectories")
    assert KEY not in text
    records = [json.loads(line) for line in text.splitlines()]
    assert [r["node_id"] for r in records] == sorted(nodes) == [1, 2, 3, 4, 5, 6]
    by_node: dict[int, dict[str, Any]] = {r["node_id"]: r for r in records}
    assert (by_node[2]["kind"], by_node[2]["reward"]) == ("bug", BUG_PENALTY)
    assert "ValueError" in by_node[2]["outcome"]["error"]
    assert (by_node[3]["kind"], by_node[3]["reward"]) == ("format_error", FORMAT_ERROR_PENALTY)
    assert (by_node[4]["kind"], by_node[4]["reward"]) == ("invalid_submission",
                                                          INVALID_SUBMISSION_PENALTY)
    valid = [r for r in records if r["kind"] == "valid"]
    assert [r["node_id"] for r in valid] == [1, 5, 6]
    # A node made from a parent sees what that parent tried (drafts made before any node
    # finished see nothing, so only children are certain to remember something).
    children = [r for r in records if r["parent_id"] is not None]
    assert children, "improve and debug steps have parents"
    for child in children:
        assert f"- Node {child['parent_id']} (" in child["state"]["memory"], child
    assert all(0.0 <= r["reward"] <= 1.0 and r["outcome"]["valid_submission"] for r in valid)
    # The best node (the highest metric) tops the task's scale and beat what it was measured
    # against; the worst valid one sits at the bottom.
    assert task["best"]["node_id"] == 6
    assert (by_node[6]["score"], by_node[1]["score"]) == (1.0, 0.0)
    assert by_node[6]["gain"] > 0 and by_node[6]["reward"] > 0.5
    for record in records:
        assert record["outcome"]["buggy"] == (record["kind"] != "valid")
        assert record["action"]["code"] and isinstance(record["state"]["memory"], str)
        assert record["coder"] == "llm"
        # The SFT pair: the prompt the coder sent and the answer whose code ran.
        sft = record["sft"]
        assert sft["prompt"] == record["state"]["prompt"]
        assert sft["prompt"][-1]["role"] == "user" and "metrics.json" in sft["prompt"][-1][
            "content"]
        assert "```python" in sft["completion"] and "[redacted]" in sft["completion"]
        assert record["usage"]["calls"] == 1
        parent = record["parent_id"]
        assert parent is None or parent in by_node


async def test_export_refuses_an_unknown_format_and_task(short_dir: Path, breast_cancer: Path,
                                                          ) -> None:
    daemon = Daemon(daemon_config(short_dir / "state", short_dir / "api.sock"))
    await daemon.start()
    try:
        async with export_api(daemon, short_dir / "x.sock") as socket:
            with pytest.raises(MlmasterError, match="no task with id 't0123456789a'"):
                await _export(socket, "t0123456789a", "journal", short_dir / "j.json")
            with pytest.raises(MlmasterError, match="task id must be"):
                await _export(socket, "nope", "journal", short_dir / "j.json")
            with pytest.raises(MlmasterError, match=r"the folder .* does not exist"):
                await _export(socket, "t0123456789a", "journal", short_dir / "no" / "j.json")
            async with Client(socket) as raw:
                with pytest.raises(MlmasterError, match="format must be one of journal, "
                                                        "trajectories"):
                    await raw.request("GET", "/v1/tasks/t0123456789a/export?format=csv")
    finally:
        await daemon.stop()
    assert not (short_dir / "j.json").exists()
