"""The Ray backend on a real Ray cluster on this machine: a head that runs nothing and two
workers of one CPU each, one of them advertising `accel` (standing in for a GPU)."""

from __future__ import annotations

import _thread
import asyncio
import contextlib
import importlib.util
import os
import signal
import sys
import textwrap
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest

ray = pytest.importorskip("ray", reason="the Ray backend needs pip install 'mlmaster-daemon[ray]'")

from conftest import daemon_config, wait_terminal  # noqa: E402
from openai_server import FakeOpenAI  # noqa: E402
from ray_cluster import STORE, Workers, local_cluster  # noqa: E402

from mlmaster_daemon.api.client import Client  # noqa: E402
from mlmaster_daemon.config import Config, Settings  # noqa: E402
from mlmaster_daemon.daemon import Daemon  # noqa: E402
from mlmaster_daemon.errors import ConfigError, DaemonUnreachable  # noqa: E402
from mlmaster_daemon.execution.executor import NodeJob, NodeRun  # noqa: E402
from mlmaster_daemon.execution.lease import ProcessIdentity  # noqa: E402
from mlmaster_daemon.execution.ray_cluster import InputTooLarge, NoWorkerFits  # noqa: E402
from mlmaster_daemon.execution.ray_executor import (  # noqa: E402
    DISPATCHER,
    RayExecutor,
    namespace_for,
)
from mlmaster_daemon.execution.ray_worker import Started as WorkerStarted  # noqa: E402
from mlmaster_daemon.execution.ray_worker import WorkerJob, run_node, worker_root  # noqa: E402
from mlmaster_daemon.execution.workspace import Workspace, remove_tree  # noqa: E402
from mlmaster_daemon.tasks.competition import load_task  # noqa: E402
from mlmaster_daemon.tasks.spec import TaskSpec  # noqa: E402

MIB = 1024 * 1024
WAIT_S = 180


@pytest.fixture(scope="module")
def workers() -> Iterator[Workers]:
    with local_cluster() as cluster:
        ray.init(address=cluster.cluster.address, log_to_driver=False)
        try:
            yield cluster
        finally:
            ray.shutdown()


@pytest.fixture(scope="module")
def spec(breast_cancer: Path) -> TaskSpec:
    return load_task(breast_cancer)


def _config(root: Path, **execution: object) -> Config:
    extra: dict[str, object] = {"execution.backend": "ray", "execution.kill_grace_s": 0.5}
    extra.update({f"execution.{k}": v for k, v in execution.items()})
    return daemon_config(root / "state", root / "api.sock", extra)


@dataclass
class Journal:
    """What the executor told the crash journal."""

    started: asyncio.Event
    identities: list[ProcessIdentity]
    slots: list[str]


def _journal() -> Journal:
    return Journal(asyncio.Event(), [], [])


async def _run(executor: RayExecutor, spec: TaskSpec, ws: Workspace, journal: Journal,
               timeout_s: float = 120, node_id: int = 1) -> NodeRun:
    async def started(identity: ProcessIdentity, slot: str) -> None:
        journal.identities.append(identity)
        journal.slots.append(slot)
        journal.started.set()

    job = NodeJob("t1", node_id, spec, ws, lambda: timeout_s)
    run = await executor.run(job, started, lambda: True)
    assert run is not None
    return run


def _workspace(root: Path, spec: TaskSpec, code: str, name: str = "n1") -> Workspace:
    return Workspace.create(root / name, spec.public_dir, textwrap.dedent(code))


def _gone(identity: ProcessIdentity) -> bool:
    """Whether the script's process has ended (waited for, bounded)."""
    try:
        psutil.Process(identity.pid).wait(timeout=60)
    except psutil.NoSuchProcess:
        return True
    except psutil.TimeoutExpired:
        return False
    return True


@pytest.mark.slow
async def test_a_task_runs_to_the_end_through_a_daemon_with_nodes_on_both_workers(
        workers: Workers, short_dir: Path, breast_cancer: Path) -> None:
    daemon = Daemon(_config(short_dir))
    await daemon.start()
    try:
        async with Client(daemon.socket_path) as client:
            task = await client.submit({"task_dir": str(breast_cancer), "steps": 4})
            final = await wait_terminal(client, task["id"], WAIT_S)
            nodes = [await client.node(task["id"], n["id"])
                     for n in await client.nodes(task["id"])]
            slots = await client.request("GET", "/v1/slots")
    finally:
        await daemon.stop()
    # It joined a cluster it did not start: the cluster stays up.
    assert ray.is_initialized()
    assert final["state"] == "finished"
    assert final["best"] and Path(final["best"]["submission_path"]).exists()
    ran_on = {node["slot"].rsplit(":", 1)[1] for node in nodes if node.get("slot")}
    assert ran_on == {workers.plain[:12], workers.accel[:12]}
    assert slots["mode"] == "ray"
    accel = next(n for n in slots["nodes"] if n["node_id"] == workers.accel)
    assert accel["total"]["accel"] == 1 and "CPU" in accel["free"]


