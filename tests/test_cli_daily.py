"""Daily use of `mlmaster`: help that lists the choices, a hint for a mistyped command, the
socket path the CLI uses, and socket errors that say what happened."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from mlmaster_daemon.api.client import Client
from mlmaster_daemon.errors import DaemonUnreachable
from mlmaster_daemon.policy_config import POLICIES
from mlmaster_daemon.tasks.spec import Metric
from tests.daemon_process import MLMASTER, running_daemon

NOBODY = 65534


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("MLMASTER_") and k not in ("XDG_RUNTIME_DIR", "RUNTIME_DIRECTORY")}
    return {**env, **extra}


def _cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*MLMASTER, *args], capture_output=True, text=True, env=_env(**env),
                          timeout=120, check=False)


def _unreachable(path: Path) -> str:
    async def go() -> str:
        async with Client(path) as client:
            with pytest.raises(DaemonUnreachable) as caught:
                await client.health()
            return caught.value.message

    return asyncio.run(go())


@pytest.fixture
def daemon_socket(short_dir: Path) -> Iterator[Path]:
    with running_daemon(short_dir, _env()) as sock:
        yield sock


def test_submit_help_lists_every_metric_and_policy() -> None:
    out = _cli("submit", "--help").stdout
    flat = " ".join(out.split())
    for metric in Metric:
        assert metric.value in flat
    for policy in POLICIES:
        assert policy in flat


def test_an_unknown_metric_is_refused_naming_the_choices() -> None:
    refused = _cli("submit", "/nowhere", "--metric", "auc")
    assert refused.returncode == 2
    assert "roc_auc" in refused.stderr and "accuracy" in refused.stderr


def test_a_mistyped_command_gets_a_did_you_mean() -> None:
    refused = _cli("shwo", "t0123456789a")
    assert refused.returncode == 2
    assert "did you mean 'show'?" in refused.stderr


def test_socket_prints_the_path_the_cli_uses_without_a_runtime_dir() -> None:
    assert _cli("socket").stdout == f"/tmp/mlmaster-{os.getuid()}/mlmaster.sock\n"
    assert _cli("socket", MLMASTER_SOCKET="/run/x.sock").stdout == "/run/x.sock\n"
    assert _cli("socket", "--socket", "/srv/y.sock").stdout == "/srv/y.sock\n"


def test_socket_prints_what_curl_can_use(daemon_socket: Path) -> None:
    path = _cli("socket", MLMASTER_SOCKET=str(daemon_socket)).stdout.strip()
    health = subprocess.run(["curl", "-s", "--unix-socket", path, "http://localhost/v1/health"],
                            capture_output=True, text=True, timeout=60, check=True)
    assert '"status"' in health.stdout


def test_a_socket_path_in_a_missing_folder_names_the_folder(tmp_path: Path) -> None:
    refused = _cli("ls", "--socket", str(tmp_path / "gone" / "d.sock"))
    assert refused.returncode == 1
    assert f"the folder {tmp_path / 'gone'} does not exist" in refused.stderr


def test_a_folder_given_as_socket_is_named() -> None:
    assert "is a folder, not the daemon's socket" in _unreachable(Path("/tmp"))


def test_a_socket_path_too_long_for_unix_says_so(tmp_path: Path) -> None:
    message = _unreachable(tmp_path / ("x" * 120))
    assert "longer than the 107" in message


def test_a_socket_nobody_listens_on_is_called_stale(short_dir: Path) -> None:
    path = short_dir / "stale.sock"
    with socket.socket(socket.AF_UNIX) as bound:
        bound.bind(str(path))  # bound but never listening: connect is refused
        message = _unreachable(path)
    assert f"no daemon is listening on {path}" in message


@pytest.mark.skipif(os.geteuid() != 0, reason="connecting as another uid needs root")
def test_permission_denied_names_the_socket_and_its_group(daemon_socket: Path) -> None:
    daemon_socket.parent.chmod(0o755)
    _unreachable(daemon_socket.parent / "absent.sock")  # import what the child will need
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child connects as nobody, who is not in the socket's group
        os.close(reader)
        try:
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            message = _unreachable(daemon_socket)
        except BaseException as exc:  # any failure goes back to the parent as the message
            message = f"child failed: {exc!r}"
        os.write(writer, message.encode())
        os._exit(0)
    os.close(writer)
    with os.fdopen(reader, "rb") as pipe:
        message = pipe.read().decode()
    os.waitpid(pid, 0)
    assert f"permission denied on {daemon_socket}" in message
    assert "you are not in group root" in message


def test_report_html_and_export_write_a_finished_tasks_files(
        daemon_socket: Path, tmp_path: Path) -> None:
    import json

    from mlmaster_daemon.tasks.examples import build_example

    root = build_example("breast_cancer", tmp_path / "breast_cancer")
    sock = str(daemon_socket)
    submitted = _cli("submit", str(root), "--steps", "2", "--wait", "--json", "--socket", sock)
    assert submitted.returncode == 0, submitted.stderr
    task_id = json.loads(submitted.stdout)["id"]
    page, journal = tmp_path / "page.html", tmp_path / "journal.json"
    wrote = _cli("report-html", task_id, "-o", str(page), "--socket", sock)
    assert wrote.returncode == 0, wrote.stderr
    assert str(page) in wrote.stdout and page.read_text().startswith("<!DOCTYPE html>")
    exported = _cli("export", task_id, "--format", "journal", "-o", str(journal),
                    "--socket", sock)
    assert exported.returncode == 0, exported.stderr
    assert len(json.loads(journal.read_text())["nodes"]) == 2
    unknown = _cli("export", "t000000000000", "--format", "journal", "--socket", sock)
    assert unknown.returncode == 1 and "t000000000000" in unknown.stderr
