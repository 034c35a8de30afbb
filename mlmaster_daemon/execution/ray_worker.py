"""What runs on a Ray worker for one node: the same runner as locally (`run_script`: sandbox,
job limits, a time limit that kills the whole process tree, `input/` read-only), streamed
back as two items: `Started` once the script's process exists, then `Finished`. The daemon's
`Dispatcher` actor submits it and holds its items (see `ray_dispatcher.py`).

Without a shared filesystem the task's public folder arrives once per task as a tar in Ray's
object store and is unpacked once per worker machine; the node's code comes with the job; the
workspace lives in the worker's temp folder, and the logs, metrics.json and submission/ go
back with `Finished`, read bounded and never through a link (the job wrote them)."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import os
import signal
import tarfile
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlmaster_daemon import untrusted
from mlmaster_daemon.config import ExecutionConfig
from mlmaster_daemon.execution.executor import collect_descendants
from mlmaster_daemon.execution.gpu import GpuProbe, open_probe
from mlmaster_daemon.execution.lease import JobLimits, Lease, ProcessIdentity
from mlmaster_daemon.execution.limits import Machine, job_limits
from mlmaster_daemon.execution.runner import RunResult, run_script
from mlmaster_daemon.execution.slots import GpuSampler
from mlmaster_daemon.execution.workspace import Workspace, remove_tree

# What comes back from a worker without a shared filesystem: logs' tails, a metrics file,
# and the submission folder (files past these sizes stay behind, and stderr says so).
LOG_TAIL_BYTES = 1024 * 1024
METRICS_MAX_BYTES = 64 * 1024
SUBMISSION_MAX_BYTES = 512 * 1024 * 1024
MIB = 1024 * 1024


@dataclass(frozen=True)
class WorkerJob:
    """One node's run as a worker gets it. `workspace` is set on a shared filesystem; `code`
    (and the input archive beside the job) otherwise."""

    task_id: str
    node_id: int
    execution: ExecutionConfig
    timeout_s: float
    gpu: bool
    public_dir: str = ""
    workspace: str = ""
    code: str = ""
    hidden_paths: tuple[str, ...] = ()
    readable_paths: tuple[str, ...] = ()


@dataclass(frozen=True)
class Started:
    """The script's process, and where it runs."""

    identity: ProcessIdentity
    node_ip: str
    ray_node_id: str


@dataclass(frozen=True)
class Finished:
    result: RunResult
    # Relative path -> bytes, without a shared filesystem: what the run left to bring back.
    outputs: dict[str, bytes] = field(default_factory=dict)
    # The script's GPU use (NVML on its worker), when it had a GPU.
    gpu_peak_mb: int | None = None
    gpu_seconds: float | None = None


def pack_public_dir(public_dir: Path) -> bytes:
    """The task's public folder as an uncompressed tar (folders and regular files only: a
    link in a task's data is not followed)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        archive.add(public_dir, arcname=".", recursive=True,
                    filter=lambda info: info if info.isfile() or info.isdir() else None)
    return buffer.getvalue()


def input_size(public_dir: Path) -> int:
    """Bytes of the regular files below the task's public folder (links are not followed,
    as `pack_public_dir` does not follow them). Blocking."""
    return sum(os.lstat(public_dir / relative).st_size
               for relative in _regular_files(public_dir, "."))


def worker_root(task_id: str) -> Path:
    """A task's folder on a worker without a shared filesystem: its input, nodes' workspaces."""
    return Path(tempfile.gettempdir()) / f"mlmaster-ray-{os.getuid()}" / task_id


def remove_task_folder(task_id: str) -> None:
    """On one worker: the task's folder (its input, what its nodes left) goes."""
    remove_tree(worker_root(task_id))


def unpacked_input(task_id: str, archive_ref: Any) -> Path:
    """The task's public folder on this machine, unpacked once per archive put (a daemon's
    restart puts it anew; concurrent jobs race to rename their copy into place, the loser's
    copy goes)."""
    import ray  # only on a worker, where Ray is there

    target = worker_root(task_id) / f"input-{archive_ref.hex()[:16]}"
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix="input-", dir=target.parent))
    with tarfile.open(fileobj=io.BytesIO(ray.get(archive_ref)), mode="r") as archive:
        archive.extractall(staging, filter="data")
    try:
        os.rename(staging, target)
    except OSError:
        remove_tree(staging)
    return target