@pytest.mark.slow
async def test_a_node_that_needs_the_custom_resource_runs_only_on_that_worker(
        workers: Workers, short_dir: Path, spec: TaskSpec) -> None:
    config = _config(short_dir, ray_resources="accel=1")
    executor = RayExecutor(Settings(config), config.state_dir())
    journal = _journal()
    for node in (1, 2, 3):
        ws = _workspace(short_dir, spec, "print('hi')", f"n{node}")
        run = await _run(executor, spec, ws, journal, node_id=node)
        assert run.result.exit_code == 0
    assert {slot.rsplit(":", 1)[1] for slot in journal.slots} == {workers.accel[:12]}


@pytest.mark.slow
async def test_a_tasks_own_resources_decide_where_its_nodes_run(
        workers: Workers, short_dir: Path, spec: TaskSpec) -> None:
    import dataclasses

    config = _config(short_dir)  # the config asks one CPU and nothing else
    executor = RayExecutor(Settings(config), config.state_dir())
    journal = _journal()
    # task.toml's [resources] custom = {accel = 1}
    accel = dataclasses.replace(spec, resources={"custom": {"accel": 1}})
    for node in (1, 2):
        ws = _workspace(short_dir, accel, "print('hi')", f"n{node}")
        run = await _run(executor, accel, ws, journal, node_id=node)
        assert run.result.exit_code == 0
    assert {slot.rsplit(":", 1)[1] for slot in journal.slots} == {workers.accel[:12]}
    tpu = dataclasses.replace(spec, resources={"num_cpus": 1, "custom": {"tpu": 2}})
    ws = _workspace(short_dir, tpu, "print('never')", "n3")
    with pytest.raises(NoWorkerFits, match=r"offers CPU=1, tpu=2"):
        await _run(executor, tpu, ws, _journal(), node_id=3)


@pytest.mark.slow
async def test_a_task_folders_resources_place_its_nodes_and_reach_its_prompts(
        workers: Workers, short_dir: Path, breast_cancer: Path) -> None:
    import shutil

    folder = short_dir / "accel_task"
    shutil.copytree(breast_cancer, folder)
    (folder / "task.toml").chmod(0o644)
    with (folder / "task.toml").open("a") as toml:
        toml.write("\n[resources]\nnum_cpus = 1\ncustom = {accel = 1}\n")
    server = await FakeOpenAI(code=ENDS).start()
    # The config asks half a CPU; the task asks a whole one and the accel worker.
    config = daemon_config(short_dir / "state", short_dir / "api.sock", {
        "execution.backend": "ray", "execution.ray_num_cpus": 0.5,
        "llm.code": {"base_url": server.base_url, "model": "fake"}})
    daemon = Daemon(config)
    await daemon.start()
    try:
        async with Client(daemon.socket_path) as client:
            task = await client.submit({"task_dir": str(folder), "steps": 2})
            final = await wait_terminal(client, task["id"], WAIT_S)
            nodes = [await client.node(task["id"], n["id"])
                     for n in await client.nodes(task["id"])]
    finally:
        await daemon.stop()
        await server.stop()
    assert final["state"] == "finished"
    assert {n["slot"].rsplit(":", 1)[1] for n in nodes} == {workers.accel[:12]}
    prompts = [m["content"] for r in server.requests for m in r["messages"]
               if r["messages"][0]["content"] != "ping"]
    assert any("CPU only: 1 CPU cores, no GPU (on a Ray worker)" in p for p in prompts)
    assert not any("0.5 CPU cores" in p for p in prompts)


@pytest.mark.slow
async def test_cancel_stops_a_running_node(workers: Workers, short_dir: Path,
                                           spec: TaskSpec) -> None:
    config = _config(short_dir)
    executor = RayExecutor(Settings(config), config.state_dir())
    journal = _journal()
    ws = _workspace(short_dir, spec, "import signal\nwhile True:\n    signal.pause()\n")
    running = asyncio.create_task(_run(executor, spec, ws, journal))
    async with asyncio.timeout(WAIT_S):
        await journal.started.wait()
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    assert _gone(journal.identities[0])


