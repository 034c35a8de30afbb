"""`mlmaster doctor` on the Ray backend, against a real Ray cluster on this machine: a head that
runs nothing and two workers of one CPU each, one of them advertising `accel`."""

from __future__ import annotations

import dataclasses
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

ray = pytest.importorskip("ray", reason="the Ray backend needs pip install 'mlmaster-daemon[ray]'")

from conftest import daemon_config  # noqa: E402
from ray_cluster import STORE, Workers, free_port, local_cluster  # noqa: E402

import mlmaster_daemon  # noqa: E402
from mlmaster_daemon.doctor import Check, run_doctor  # noqa: E402
from mlmaster_daemon.ray_doctor import compare_versions, local_report  # noqa: E402

MIB = 1024 * 1024
CLI_TIMEOUT_S = 240


@pytest.fixture(scope="module")
def workers() -> Iterator[Workers]:
    with local_cluster() as cluster:
        yield cluster


def _doctor(root: Path, **execution: object) -> list[Check]:
    extra: dict[str, object] = {"execution.backend": "ray"}
    extra.update({f"execution.{k}": v for k, v in execution.items()})
    checks = run_doctor(daemon_config(root / "state", root / "api.sock", extra))
    assert not ray.is_initialized()  # doctor leaves the cluster it joined
    return checks


def _named(checks: list[Check], name: str) -> list[Check]:
    return [check for check in checks if check.name == name]


def _cli(config: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mlmaster_daemon", "doctor", "--config", str(config)],
        check=False, capture_output=True, text=True, timeout=CLI_TIMEOUT_S,
        cwd=cwd)


def _config_file(root: Path, address: str, extra: str = "") -> Path:
    path = root / "doctor.toml"
    path.write_text(textwrap.dedent(f"""\
        [daemon]
        state_dir = "{root / 'state'}"
        [execution]
        backend = "ray"
        ray_address = "{address}"
        """) + extra)
    return path


@pytest.mark.slow
def test_a_reachable_cluster_is_joined_and_its_live_machines_listed_with_their_resources(
        workers: Workers, short_dir: Path) -> None:
    checks = _doctor(short_dir, ray_address=workers.cluster.address,
                     ray_resources={"accel": 1})

    assert _named(checks, "ray cluster")[0].ok
    machines = _named(checks, "ray machine")
    assert len(machines) == 3 and all(check.ok for check in machines)
    accel = next(check for check in machines if workers.accel[:12] in check.detail)
    assert "CPU 1, GPU 0" in accel.detail and "accel=1" in accel.detail
    resources = _named(checks, "ray resources")[0]
    assert resources.ok and "accel=1" in resources.detail and "1 live machine" in resources.detail
    versions = _named(checks, "ray versions")
    assert len(versions) == 3 and all(check.ok for check in versions), versions
    assert all(mlmaster_daemon.__version__ in check.detail for check in versions)


@pytest.mark.slow
def test_a_join_that_ends_after_doctor_gave_up_leaves_the_cluster_at_once(
        workers: Workers, short_dir: Path) -> None:
    import threading

    from mlmaster_daemon.ray_doctor import cluster_checks

    config = daemon_config(short_dir / "state", short_dir / "api.sock", {
        "execution.backend": "ray", "execution.ray_address": workers.cluster.address})
    checks = cluster_checks(config.execution, join_timeout_s=0.001)
    assert [c.ok for c in checks] == [False] and "no answer within" in checks[0].detail
    # The join goes on in its thread; once it ends, it is left: nothing stays joined to
    # break this process's next join (a busy machine made doctor's joins outlast it).
    for thread in [t for t in threading.enumerate() if t.name == "ray doctor"]:
        thread.join(120)
        assert not thread.is_alive()
    assert not ray.is_initialized()
    again = _doctor(short_dir, ray_address=workers.cluster.address)
    assert all(c.ok for c in again if c.name.startswith("ray")), again


@pytest.mark.slow
def test_a_cluster_joined_through_ray_client_is_checked_the_same_way(
        workers: Workers, short_dir: Path) -> None:
    checks = _doctor(short_dir, ray_address=f"ray://127.0.0.1:{workers.client_port}",
                     ray_resources={"accel": 1})

    assert all(check.ok for check in checks if check.name.startswith("ray")), checks
    assert len(_named(checks, "ray machine")) == 3
    assert len(_named(checks, "ray versions")) == 3


@pytest.mark.slow
def test_asking_what_no_live_machine_has_fails_naming_the_key_to_lower(
        workers: Workers, short_dir: Path) -> None:
    checks = _doctor(short_dir, ray_address=workers.cluster.address, ray_num_cpus=2,
                     ray_resources={"a100": 1})

    resources = _named(checks, "ray resources")[0]
    assert not resources.ok
    assert "lower [execution] ray_num_cpus" in resources.detail
    assert "lower [execution] ray_resources.a100" in resources.detail


def test_an_address_where_nothing_listens_fails_at_once_saying_how_to_start_the_head(
        short_dir: Path) -> None:
    port = free_port()
    # Nothing listens on `port` now: the TCP check answers before Ray is asked.
    result = _cli(_config_file(short_dir, f"127.0.0.1:{port}"), short_dir)

    assert result.returncode == 1
    line = next(line for line in result.stdout.splitlines() if "ray cluster" in line)
    assert line.startswith("FAIL")
    assert f"ray start --head --port={port}" in line and "ray_address" in line