def _lease(job: WorkerJob, ray_node_id: str) -> Lease | None:
    if not job.gpu:
        return None
    import ray

    # Ray sets CUDA_VISIBLE_DEVICES for the worker: the job sees the same GPUs.
    gpus = ",".join(str(g) for g in ray.get_gpu_ids())
    return Lease(f"ray:{ray_node_id[:12]}", job.task_id, (), gpu_uuid=gpus or None)


def _limits(job: WorkerJob, ws: Workspace) -> JobLimits:
    execution = job.execution
    slots = max(1, int((os.cpu_count() or 1) // execution.ray_num_cpus))
    limits = job_limits(execution, Machine.read(ws.root, slots))
    if execution.memory_limit_mb == "auto" and execution.ray_memory_mb:
        # What the job asked of Ray is what it may use.
        limits = dataclasses.replace(limits, memory_mb=execution.ray_memory_mb)
    return limits


def run_node(job: WorkerJob, archive: list[Any]) -> Iterator[Started | Finished]:
    """The Ray task's body (a generator: Ray streams each item back as it is yielded).
    `archive` holds the input tar's ObjectRef, inside a list so Ray passes the ref itself and
    the worker fetches it only when its machine has not unpacked it yet. Ray's cancel (not
    forced) arrives as KeyboardInterrupt: the script is then stopped as a cancelled local run
    is (SIGTERM, the kill grace, then SIGKILL of its whole tree), and nothing more comes. The
    interrupt can also come while Ray reports an item, outside this frame: Ray then drops the
    generator, which closes at its `yield`, and the script is stopped the same way."""
    import ray

    _hear_cancels()
    ray_node_id = ray.get_runtime_context().get_node_id()
    node_ip = ray.util.get_node_ip_address()  # type: ignore[no-untyped-call]
    shared = bool(job.workspace)
    if shared:
        ws, public = Workspace(Path(job.workspace)), Path(job.public_dir)
    else:
        public = unpacked_input(job.task_id, archive[0])
        root = worker_root(job.task_id) / "nodes" / str(job.node_id)
        ws = Workspace.create(root, public, job.code)
    loop = asyncio.new_event_loop()
    running: asyncio.Task[Finished] | None = None
    try:
        identity: asyncio.Future[ProcessIdentity] = loop.create_future()
        running = loop.create_task(_metered(job, ws, public, ray_node_id, identity))
        either: set[asyncio.Future[Any]] = {identity, running}
        loop.run_until_complete(asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED))
        if identity.done():
            yield Started(identity.result(), node_ip, ray_node_id)
        finished = loop.run_until_complete(running)
        outputs = {} if shared else collect_outputs(ws)
        yield dataclasses.replace(finished, outputs=outputs)
    except KeyboardInterrupt:
        pass  # Cancelled: nothing more is reported; the script stops below.
    finally:
        if running is not None and not running.done():
            running.cancel()
            loop.run_until_complete(asyncio.gather(running, return_exceptions=True))
        loop.close()
        if not shared:
            remove_tree(ws.root)


def _hear_cancels() -> None:
    """Ray's cancel comes through Python's SIGINT handling: a worker whose raylet was started
    with SIGINT ignored (a background job of a non-interactive shell, as `ray start ... &` in
    a script) would never hear it, and its script would run on until the forced cancel
    killed it without a grace. SIGINT raises KeyboardInterrupt again, as in a normal worker."""
    if (threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        signal.signal(signal.SIGINT, signal.default_int_handler)


async def _metered(job: WorkerJob, ws: Workspace, public: Path, ray_node_id: str,
                   identity: asyncio.Future[ProcessIdentity]) -> Finished:
    """The script's run, its GPU use read with NVML on this machine when it has a GPU (the
    same sampler and per-process accounting as a local GPU slot)."""
    pids: set[int] = set()

    async def on_start(process: ProcessIdentity) -> None:
        pids.add(process.pid)
        identity.set_result(process)

    metering = await asyncio.to_thread(_gpu_sampler, job) if job.gpu else None
    sampler, probe = metering if metering is not None else (None, None)
    watcher = None
    if sampler is not None:
        sampler.track(lambda: pids)
        sampler.start()
        watcher = asyncio.create_task(collect_descendants(pids))
    try:
        result = await run_script(
            ws, job.timeout_s, job.execution.kill_grace_s, job.execution.python or None,
            on_start, lease=_lease(job, ray_node_id), limits=_limits(job, ws),
            sandbox=job.execution.sandbox, public_dir=public,
            job_id=f"{job.task_id}-{job.node_id}",
            hidden_paths=tuple(Path(p) for p in job.hidden_paths),
            readable_paths=tuple(Path(p) for p in job.readable_paths))
    finally:
        if watcher is not None:
            watcher.cancel()
        if sampler is not None and probe is not None:
            await sampler.stop()
            await asyncio.to_thread(probe.close)
    if sampler is None:
        return Finished(result)
    peak, seconds = sampler.usage(pids)
    return Finished(result, gpu_peak_mb=peak, gpu_seconds=round(seconds, 2))


def _gpu_sampler(job: WorkerJob) -> tuple[GpuSampler, GpuProbe] | None:
    """An NVML sampler of this machine's GPUs, and its probe (to close); None without a GPU.
    Blocking."""
    probe, _reason = open_probe()
    gpus = probe.discover()
    if not gpus:
        probe.close()
        return None
    sampler = GpuSampler(probe, None, interval_s=job.execution.sample_interval_s, gpus=gpus)
    return sampler, probe


def collect_outputs(ws: Workspace) -> dict[str, bytes]:
    """The run's logs (their last MiB), metrics.json and submission/ (bounded), read without
    following a link; what is left behind is said at the end of stderr.log."""
    outputs: dict[str, bytes] = {}
    notes: list[str] = []
    for name in (ws.stdout.name, ws.stderr.name):
        try:
            with untrusted.open_file(ws.root, name) as handle:
                size = os.fstat(handle.fileno()).st_size
                handle.seek(max(0, size - LOG_TAIL_BYTES))
                outputs[name] = handle.read(LOG_TAIL_BYTES)
        except (OSError, ValueError):
            continue
    try:
        outputs[ws.metrics.name] = untrusted.read_bounded(ws.root, ws.metrics.name,
                                                          METRICS_MAX_BYTES)
    except FileNotFoundError:
        pass
    except OSError as exc:
        notes.append(f"metrics.json stayed on the worker: {exc}")
    left = SUBMISSION_MAX_BYTES
    for relative in _regular_files(ws.root, "submission"):
        try:
            data = untrusted.read_bounded(ws.root, relative, left)
        except (OSError, ValueError) as exc:
            notes.append(f"{relative} stayed on the worker: {exc}")
            continue
        outputs[relative] = data
        left -= len(data)
    if notes:
        outputs[ws.stderr.name] = outputs.get(ws.stderr.name, b"") + (
            "\n[mlmaster] " + "\n[mlmaster] ".join(notes) + "\n").encode()
    return outputs


def _regular_files(root: Path, folder: str) -> list[str]:
    """Relative paths of the regular files below `root/folder`; links are neither listed nor
    followed."""
    found: list[str] = []
    pending = [folder]
    while pending:
        current = pending.pop()
        try:
            entries = list(os.scandir(root / current))
        except OSError:
            continue
        for entry in entries:
            relative = f"{current}/{entry.name}"
            if entry.is_dir(follow_symlinks=False):
                pending.append(relative)
            elif entry.is_file(follow_symlinks=False):
                found.append(relative)
    return sorted(found)


def write_outputs(ws: Workspace, outputs: dict[str, bytes]) -> None:
    """Write what a worker brought back into the daemon's workspace: each file anew, never
    through a link, folders made real (blocking)."""
    for relative, data in outputs.items():
        parts = Path(relative).parts
        if Path(relative).is_absolute() or ".." in parts or not parts:
            continue
        folder = ws.root
        for part in parts[:-1]:
            folder = folder / part
            if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
                remove_tree(folder)
            folder.mkdir(exist_ok=True)
        target = folder / parts[-1]
        if target.is_symlink() or target.is_dir():
            remove_tree(target)
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW
                     | os.O_CLOEXEC, 0o644)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
