"""The API over a real Unix socket, driving a real daemon that runs real scripts."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import Any

import aiohttp
import pandas as pd
import psutil
import pytest
from conftest import restart_and_finish, wait_terminal

from mlmaster_daemon.api.client import ApiError, Client
from mlmaster_daemon.config import Config
from mlmaster_daemon.daemon import Daemon
from mlmaster_daemon.tasks.competition import load_task
from mlmaster_daemon.tasks.grading import grade, grade_sample_submission


async def _raw(daemon: Daemon, method: str, path: str, data: bytes | None = None,
               ) -> tuple[int, Any]:
    connector = aiohttp.UnixConnector(path=str(daemon.socket_path))
    async with aiohttp.ClientSession(connector=connector) as session, session.request(
        method, f"http://localhost{path}", data=data,
        headers={"Content-Type": "application/json"},
    ) as resp:
        return resp.status, await resp.json(content_type=None)


async def test_health_answers(client: Client) -> None:
    health = await client.health()
    assert health["status"] == "ok"


async def test_submit_runs_the_search_to_a_best_submission_that_beats_the_sample(
    client: Client, breast_cancer: Path
) -> None:
    events: list[dict[str, Any]] = []

    async def collect() -> None:
        async for event in client.events():
            events.append(event)

    collector = asyncio.create_task(collect())
    created = await client.submit({"task_dir": str(breast_cancer), "steps": 6})
    assert created["state"] in ("queued", "running")
    task = await wait_terminal(client, created["id"])
    collector.cancel()

    assert task["state"] == "finished"
    assert task["nodes_total"] == 6 and task["nodes_done"] == 6
    best = task["best"]
    assert best is not None
    submission = Path(best["submission_path"])
    assert submission.exists()
    assert (submission.parent / "solution.py").exists()
    spec = load_task(breast_cancer)
    assert grade(spec, submission) > grade_sample_submission(spec) + 0.2

    nodes = await client.nodes(task["id"])
    assert len(nodes) == 6
    for node in nodes:
        assert {"id", "parent_id", "operator", "status", "metric", "visits", "value"} <= set(node)
        assert node["status"] in ("done", "buggy")
    assert sum(1 for n in nodes if n["operator"] == "draft") <= 5
    best_node = next(n for n in nodes if n["id"] == best["node_id"])
    assert best_node["metric"] == best["metric"]
    # Chosen by the hidden holdout (the default rule), which every working node has a score on.
    done = [n for n in nodes if n["status"] == "done"]
    assert task["holdout"]["state"] == "on" and all(n["holdout_metric"] for n in done)
    assert best_node["holdout_metric"] == max(n["holdout_metric"] for n in done)
    assert task["selection"]["node_id"] == best["node_id"]

    detail = await client.node(task["id"], best["node_id"])
    assert "submission" in detail["code"] and "metrics.json" in detail["code"]
    assert detail["output_tail"]

    kinds = [e["type"] for e in events if e.get("task_id") == task["id"]]
    assert "node.state" in kinds and "task.best" in kinds
    assert kinds[-1] == "task.state"
    states = [e["state"] for e in events if e.get("type") == "node.state" and e["node_id"] == 1]
    assert states[:2] == ["pending", "generating"]
    assert states[-1] in ("done", "buggy")


async def _refused(client: Client, body: dict[str, Any]) -> ApiError:
    """Submit `body`, expecting the daemon to refuse it with a 400."""
    with pytest.raises(ApiError) as err:
        await client.submit(body)
    assert err.value.status == 400
    return err.value


def _copy_without(src: Path, dst: Path, relative: str) -> Path:
    shutil.copytree(src, dst)
    (dst / relative).unlink()
    return dst


async def test_missing_folder_is_a_400_that_names_it(client: Client, short_dir: Path) -> None:
    err = await _refused(client, {"task_dir": str(short_dir / "nope")})
    assert err.code == "invalid_task_dir"
    assert "nope" in err.message


async def test_folder_without_train_csv_is_a_400(
    client: Client, breast_cancer: Path, short_dir: Path
) -> None:
    broken = _copy_without(breast_cancer, short_dir / "broken", "prepared/public/train.csv")
    err = await _refused(client, {"task_dir": str(broken)})
    assert "train.csv" in err.message


async def test_missing_metric_is_refused_naming_it(
    client: Client, breast_cancer: Path, short_dir: Path
) -> None:
    bare = _copy_without(breast_cancer, short_dir / "bare", "task.toml")
    err = await _refused(client, {"task_dir": str(bare)})
    assert "metric" in err.message
    ok = await client.submit({"task_dir": str(bare), "metric": "roc_auc", "steps": 1})
    await client.cancel(ok["id"])


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b'{"task_dir": 5}', "task_dir"),
        (b'{"task_dir": "/x", "steps": "ten"}', "steps"),
        (b'{"task_dir": "/x", "steps": 0}', "steps"),
        (b'{"task_dir": "/x", "colour": "red"}', "colour"),
        (b'{"steps": 3}', "task_dir"),
        (b'["task_dir"]', "JSON object"),
        (b'{"task_dir": ', "not valid JSON"),
        (b'{"task_dir": "/x", "policy": "genetic"}', "policy"),
    ],
)
async def test_malformed_submissions_are_400s_and_the_daemon_stays_healthy(
    daemon: Daemon, client: Client, body: bytes, fragment: str
) -> None:
    status, payload = await _raw(daemon, "POST", "/v1/tasks", body)
    assert status == 400
    assert payload["error"]["code"] == "invalid_request"
    assert fragment in payload["error"]["message"]
    assert (await client.health())["status"] == "ok"


async def test_unknown_ids_and_routes_are_404s_in_json(daemon: Daemon, client: Client) -> None:
    for path, code in [
        ("/v1/tasks/t00000000000", "task_not_found"),
        ("/v1/tasks/t00000000000/nodes", "task_not_found"),
        ("/v1/tasks/t00000000000/nodes/1", "task_not_found"),
        ("/v2/whatever", "not_found"),
    ]:
        status, payload = await _raw(daemon, "GET", path)
        assert (status, payload["error"]["code"]) == (404, code), path
    status, payload = await _raw(daemon, "POST", "/v1/tasks/t00000000000/cancel")
    assert status == 404
    status, payload = await _raw(daemon, "DELETE", "/v1/health")
    assert status == 405
    assert (await client.health())["status"] == "ok"


async def test_node_ids_are_validated(client: Client, daemon: Daemon, breast_cancer: Path) -> None:
    task = await client.submit({"task_dir": str(breast_cancer), "steps": 1})
    status, payload = await _raw(daemon, "GET", f"/v1/tasks/{task['id']}/nodes/abc")
    assert status == 400
    status, payload = await _raw(daemon, "GET", f"/v1/tasks/{task['id']}/nodes/999")
    assert (status, payload["error"]["code"]) == (404, "node_not_found")
    await client.cancel(task["id"])


async def test_cancel_stops_the_task_and_its_scripts(
    client: Client, daemon: Daemon, breast_cancer: Path
) -> None:
    task = await client.submit({"task_dir": str(breast_cancer), "steps": 50})
    async with asyncio.timeout(60):
        while not [n for n in await client.nodes(task["id"]) if n["status"] == "running"]:
            await asyncio.sleep(0.1)
    cancelled = await client.cancel(task["id"])
    assert cancelled["state"] == "cancelled"
    nodes = await client.nodes(task["id"])
    assert all(n["status"] in ("done", "buggy", "failed") for n in nodes)
    me = psutil.Process()
    assert not [c for c in me.children(recursive=True) if "solution.py" in " ".join(c.cmdline())]
    with pytest.raises(ApiError) as err:
        await client.cancel(task["id"])
    assert err.value.status == 409


async def test_tasks_resume_after_a_daemon_restart(config: Config, breast_cancer: Path) -> None:
    first = Daemon(config)
    await first.start()
    async with Client(first.socket_path) as client:
        task = await client.submit({"task_dir": str(breast_cancer), "steps": 4})
        async with asyncio.timeout(60):
            while (await client.task(task["id"]))["nodes_done"] < 1:
                await asyncio.sleep(0.1)
    await first.stop()

    final, nodes = await restart_and_finish(config, task["id"])
    assert final["state"] == "finished"
    # A node the stop caught before it had code is not a step (it shows, failed, besides).
    steps = [n for n in nodes if not (n["error"] or "").startswith("interrupted: the daemon")]
    assert len(steps) == 4 and final["nodes_total"] in (4, 5)
    assert any(n["status"] in ("done", "buggy") for n in nodes)


def test_event_lines_are_json(breast_cancer: Path) -> None:
    # The stream's framing: one JSON object per line (checked on the serialiser directly).
    from mlmaster_daemon.bus import NodeStateChanged

    line = json.dumps(NodeStateChanged(task_id="t", node_id=1, parent_id=None, operator="draft",
                                       state="done", metric=0.5).to_dict())
    assert json.loads(line)["type"] == "node.state"
    assert pd.notna(json.loads(line)["metric"])


async def test_a_competition_scored_by_its_own_metric_is_refused_when_no_model_is_configured(
        client: Client, tmp_path: Path) -> None:
    # AI4Code is scored by Kendall tau over cell orders: no tabular model of the offline coder
    # writes that, so the daemon says so at submit instead of failing every node.
    public = tmp_path / "AI4Code" / "prepared" / "public"
    public.mkdir(parents=True)
    (public / "train_orders.csv").write_text("id,cell_order\na,x y\n")
    (public / "sample_submission.csv").write_text("id,cell_order\nb,x y\n")
    refusal = await _refused(client, {"task_dir": str(tmp_path / "AI4Code")})
    assert "Kendall tau" in refusal.message and "[llm.code]" in refusal.message
    assert await client.tasks() == []