def test_a_port_that_answers_but_is_no_ray_head_fails_after_the_bounded_join(
        short_dir: Path) -> None:
    # A listening socket that never speaks Ray: `ray.init` would wait on it for ever, so the
    # join is given up after join_timeout_s. In a subprocess: the stuck join stays there.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]
        script = textwrap.dedent(f"""\
            from mlmaster_daemon.config import ExecutionConfig
            from mlmaster_daemon.ray_doctor import cluster_checks
            execution = ExecutionConfig(backend="ray", ray_address="127.0.0.1:{port}")
            for check in cluster_checks(execution, join_timeout_s=3):
                print(check.ok, check.name, check.detail)
            """)
        result = subprocess.run([sys.executable, "-c", script], check=False,
                                capture_output=True, text=True, timeout=CLI_TIMEOUT_S,
                                cwd=short_dir)

    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("False ray cluster no answer within 3 s")
    assert f"ray start --head --port={port}" in result.stdout


@pytest.mark.slow
def test_a_worker_with_another_mlmaster_daemon_fails_naming_it_and_both_versions(
        workers: Workers, short_dir: Path) -> None:
    # A machine where an older mlmaster-daemon is installed: its raylet's workers find that
    # one first on their path (as a site-packages of an older install would be).
    older = short_dir / "older" / "mlmaster_daemon"
    older.mkdir(parents=True)
    (older / "__init__.py").write_text('__version__ = "0.0.1"\n')
    node = workers.cluster.add_node(num_cpus=1, object_store_memory=STORE,
                                    env_vars={"PYTHONPATH": str(older.parent)})
    try:
        workers.cluster.wait_for_nodes()
        # Through the CLI, run from a folder of its own: Ray puts the driver's working
        # folder on its workers' path, and the repository's would hide the older install.
        result = _cli(_config_file(short_dir, workers.cluster.address), short_dir)
    finally:
        workers.cluster.remove_node(node)

    assert result.returncode == 1, result.stdout + result.stderr
    lines = [line for line in result.stdout.splitlines() if "ray versions" in line]
    assert len(lines) == 4, result.stdout
    wrong = [line for line in lines if line.startswith("FAIL")]
    assert len(wrong) == 1 and node.node_id[:12] in wrong[0], lines
    assert f"mlmaster-daemon 0.0.1 (this machine: {mlmaster_daemon.__version__})" in wrong[0]
    assert f"mlmaster-daemon[ray]=={mlmaster_daemon.__version__}" in wrong[0]


@pytest.mark.slow
def test_a_machine_whose_probe_gets_no_answer_is_reported_not_checked_after_the_bound(
        workers: Workers, short_dir: Path) -> None:
    # A machine whose Python workers never come up (they block at start-up, before Ray
    # runs anything in them): its probe cannot run, and doctor stops waiting for it.
    stuck = short_dir / "stuck"
    stuck.mkdir()
    (stuck / "sitecustomize.py").write_text(textwrap.dedent("""\
        import signal, sys
        if sys.argv[0].endswith("default_worker.py"):
            signal.pause()
        """))
    node = workers.cluster.add_node(num_cpus=1, object_store_memory=STORE,
                                    env_vars={"PYTHONPATH": str(stuck)})
    script = textwrap.dedent(f"""\
        from mlmaster_daemon.config import ExecutionConfig
        from mlmaster_daemon.ray_doctor import cluster_checks
        execution = ExecutionConfig(backend="ray", ray_address="{workers.cluster.address}")
        for check in cluster_checks(execution, probe_timeout_s=10):
            print(check.ok, check.name, check.detail)
        """)
    try:
        workers.cluster.wait_for_nodes()
        result = subprocess.run([sys.executable, "-c", script], check=False,
                                capture_output=True, text=True, timeout=CLI_TIMEOUT_S,
                                cwd=short_dir)
    finally:
        workers.cluster.remove_node(node)

    assert result.returncode == 0, result.stderr
    versions = [line for line in result.stdout.splitlines() if "ray versions" in line]
    assert len(versions) == 4, result.stdout
    stuck_line = next(line for line in versions if node.node_id[:12] in line)
    assert stuck_line.startswith("False") and "not checked" in stuck_line
    assert all(line.startswith("True") for line in versions if line != stuck_line)


def test_versions_compare_python_to_the_minor_version_and_ray_and_the_daemon_exactly() -> None:
    here = local_report()
    assert here.mlmaster == mlmaster_daemon.__version__ and here.ray == ray.__version__
    major, minor, *_ = here.python.split(".")

    assert compare_versions("w", here, dataclasses.replace(here, python=f"{major}.{minor}.99")).ok
    older_python = compare_versions("w", here, dataclasses.replace(
        here, python=f"{major}.{int(minor) - 1}.0"))
    assert not older_python.ok and f"on Python {major}.{minor}" in older_python.detail
    other_ray = compare_versions("w", here, dataclasses.replace(here, ray="1.0.0"))
    assert not other_ray.ok and f"Ray 1.0.0 (this machine: {ray.__version__})" in other_ray.detail
    missing = compare_versions("w", here, dataclasses.replace(
        here, mlmaster="", import_error="ModuleNotFoundError: No module named 'mlmaster_daemon'"))
    assert not missing.ok and "does not import there" in missing.detail


@pytest.mark.slow
def test_an_empty_address_starts_a_single_machine_cluster_for_the_check_and_stops_it(
        short_dir: Path) -> None:
    checks = _doctor(short_dir, ray_address="")

    cluster = _named(checks, "ray cluster")[0]
    assert cluster.ok and "starts its own single-machine cluster" in cluster.detail
    assert len(_named(checks, "ray machine")) == 1
    assert _named(checks, "ray resources")[0].ok