# Writes working/ready once it handles SIGTERM, and the signal's name to working/stopped.
SIGNAL_PROOF = """
    import signal, sys
    def stop(signum, frame):
        open("working/stopped", "w").write(signal.Signals(signum).name)
        sys.exit(0)
    signal.signal(signal.SIGTERM, stop)
    open("working/ready", "w").close()
    while True:
        signal.pause()
    """


@pytest.mark.slow
async def test_cancel_gives_the_script_its_sigterm_and_grace_as_a_local_run_does(
        workers: Workers, short_dir: Path, spec: TaskSpec) -> None:
    config = _config(short_dir, kill_grace_s=30)
    executor = RayExecutor(Settings(config), config.state_dir())
    journal = _journal()
    ws = _workspace(short_dir, spec, SIGNAL_PROOF)
    running = asyncio.create_task(_run(executor, spec, ws, journal))
    async with asyncio.timeout(WAIT_S):
        await journal.started.wait()
        while not (ws.root / "working" / "ready").exists():
            await asyncio.sleep(0.05)
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    # Ray ends the caller's side of a cancelled stream at once (ray-project/ray#44197), so the
    # cancel can return while the worker is still stopping the script: wait for the proof.
    stopped = ws.root / "working" / "stopped"
    async with asyncio.timeout(WAIT_S):
        while not stopped.exists() or not _gone(journal.identities[0]):
            await asyncio.sleep(0.05)
    assert stopped.read_text() == "SIGTERM"


@pytest.mark.slow
def test_a_run_ray_drops_at_its_yield_still_stops_its_script(
        workers: Workers, short_dir: Path, spec: TaskSpec) -> None:
    """Ray's cancel can land while Ray reports the Started item, outside the task's frame:
    Ray then drops the generator, which closes at its yield. The script gets its SIGTERM and
    grace all the same, and is gone once the generator has closed."""
    ws, job = _signal_proof_job(short_dir, spec, timeout_s=120)
    run = run_node(job, [])
    started = next(run)
    assert isinstance(started, WorkerStarted)
    _wait_for(ws.root / "working" / "ready")
    run.close()
    assert (ws.root / "working" / "stopped").read_text() == "SIGTERM"
    assert _gone(started.identity)


@pytest.mark.slow
def test_a_worker_started_with_sigint_ignored_still_hears_a_cancel(
        workers: Workers, short_dir: Path, spec: TaskSpec) -> None:
    """Ray's cancel comes through Python's SIGINT handling. A raylet started as a background
    job of a script (`ray start ... &`) has SIGINT ignored, and so have its workers: the run
    must still hear the cancel and stop its script with SIGTERM and the grace, not run on
    until its time limit (30 s here)."""
    ws, job = _signal_proof_job(short_dir, spec, timeout_s=30)
    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        run = run_node(job, [])
        started = next(run)
        assert isinstance(started, WorkerStarted)
        _wait_for(ws.root / "working" / "ready")
        # As Ray's cancel does, from another thread, while the run waits on its script.
        threading.Timer(0.5, _thread.interrupt_main).start()
        with pytest.raises(StopIteration):
            next(run)  # Cancelled: nothing more comes (a time limit would yield Finished).
    finally:
        signal.signal(signal.SIGINT, before)
    assert (ws.root / "working" / "stopped").read_text() == "SIGTERM"
    assert _gone(started.identity)


def _signal_proof_job(short_dir: Path, spec: TaskSpec,
                      timeout_s: float) -> tuple[Workspace, WorkerJob]:
    """SIGNAL_PROOF's workspace, and its job as a worker gets it (a 30 s kill grace)."""
    config = _config(short_dir, kill_grace_s=30)
    ws = _workspace(short_dir, spec, SIGNAL_PROOF)
    return ws, WorkerJob(task_id="t1", node_id=1, execution=config.execution,
                         timeout_s=timeout_s, gpu=False, public_dir=str(spec.public_dir),
                         workspace=str(ws.root))


def _wait_for(path: Path) -> None:
    """Until the script has written `path` (bounded)."""
    deadline = time.monotonic() + WAIT_S
    while not path.exists():
        assert time.monotonic() < deadline, f"the script never wrote {path.name}"
        time.sleep(0.05)


