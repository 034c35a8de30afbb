"""GET /v1/tasks/{id}/nodes/{node}/log, which `mlmaster logs --follow` reads: a node's stdout or
stderr from a byte offset, bounded, never through a link."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest
from conftest import wait_terminal

from mlmaster_daemon.api.client import ApiError, Client
from mlmaster_daemon.api.node_logs import read_chunk
from mlmaster_daemon.artefacts import node_dir
from mlmaster_daemon.daemon import Daemon
from mlmaster_daemon.redact import forget_secrets, register_secret


def test_a_character_split_by_the_chunk_comes_whole_with_the_next(tmp_path: Path) -> None:
    (tmp_path / "stdout.log").write_text("ab\u00e9cd")  # é is two bytes: 3 and 4
    first = read_chunk(tmp_path, "stdout.log", 0, limit=3)
    assert (first.text, first.next_offset) == ("ab", 2)
    second = read_chunk(tmp_path, "stdout.log", first.next_offset, limit=3)
    assert second.text == "\u00e9c"


def test_a_secret_cut_by_a_chunk_edge_is_masked_in_both_chunks(tmp_path: Path) -> None:
    key = "sk-live-0123456789abcdef"
    (tmp_path / "stdout.log").write_text(f"token {key} printed by a job\n")
    register_secret(key)
    try:
        for limit in range(1, 40):
            for start in range(0, 40):
                # Any chunk, read from any offset: no piece of the key longer than a few
                # characters shows, whether it is whole, cut at the end, or cut at the start.
                text = read_chunk(tmp_path, "stdout.log", start, limit=limit).text
                for width in range(4, len(key) + 1):
                    for at in range(len(key) - width + 1):
                        assert key[at:at + width] not in text, (start, limit, text)
        whole = read_chunk(tmp_path, "stdout.log", 0).text
        assert whole == "token [redacted] printed by a job\n"
    finally:
        forget_secrets()


def test_an_offset_past_the_end_reads_the_restarted_log_from_the_start(tmp_path: Path) -> None:
    (tmp_path / "stderr.log").write_text("new run\n")
    chunk = read_chunk(tmp_path, "stderr.log", 10_000)
    assert (chunk.offset, chunk.text, chunk.next_offset) == (0, "new run\n", 8)


def test_a_log_that_is_a_link_reads_as_empty(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("not for jobs")
    (tmp_path / "ws").mkdir()
    (tmp_path / "ws" / "stdout.log").symlink_to(secret)
    assert read_chunk(tmp_path / "ws", "stdout.log", 0).text == ""


@pytest.fixture
async def finished(daemon: Daemon, client: Client, breast_cancer: Path) -> str:
    task = await client.submit({"task_dir": str(breast_cancer), "steps": 2})
    done = await wait_terminal(client, task["id"])
    assert done["state"] == "finished"
    return str(task["id"])


async def test_the_log_route_reads_a_nodes_stdout_from_an_offset(
        daemon: Daemon, client: Client, finished: str) -> None:
    written = (node_dir(daemon.state_dir, finished, 1) / "stdout.log").read_bytes()
    assert written, "the offline coder's script prints its progress"
    whole = await client.node_log(finished, 1, "stdout", 0)
    assert whole["text"].encode() == written and whole["next_offset"] == len(written)
    rest = await client.node_log(finished, 1, "stdout", 5)
    assert rest["text"].encode() == written[5:]


async def test_the_log_route_refuses_a_bad_stream_or_offset_and_an_unknown_node(
        client: Client, finished: str) -> None:
    for query, what in (("stream=env", "stdout or stderr"), ("offset=-1", "whole number")):
        with pytest.raises(ApiError) as caught:
            await client.request("GET", f"/v1/tasks/{finished}/nodes/1/log?{query}")
        assert caught.value.status == 400 and what in str(caught.value)
    with pytest.raises(ApiError) as missing:
        await client.node_log(finished, 99, "stdout", 0)
    assert missing.value.status == 404


async def test_the_log_route_never_follows_a_link_out_of_the_node_folder(
        daemon: Daemon, client: Client, finished: str, tmp_path: Path) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_text("the daemon's secrets")
    log = node_dir(daemon.state_dir, finished, 1) / "stderr.log"
    log.unlink(missing_ok=True)
    log.symlink_to(outside)
    chunk = await client.node_log(finished, 1, "stderr", 0)
    assert chunk["text"] == "" and chunk["size"] == 0


async def test_logs_follow_prints_a_finished_nodes_whole_stdout(
        daemon: Daemon, finished: str) -> None:
    written = (node_dir(daemon.state_dir, finished, 1) / "stdout.log").read_text()
    # The daemon runs in this event loop: the CLI must not block it.
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mlmaster_daemon", "logs", finished, "1", "--follow",
        "--socket", str(daemon.socket_path), stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    async with asyncio.timeout(120):
        out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    assert out.decode() == written


# A model's script that prints a line, then waits for the test to let it go on.
GATED = """\
import json, os, time
print("first line", flush=True)
while not os.path.exists("go"):
    time.sleep(0.02)
print("second line", flush=True)
os.makedirs("submission", exist_ok=True)
with open("metrics.json", "w") as handle:
    json.dump({"validation_metric": 0.5, "fold_metrics": [0.5]}, handle)
"""


async def test_logs_follow_streams_a_running_nodes_output_until_it_ends(
        short_dir: Path, tmp_path: Path, breast_cancer: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from conftest import daemon_config
    from openai_server import FakeOpenAI

    monkeypatch.setenv("FAKE_KEY", "sk-test-key-0000")
    server = FakeOpenAI(code=GATED)
    await server.start()
    endpoint = {"base_url": server.base_url, "model": "fake", "api_key_env": "FAKE_KEY",
                "max_retries": 1, "backoff_s": 0.01, "timeout_s": 20}
    daemon = Daemon(daemon_config(short_dir / "state", short_dir / "api.sock",
                                  extra={"llm.code": endpoint}))
    await daemon.start()
    try:
        async with Client(daemon.socket_path) as client, asyncio.timeout(120):
            events = client.events()
            assert (await anext(events))["type"] == "hello"
            task = await client.submit({"task_dir": str(breast_cancer), "steps": 1})
            async for event in events:
                if (event.get("type"), event.get("node_id"), event.get("state")) == (
                        "node.state", 1, "running"):
                    break
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "mlmaster_daemon", "logs", task["id"], "1", "--follow",
                "--socket", str(daemon.socket_path), stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE)
            assert proc.stdout is not None
            # The first line arrives while the node still runs: it cannot end before "go".
            assert await proc.stdout.readline() == b"first line\n"
            assert proc.returncode is None
            (node_dir(daemon.state_dir, task["id"], 1) / "go").touch()
            rest, err = await proc.communicate()
            assert proc.returncode == 0, err.decode()
            assert rest == b"second line\n"
            await wait_terminal(client, task["id"])
    finally:
        await daemon.stop()
        await server.stop()
