"""MLE-bench's validation server: agents post a submission with curl and learn only whether it is
valid, checked against a task the daemon knows, on a loopback port that is off by default."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import daemon_config

from mlmaster_daemon.api.client import Client
from mlmaster_daemon.api.validation_server import (
    INVALID,
    VALID,
    UnknownCompetition,
    judge,
    pick_task,
)
from mlmaster_daemon.config import load_config
from mlmaster_daemon.daemon import Daemon
from mlmaster_daemon.errors import ConfigError
from mlmaster_daemon.models import TaskState
from mlmaster_daemon.store import TaskRecord
from mlmaster_daemon.tasks.competition import load_task

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "validate_submission.sh"
MAX_UPLOAD_MB = 1


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


@dataclass
class Served:
    port: int
    task_id: str
    breast_cancer: Path

    def sample(self) -> Path:
        return self.breast_cancer / "prepared" / "public" / "sample_submission.csv"


@pytest.fixture
async def served(short_dir: Path, breast_cancer: Path) -> AsyncIterator[Served]:
    """A daemon with the validation server on a free port that knows the breast_cancer task."""
    port = free_port()
    config = daemon_config(short_dir / "state", short_dir / "api.sock", extra={
        "validation_server.port": port, "validation_server.max_upload_mb": MAX_UPLOAD_MB})
    daemon = Daemon(config)
    await daemon.start()
    try:
        async with Client(daemon.socket_path) as client:
            task = await client.submit({"task_dir": str(breast_cancer), "steps": 1})
        yield Served(port, task["id"], breast_cancer)
    finally:
        await daemon.stop()


async def run(*argv: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env)
    out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def curl(port: int, *args: str, path: str = "/validate") -> tuple[int, dict[str, Any]]:
    """(HTTP status, JSON body) of a real curl call to the server."""
    code, out, err = await run("curl", "-sS", "-w", "\n%{http_code}", *args,
                               f"http://127.0.0.1:{port}{path}")
    assert code == 0, err
    body, _, status = out.rpartition("\n")
    return int(status), json.loads(body)


async def post(port: int, file: Path, *args: str) -> tuple[int, dict[str, Any]]:
    return await curl(port, "-X", "POST", "-F", f"file=@{file}", *args)


def write_invalid(kind: str, sample: Path, dest: Path) -> Path:
    lines = sample.read_text().splitlines()
    if kind == "missing ids":
        dest.write_text("\n".join(lines[:-5]) + "\n")
    elif kind == "wrong columns":
        header = lines[0].split(",")
        dest.write_text("\n".join([",".join([header[0], "prediction"]), *lines[1:]]) + "\n")
    else:
        dest.write_bytes(bytes(range(256)) * 4)
    return dest


async def test_a_valid_submission_gets_mlebench_answer_and_no_score(served: Served) -> None:
    status, body = await post(served.port, served.sample(), "-H", "exp-id: breast_cancer")
    assert status == 200
    assert body == {"result": "Submission is valid.", "is_valid": True}


@pytest.mark.parametrize(("kind", "named"), [
    ("missing ids", "5 id(s) of the test set have no row"),
    ("wrong columns", "unexpected column(s) prediction"),
    ("not csv", "could not be parsed as CSV"),
])
async def test_an_invalid_submission_gets_200_and_the_grader_error(
    served: Served, tmp_path: Path, kind: str, named: str
) -> None:
    bad = write_invalid(kind, served.sample(), tmp_path / "bad.csv")
    status, body = await post(served.port, bad, "-H", "exp-id: breast_cancer")
    assert status == 200
    assert body["is_valid"] is False
    assert body["result"].startswith(INVALID)
    assert named in body["result"]
    # The message names the file the agent sent, not where the server spooled it.
    assert "bad.csv" in body["result"] and "validation-uploads" not in body["result"]


async def test_a_task_id_names_the_competition_too(served: Served) -> None:
    status, body = await post(served.port, served.sample(), "-H", f"exp-id: {served.task_id}")
    assert (status, body["result"]) == (200, VALID)


async def test_without_exp_id_the_daemons_competition_id_is_used(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COMPETITION_ID", "breast_cancer")
    status, body = await post(served.port, served.sample())
    assert (status, body["result"]) == (200, VALID)


async def test_an_unknown_competition_is_400_naming_the_known_ids(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    status, body = await post(served.port, served.sample(), "-H", "exp-id: spaceship-titanic")
    assert status == 400
    assert "spaceship-titanic" in body["details"]
    assert "breast_cancer" in body["details"] and served.task_id in body["details"]
    monkeypatch.delenv("COMPETITION_ID", raising=False)
    status, body = await post(served.port, served.sample())
    assert status == 400 and "exp-id" in body["details"]


async def test_a_request_without_the_file_field_is_400(served: Served) -> None:
    status, body = await curl(served.port, "-X", "POST", "-F", "other=1",
                              "-H", "exp-id: breast_cancer")
    assert status == 400 and "`file`" in body["details"]


async def test_health_says_running(served: Served) -> None:
    assert await curl(served.port, path="/health") == (200, {"status": "running"})


@pytest.mark.parametrize("transfer", ["content-length", "chunked"])
async def test_an_upload_over_the_limit_is_413(
    served: Served, tmp_path: Path, transfer: str
) -> None:
    big = tmp_path / "big.csv"
    big.write_bytes(b"id,target\n" + b"1,0\n" * (MAX_UPLOAD_MB * 1024 * 1024 // 4 + 10))
    extra = ["-H", "Transfer-Encoding: chunked"] if transfer == "chunked" else []
    status, body = await post(served.port, big, "-H", "exp-id: breast_cancer", *extra)
    assert status == 413
    assert "max_upload_mb" in body["details"]
    # Nothing of it is left behind, and the server goes on answering.
    assert await post(served.port, served.sample(), "-H", "exp-id: breast_cancer") == (
        200, {"result": VALID, "is_valid": True})


async def test_the_script_validates_like_mlebench_validate_submission_sh(
    served: Served, tmp_path: Path
) -> None:
    env = {**os.environ, "COMPETITION_ID": "breast_cancer"}
    code, out, _ = await run(str(SCRIPT), str(served.sample()), str(served.port), env=env)
    assert code == 0 and json.loads(out) == {"result": VALID, "is_valid": True}
    bad = write_invalid("missing ids", served.sample(), tmp_path / "bad.csv")
    env = {**os.environ, "COMPETITION_ID": "breast_cancer",
           "MLMASTER_VALIDATE_PORT": str(served.port)}
    code, out, _ = await run(str(SCRIPT), str(bad), env=env)
    assert code == 0 and json.loads(out)["is_valid"] is False


async def test_the_script_prints_its_usage_without_a_file() -> None:
    code, _, err = await run(str(SCRIPT))
    assert code == 2 and "usage:" in err


def listening_tcp_sockets() -> set[str]:
    """Inodes of this process's listening TCP sockets (from /proc)."""
    listening = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as rows:
            next(rows)
            listening |= {row.split()[9] for row in rows if row.split()[3] == "0A"}
    fd_dir = Path("/proc/self/fd")
    ours = set()
    for fd in fd_dir.iterdir():
        target = os.readlink(fd) if fd.is_symlink() else ""
        if target.startswith("socket:["):
            ours.add(target[len("socket:["):-1])
    return listening & ours