@pytest.mark.slow
async def test_a_timeout_kills_a_script_that_ignores_sigterm(workers: Workers, short_dir: Path,
                                                             spec: TaskSpec) -> None:
    config = _config(short_dir)
    executor = RayExecutor(Settings(config), config.state_dir())
    journal = _journal()
    ws = _workspace(short_dir, spec, """
        import signal, subprocess, sys, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        subprocess.Popen([sys.executable, "-c",
                          "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                          "time.sleep(10**6)"])
        while True:
            signal.pause()
        """)
    run = await _run(executor, spec, ws, journal, timeout_s=3)
    assert run.result.timed_out and run.result.exit_code is None
    assert "time limit" in (run.result.reason or "")
    assert _gone(journal.identities[0])


def _lose_machine(node: Any, script: ProcessIdentity) -> None:
    """The machine a script runs on dies: its raylet and the Ray worker running the script
    (the script's parent). A worker notices on its own that its raylet is gone, but on a
    loaded machine a run of this file saw one go on until the script's time limit."""
    worker = psutil.Process(script.pid).parent()
    assert worker is not None
    node.kill_raylet()
    with contextlib.suppress(psutil.NoSuchProcess):
        worker.kill()


@pytest.fixture
async def doomed_worker(workers: Workers) -> AsyncIterator[Any]:
    """A third worker, the only one with `doomed`, for a test to kill."""
    node = workers.cluster.add_node(num_cpus=1, resources={"doomed": 1},
                                    object_store_memory=STORE)
    workers.cluster.wait_for_nodes()
    try:
        yield node
    finally:
        workers.cluster.remove_node(node, allow_graceful=False)


@pytest.mark.slow
async def test_killing_a_workers_raylet_fails_its_node_clearly(
        doomed_worker: Any, short_dir: Path, spec: TaskSpec) -> None:
    config = _config(short_dir, ray_resources="doomed=1")
    executor = RayExecutor(Settings(config), config.state_dir())
    journal = _journal()
    ws = _workspace(short_dir, spec, "import signal\nwhile True:\n    signal.pause()\n")
    running = asyncio.create_task(_run(executor, spec, ws, journal))
    async with asyncio.timeout(WAIT_S):
        await journal.started.wait()
    _lose_machine(doomed_worker, journal.identities[0])
    async with asyncio.timeout(WAIT_S):
        run = await running
    assert run.result.exit_code is None and not run.result.timed_out
    assert run.result.reason == f"worker lost: {doomed_worker.node_ip_address}"
    assert _gone(journal.identities[0])


@pytest.mark.slow
async def test_without_a_shared_filesystem_the_outputs_come_back_into_the_workspace(
        workers: Workers, short_dir: Path, spec: TaskSpec) -> None:
    config = _config(short_dir, ray_shared_fs=False)
    executor = RayExecutor(Settings(config), config.state_dir())
    ws = _workspace(short_dir, spec, f"""
        import json, os
        rows = open("input/{spec.train_file}").read().count("\\n")
        print("rows", rows)
        os.symlink("/etc/passwd", "submission/leak.csv")
        open("submission/submission.csv", "w").write("id,target\\n1,0\\n")
        json.dump({{"rows": rows}}, open("metrics.json", "w"))
        try:
            open("input/new.csv", "w")
        except OSError:
            print("input is read-only")
        """)
    try:
        run = await _run(executor, spec, ws, _journal())
    finally:
        remove_tree(worker_root("t1"))  # all workers are this machine here
    assert run.result.exit_code == 0, ws.stderr.read_text()
    assert ws.submission.read_text() == "id,target\n1,0\n"
    assert '"rows"' in ws.metrics.read_text()
    stdout = ws.stdout.read_text()
    assert "rows " in stdout and "input is read-only" in stdout
    assert not (ws.root / "submission" / "leak.csv").exists()
    assert not (ws.root / "submission" / "leak.csv").is_symlink()


@pytest.mark.slow
async def test_without_a_shared_filesystem_an_ended_tasks_input_leaves_the_workers(
        workers: Workers, short_dir: Path, breast_cancer: Path) -> None:
    daemon = Daemon(_config(short_dir, ray_shared_fs=False))
    await daemon.start()
    try:
        async with Client(daemon.socket_path) as client:
            task = await client.submit({"task_dir": str(breast_cancer), "steps": 2})
            final = await wait_terminal(client, task["id"], WAIT_S)
            nodes = await client.nodes(task["id"])
            folder = worker_root(task["id"])  # every worker is this machine here
            async with asyncio.timeout(WAIT_S):
                while folder.exists():
                    await asyncio.sleep(0.1)
    finally:
        await daemon.stop()
    assert final["state"] == "finished" and final["best"] is not None
    assert {n["status"] for n in nodes} == {"done"}


async def test_without_a_shared_filesystem_an_input_too_big_for_the_object_store_is_refused(
        workers: Workers, short_dir: Path, breast_cancer: Path) -> None:
    import shutil

    folder = short_dir / "big_task"
    shutil.copytree(breast_cancer, folder)
    public = load_task(folder).public_dir
    public.chmod(0o755)
    # 50 MiB (sparse) against workers' 80 MiB object stores: over the half that may travel.
    with (public / "images.bin").open("wb") as handle:
        handle.truncate(50 * MIB)
    spec = load_task(folder)
    config = _config(short_dir, ray_shared_fs=False)
    executor = RayExecutor(Settings(config), config.state_dir())
    ws = _workspace(short_dir, spec, "print('never')")
    with pytest.raises(InputTooLarge, match=r"input is 5\d MiB.*ray_shared_fs = true"):
        await _run(executor, spec, ws, _journal())


async def test_a_node_no_worker_can_take_fails_at_once_saying_what_to_change(
        workers: Workers, short_dir: Path, spec: TaskSpec) -> None:
    config = _config(short_dir, ray_resources="tpu=1")
    executor = RayExecutor(Settings(config), config.state_dir())
    ws = _workspace(short_dir, spec, "print('never')")
    with pytest.raises(NoWorkerFits, match=r"no live Ray worker offers CPU=1, tpu=1: lower"):
        await _run(executor, spec, ws, _journal())


@pytest.fixture
async def two_doomed_workers(workers: Workers) -> AsyncIterator[list[Any]]:
    """Two more workers, the only ones with `doomed`: a test kills one of them."""
    nodes = [workers.cluster.add_node(num_cpus=1, resources={"doomed": 1},
                                      object_store_memory=STORE) for _ in range(2)]
    workers.cluster.wait_for_nodes()
    try:
        yield nodes
    finally:
        for node in nodes:
            workers.cluster.remove_node(node, allow_graceful=False)


@pytest.mark.slow
async def test_a_node_whose_worker_is_lost_runs_again_once_elsewhere_when_configured(
        two_doomed_workers: list[Any], short_dir: Path, spec: TaskSpec) -> None:
    config = _config(short_dir, ray_resources="doomed=1", ray_worker_lost="retry")
    executor = RayExecutor(Settings(config), config.state_dir())
    journal = _journal()
    # The first run waits to be killed; the second, in the same (shared) workspace, ends.
    ws = _workspace(short_dir, spec, """
        import os, signal
        if os.path.exists("working/first"):
            print("second run")
        else:
            open("working/first", "w").close()
            while True:
                signal.pause()
        """)
    running = asyncio.create_task(_run(executor, spec, ws, journal))
    async with asyncio.timeout(WAIT_S):
        await journal.started.wait()
        # The machine dies once the first run has left its mark (it starts before it does).
        while not (ws.root / "working" / "first").exists():
            await asyncio.sleep(0.05)
    first = journal.slots[0].rsplit(":", 1)[1]
    doomed = next(n for n in two_doomed_workers if n.node_id.startswith(first))
    _lose_machine(doomed, journal.identities[0])
    async with asyncio.timeout(WAIT_S):
        run = await running
    assert run.result.exit_code == 0
    assert "second run" in ws.stdout.read_text()
    assert len(journal.slots) == 2 and first not in journal.slots[1]


# Waits on its first run until it is killed (its workspace keeps the marker); a re-run ends.
WAITS_ONCE = """import json, os, shutil, signal
first = not os.path.exists("working/started")
open("working/started", "w").close()
while first:
    signal.pause()
shutil.copyfile("input/sample_submission.csv", "submission/submission.csv")
json.dump({"validation_metric": 0.6}, open("metrics.json", "w"))
"""


async def _start_process(short_dir: Path, server: FakeOpenAI,
                         address: str) -> asyncio.subprocess.Process:
    config = short_dir / "c.toml"
    config.write_text(
        f'[daemon]\nstate_dir = "{short_dir / "state"}"\nsocket = "{short_dir / "d.sock"}"\n'
        f'[execution]\nbackend = "ray"\nray_address = "{address}"\n'
        f'[llm.code]\nbase_url = "{server.base_url}"\nmodel = "fake"\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLMASTER_")}
    log = (short_dir / "daemon.log").open("ab")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mlmaster_daemon", "daemon", "--config", str(config),
        stdout=log, stderr=log, env=env)
    async with asyncio.timeout(WAIT_S), Client(short_dir / "d.sock") as client:
        while True:
            assert proc.returncode is None, (short_dir / "daemon.log").read_text()
            try:
                await client.health()
                return proc
            except DaemonUnreachable:
                await asyncio.sleep(0.1)