async def test_the_server_is_off_by_default(short_dir: Path) -> None:
    config = daemon_config(short_dir / "state", short_dir / "api.sock")
    assert config.validation_server.port == 0
    before = listening_tcp_sockets()
    daemon = Daemon(config)
    await daemon.start()
    try:
        assert listening_tcp_sockets() == before
    finally:
        await daemon.stop()


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.10", "::", "localhost"])
def test_config_refuses_hosts_other_than_loopback(host: str) -> None:
    with pytest.raises(ConfigError, match=r"validation_server.host.*loopback"):
        load_config(None, environ={}, overrides={"validation_server.host": host})


def test_config_takes_loopback_hosts_and_a_port_from_the_environment() -> None:
    config = load_config(None, environ={"MLMASTER_VALIDATION_SERVER__PORT": "5000",
                                        "MLMASTER_VALIDATION_SERVER__HOST": "::1"})
    assert (config.validation_server.port, config.validation_server.host) == (5000, "::1")
    with pytest.raises(ConfigError, match=r"validation_server.port"):
        load_config(None, environ={}, overrides={"validation_server.port": 70000})


async def test_a_port_in_use_stops_the_start_with_a_clear_error(short_dir: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        config = daemon_config(short_dir / "state", short_dir / "api.sock",
                               extra={"validation_server.port": taken.getsockname()[1]})
        daemon = Daemon(config)
        try:
            with pytest.raises(ConfigError, match=r"cannot listen on 127\.0\.0\.1"):
                await daemon.start()
        finally:
            await daemon.stop()


def record(task_id: str, root: Path, created_at: float) -> TaskRecord:
    spec = load_task(root)
    return TaskRecord(id=task_id, name=spec.name, task_dir=str(root), spec=spec, policy="mcts",
                      steps=1, time_limit_s=60, node_timeout_s=60, state=TaskState.FINISHED,
                      created_at=created_at)


def test_the_newest_task_of_a_competition_is_picked(breast_cancer: Path) -> None:
    now = time.time()
    tasks = [record("t-old", breast_cancer, now - 10), record("t-new", breast_cancer, now),
             record("t-mid", breast_cancer, now - 5)]
    assert pick_task(tasks, "breast_cancer").id == "t-new"
    assert pick_task(tasks, "t-old").id == "t-old"
    with pytest.raises(UnknownCompetition, match="no tasks yet"):
        pick_task([], "breast_cancer")


def test_without_hidden_answers_only_the_format_is_checked(
    breast_cancer: Path, tmp_path: Path
) -> None:
    public_only = tmp_path / "breast_cancer"
    shutil.copytree(breast_cancer, public_only)
    shutil.rmtree(public_only / "prepared" / "private")
    spec = load_task(public_only)
    sample = public_only / "prepared" / "public" / "sample_submission.csv"
    assert judge(spec, sample) is None
    bad = write_invalid("missing ids", sample, tmp_path / "bad.csv")
    assert "have no row" in (judge(spec, bad) or "")