# Counts its runs, then waits for the test's go (a file in its workspace) and ends.
WAITS_FOR_GO = """import json, os, select, shutil
with open("working/runs", "a") as runs:
    runs.write("run\\n")
while not os.path.exists("working/go"):
    select.select([], [], [], 0.1)
shutil.copyfile("input/sample_submission.csv", "submission/submission.csv")
json.dump({"validation_metric": 0.6}, open("metrics.json", "w"))
"""


async def _kill_while_running(short_dir: Path, server: FakeOpenAI, address: str,
                              breast_cancer: Path, marker: str) -> tuple[str, dict[str, Any]]:
    """A daemon process that runs one node on the cluster, SIGKILLed once the script has
    begun (it wrote `marker`; the workspace is the same on every worker here)."""
    first = await _start_process(short_dir, server, address)
    async with Client(short_dir / "d.sock") as client:
        task = await client.submit({"task_dir": str(breast_cancer), "steps": 1})
        async with asyncio.timeout(WAIT_S):
            while not [n for n in await client.nodes(task["id"]) if n["status"] == "running"]:
                await asyncio.sleep(0.1)
        node = await client.node(task["id"], 1)
    async with asyncio.timeout(WAIT_S):
        while not (Path(node["workspace"]) / "working" / marker).exists():
            await asyncio.sleep(0.1)
    first.send_signal(signal.SIGKILL)
    await first.wait()
    assert node["slot"].startswith("ray:")
    return str(task["id"]), node


async def _restart_and_finish(short_dir: Path, server: FakeOpenAI, address: str, task_id: str,
                              go: Path | None = None) -> tuple[dict[str, Any], list[Any]]:
    second = await _start_process(short_dir, server, address)
    try:
        async with Client(short_dir / "d.sock") as client:
            if go is not None:
                async with asyncio.timeout(WAIT_S):
                    # Re-attached: the node is running again, on the same script.
                    while (await client.node(task_id, 1))["status"] != "running":
                        await asyncio.sleep(0.1)
                go.touch()
            try:
                final = await wait_terminal(client, task_id, WAIT_S)
            except TimeoutError:
                pytest.fail((short_dir / "daemon.log").read_text()[-6000:])
            nodes = [await client.node(task_id, n["id"]) for n in await client.nodes(task_id)]
    finally:
        second.send_signal(signal.SIGTERM)
        await second.wait()
    # A clean stop, though Ray's driver takes SIGTERM for itself.
    assert second.returncode == 0, (short_dir / "daemon.log").read_text()[-3000:]
    return final, nodes


def _generations(server: FakeOpenAI) -> int:
    return len([r for r in server.requests if r["messages"][0]["content"] != "ping"])


@pytest.mark.slow
async def test_a_daemon_killed_while_a_node_runs_on_ray_re_attaches_to_it_after_restart(
        workers: Workers, short_dir: Path, breast_cancer: Path) -> None:
    server = await FakeOpenAI(code=WAITS_FOR_GO).start()
    try:
        task_id, node = await _kill_while_running(
            short_dir, server, workers.cluster.address, breast_cancer, "runs")
        # The script outlives the daemon: its actor is detached on a cluster it did not start.
        script = psutil.Process(node["pid"])
        assert script.is_running()
        working = Path(node["workspace"]) / "working"
        final, nodes = await _restart_and_finish(short_dir, server, workers.cluster.address,
                                                 task_id, go=working / "go")
    finally:
        await server.stop()
    assert final["state"] == "finished" and final["best"] is not None
    assert [n["status"] for n in nodes] == ["done"]
    # One run of the script, taken over by the restarted daemon; one answer paid for.
    assert (working / "runs").read_text() == "run\n"
    assert nodes[0]["pid"] == node["pid"]
    assert _gone(ProcessIdentity(node["pid"], 0.0, ""))
    assert _generations(server) == 1
    # The daemon's dispatcher outlived both daemons and holds no run now.
    dispatcher = ray.get_actor(DISPATCHER, namespace=namespace_for(short_dir / "state"))
    assert ray.get(dispatcher.keys.remote()) == []


@pytest.mark.slow
async def test_a_node_whose_run_is_gone_after_a_daemon_crash_runs_its_saved_code_again(
        workers: Workers, short_dir: Path, breast_cancer: Path) -> None:
    server = await FakeOpenAI(code=WAITS_ONCE).start()
    try:
        task_id, node = await _kill_while_running(
            short_dir, server, workers.cluster.address, breast_cancer, "started")
        state_dir = short_dir / "state"
        # The runs are lost while the daemon is down: the dispatcher that owned them is gone
        # (its machine restarted, an operator...), and its tasks with it.
        ray.kill(ray.get_actor(DISPATCHER, namespace=namespace_for(state_dir)))
        assert _gone(ProcessIdentity(node["pid"], 0.0, ""))
        final, nodes = await _restart_and_finish(short_dir, server, workers.cluster.address,
                                                 task_id)
    finally:
        await server.stop()
    assert final["state"] == "finished" and final["best"] is not None
    assert [n["status"] for n in nodes] == ["done"]
    assert nodes[0]["pid"] != node["pid"]
    assert _generations(server) == 1


@pytest.mark.slow
async def test_slots_and_metrics_show_what_runs_where_on_the_cluster(
        workers: Workers, short_dir: Path, breast_cancer: Path) -> None:
    from test_metrics_endpoint import free_port, scrape

    from mlmaster_daemon.watch_state import WatchState, apply_slots

    server = await FakeOpenAI(code=WAITS_FOR_GO).start()
    port = free_port()
    config = daemon_config(short_dir / "state", short_dir / "api.sock", {
        "execution.backend": "ray", "metrics.port": port,
        "llm.code": {"base_url": server.base_url, "model": "fake"}})
    daemon = Daemon(config)
    await daemon.start()
    try:
        async with Client(daemon.socket_path) as client:
            task = await client.submit({"task_dir": str(breast_cancer), "steps": 1})
            async with asyncio.timeout(WAIT_S):
                while not [n for n in await client.nodes(task["id"])
                           if n["status"] == "running"]:
                    await asyncio.sleep(0.1)
            node = await client.node(task["id"], 1)
            machine = node["slot"].rsplit(":", 1)[1]
            # The cluster's free figures follow the workers' reports; the busy machine's one
            # CPU shows as 0 free (Ray itself leaves a resource out while all of it is taken).
            async with asyncio.timeout(WAIT_S):
                while True:
                    slots = await client.request("GET", "/v1/slots")
                    busy = next(n for n in slots["nodes"] if n["node_id"][:12] == machine)
                    if busy["free"].get("CPU") == 0.0:
                        break
                    await asyncio.sleep(0.1)
            _text, families = await scrape(port)
            (Path(node["workspace"]) / "working" / "go").touch()
            final = await wait_terminal(client, task["id"], WAIT_S)
            after = await client.request("GET", "/v1/slots")
    finally:
        await daemon.stop()
        await server.stop()
    assert final["state"] == "finished"
    assert busy["total"]["CPU"] == 1.0 and set(busy["free"]) == set(busy["total"])
    running = {n["node_id"][:12]: n["running"] for n in slots["nodes"]}
    assert running.pop(machine) == [f"{task['id']}/1"]
    assert machine in (workers.plain[:12], workers.accel[:12])
    assert not any(running.values())
    # Two one-CPU workers, a node asks one CPU: two slots, one busy (the head runs nothing).
    assert [(r["busy"], r["holder"]) for r in slots["slots"]] == [
        (True, f"{task['id']}/1"), (False, None)]
    watch = WatchState(task_id=task["id"])
    apply_slots(watch, slots)
    assert (watch.slots_total, watch.slots_busy, watch.slots_ours) == (2, 1, 1)
    assert families["mlmaster_slots"].samples[0].value == 2
    assert families["mlmaster_slots_busy"].samples[0].value == 1
    assert [r["busy"] for r in after["slots"]] == [False, False]


ENDS = """import json, shutil
shutil.copyfile("input/sample_submission.csv", "submission/submission.csv")
json.dump({"validation_metric": 0.6}, open("metrics.json", "w"))
"""


@pytest.mark.slow
async def test_a_daemon_outside_the_cluster_runs_its_nodes_through_ray_client(
        workers: Workers, short_dir: Path, breast_cancer: Path) -> None:
    server = await FakeOpenAI(code=ENDS).start()
    address = f"ray://127.0.0.1:{workers.client_port}"
    try:
        daemon = await _start_process(short_dir, server, address)
        try:
            async with Client(short_dir / "d.sock") as client:
                task = await client.submit({"task_dir": str(breast_cancer), "steps": 2})
                final = await wait_terminal(client, task["id"], WAIT_S)
                nodes = [await client.node(task["id"], n["id"])
                         for n in await client.nodes(task["id"])]
                slots = await client.request("GET", "/v1/slots")
        finally:
            daemon.send_signal(signal.SIGTERM)
            await daemon.wait()
    finally:
        await server.stop()
    assert daemon.returncode == 0, (short_dir / "daemon.log").read_text()[-3000:]
    assert final["state"] == "finished" and final["best"] is not None
    assert [n["status"] for n in nodes] == ["done", "done"]
    assert all(n["slot"].startswith("ray:") for n in nodes)
    assert {n["node_id"] for n in slots["nodes"]} >= {workers.plain, workers.accel}


@pytest.mark.slow
async def test_a_node_asking_half_a_gpu_sees_its_gpu_in_the_sandbox(
        workers: Workers, short_dir: Path, spec: TaskSpec) -> None:
    if not ray.cluster_resources().get("GPU"):
        pytest.skip("no GPU in this cluster: runs on a GPU machine")
    config = _config(short_dir, ray_num_gpus=0.5)
    executor = RayExecutor(Settings(config), config.state_dir())
    ws = _workspace(short_dir, spec, """
        import os, subprocess
        print("visible", os.environ["CUDA_VISIBLE_DEVICES"])
        print(subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True).stdout)
        """)
    run = await _run(executor, spec, ws, _journal())
    assert run.result.exit_code == 0, ws.stderr.read_text()
    assert "GPU " in ws.stdout.read_text()
    # Metered with NVML on its worker, as a local GPU slot is.
    assert run.gpu_peak_mb is not None and run.gpu_seconds is not None


# A daemon of its own process (this one is already a driver of the module's cluster).
STARTS_ITS_OWN = """
import asyncio, sys
import psutil, ray
from conftest import daemon_config
from mlmaster_daemon.daemon import Daemon

async def main(root):
    config = daemon_config(root / "state", root / "api.sock",
                           {"execution.backend": "ray", "execution.ray_address": ""})
    daemon = Daemon(config)
    await daemon.start()
    try:
        nodes = (await daemon.slots_status())["nodes"]
        assert len(nodes) == 1 and nodes[0]["alive"], nodes
        assert ray.is_initialized()
    finally:
        await daemon.stop()
    assert not ray.is_initialized()
    left = [p.name() for p in psutil.Process().children(recursive=True)]
    assert not [n for n in left if "raylet" in n or "gcs_server" in n], left
    print("stopped its cluster")

import pathlib
asyncio.run(main(pathlib.Path(sys.argv[1])))
"""


@pytest.mark.slow
async def test_a_daemon_that_started_its_own_cluster_stops_it(short_dir: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", STARTS_ITS_OWN, str(short_dir),
        cwd=Path(__file__).parent, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT)
    async with asyncio.timeout(WAIT_S):
        out, _ = await proc.communicate()
    assert proc.returncode == 0 and b"stopped its cluster" in out, out.decode()[-4000:]


def test_backend_ray_without_ray_installed_says_what_to_install(
        monkeypatch: pytest.MonkeyPatch, short_dir: Path) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, package=None: None)
    with pytest.raises(ConfigError, match=r"pip install 'mlmaster-daemon\[ray\]'"):
        _config(short_dir)


@pytest.mark.parametrize(("key", "value", "says"), [
    ("ray_address", "http://head:8265", "ray://HOST:PORT"),
    ("ray_resources", "GPU=1", "ray_num_gpus"),
    ("ray_resources", "accel", "name=amount"),
    ("ray_num_gpus", 1.5, "a fraction of one GPU"),
    ("ray_worker_lost", "ignore", "fail"),
])
def test_a_bad_ray_key_is_refused_saying_what_to_write(
        short_dir: Path, key: str, value: object, says: str) -> None:
    with pytest.raises(ConfigError, match=f"execution.{key}.*{says}"):
        _config(short_dir, **{key: value})


def test_ray_keys_from_the_environment(short_dir: Path) -> None:
    from mlmaster_daemon.config import load_config

    config = load_config(None, environ={
        "MLMASTER_EXECUTION__BACKEND": "ray", "MLMASTER_EXECUTION__RAY_ADDRESS": "ray://head:10001",
        "MLMASTER_EXECUTION__RAY_RESOURCES": "a100=1,fast_disk=0.5",
        "MLMASTER_EXECUTION__RAY_SHARED_FS": "false"})
    assert config.execution.ray_address == "ray://head:10001"
    assert config.execution.ray_resources == {"a100": 1.0, "fast_disk": 0.5}
    assert config.execution.ray_shared_fs is False
