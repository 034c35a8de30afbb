"""The execution seam: run one node's script in a slot and say how it went. `LocalExecutor` is
this machine's: slots (GPU shares and CPU sets), sandbox, job limits, runner and GPU metering.
A cluster backend is a second implementation of `Executor`."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import psutil

from mlmaster_daemon.clock import Clock, SystemClock
from mlmaster_daemon.config import Settings
from mlmaster_daemon.execution.lease import Lease, ProcessIdentity
from mlmaster_daemon.execution.limits import Machine, job_limits
from mlmaster_daemon.execution.runner import RunResult, run_script
from mlmaster_daemon.execution.slots import GpuSampler, SlotPool
from mlmaster_daemon.execution.workspace import Workspace
from mlmaster_daemon.metrics import DaemonMetrics
from mlmaster_daemon.tasks.spec import TaskSpec


@dataclass(frozen=True)
class NodeJob:
    """One node's script to run: its workspace (laid out already) and its time limit, asked
    when the run starts."""

    task_id: str
    node_id: int
    spec: TaskSpec
    workspace: Workspace
    timeout_s: Callable[[], float]

    @property
    def holder(self) -> str:
        return f"{self.task_id}/{self.node_id}"


@dataclass(frozen=True)
class NodeRun:
    """How a node's run went: the runner's result, and its GPU use when it had a GPU."""

    result: RunResult
    # The time limit it ran under.
    timeout_s: float
    gpu_peak_mb: int | None = None
    gpu_seconds: float | None = None


# Called once the script's process exists: its identity (to journal) and the slot it runs in.
Started = Callable[[ProcessIdentity, str], Awaitable[None]]


class Executor(Protocol):
    """Runs node scripts under the node contract (workspace, read-only input, limits, timeout
    that kills the whole process tree)."""

    async def run(self, job: NodeJob, started: Started,
                  still_wanted: Callable[[], bool]) -> NodeRun | None:
        """Wait for a slot, then run the job; None, without running it, when `still_wanted()`
        says no once the slot is granted (the daemon is stopping)."""
        ...

    async def attachable(self, task_id: str, node_id: int) -> bool:
        """Whether a run of this node from before a restart may still be going on, to be
        re-attached by `run`: its workspace is then left as it is."""
        ...


class LocalExecutor:
    """Runs scripts on this machine. `socket_path`, key files (from the config), the state dir
    and the task's hidden answers are kept out of every job's view."""

    def __init__(self, settings: Settings, slots: SlotPool, state_dir: Path,
                 sampler: GpuSampler | None = None, socket_path: Path | None = None,
                 metrics: DaemonMetrics | None = None, clock: Clock | None = None) -> None:
        self.settings = settings
        self.slots = slots
        self.state_dir = state_dir
        self.sampler = sampler
        self.socket_path = socket_path
        self.metrics = metrics
        self.clock: Clock = clock or SystemClock()

    async def attachable(self, task_id: str, node_id: int) -> bool:
        # A local script never outlives the daemon's restart (it is killed at start).
        return False

    async def run(self, job: NodeJob, started: Started,
                  still_wanted: Callable[[], bool]) -> NodeRun | None:
        sampler = self.sampler
        asked = self.clock.time()
        lease = await self.slots.acquire(job.task_id,
                                         sampler.free_memory_mb if sampler else None,
                                         holder=job.holder)
        try:
            if self.metrics is not None:
                self.metrics.slot_waited(self.clock.time() - asked)
            if not still_wanted():
                return None
            run = await self._run_on(job, lease, started)
            if self.metrics is not None:
                self.metrics.node_ran(run.result)
            return run
        finally:
            self.slots.release(lease)

    async def _run_on(self, job: NodeJob, lease: Lease, started: Started) -> NodeRun:
        execution = self.settings.config.execution
        job_pids: set[int] = set()

        async def on_start(identity: ProcessIdentity) -> None:
            job_pids.add(identity.pid)
            await started(identity, lease.slot_id)

        machine = await asyncio.to_thread(Machine.read, self.state_dir, self.slots.capacity)
        timeout = job.timeout_s()
        metering = lease.gpu_uuid is not None and self.sampler is not None
        watcher = asyncio.create_task(collect_descendants(job_pids)) if metering else None
        try:
            result = await run_script(
                job.workspace, timeout, execution.kill_grace_s, execution.python or None,
                on_start, lease=lease, limits=job_limits(execution, machine),
                sandbox=execution.sandbox, public_dir=job.spec.public_dir,
                job_id=f"{job.task_id}-{job.node_id}",
                hidden_paths=self.hidden_paths(job.spec),
                readable_paths=readable_paths(job.spec),
            )
        finally:
            if watcher is not None:
                watcher.cancel()
        if watcher is None or self.sampler is None:
            return NodeRun(result, timeout)
        peak, seconds = self.sampler.usage(job_pids)
        self.sampler.forget(job_pids)
        return NodeRun(result, timeout, peak, round(seconds, 2))

    def hidden_paths(self, spec: TaskSpec) -> tuple[Path, ...]:
        return hidden_paths(self.settings, self.state_dir, self.socket_path, spec)


def hidden_paths(settings: Settings, state_dir: Path, socket_path: Path | None,
                 spec: TaskSpec) -> tuple[Path, ...]:
    """What a job must not see: the daemon's state (database, other nodes and tasks; its own
    workspace is bound back in), any API key file, the API socket and the task's hidden
    answers (the sandbox shows none of these anyway; this holds if one lies inside what it
    shows)."""
    llm = settings.config.llm
    keys = [Path(e.api_key_file).expanduser() for e in (llm.code, llm.feedback)
            if e is not None and e.api_key_file]
    sockets = [socket_path] if socket_path is not None else []
    private = [spec.private_dir] if spec.private_dir else []
    return (state_dir, *keys, *sockets, *private)


def readable_paths(spec: TaskSpec) -> tuple[Path, ...]:
    """The sample submission when a competition keeps it only beside its hidden answers
    (`../private/<name>`): the one file of that folder a job may read."""
    sample = (spec.public_dir / spec.sample_submission_file).resolve()
    if sample.is_relative_to(spec.public_dir.resolve()):
        return ()
    return (sample,)


async def collect_descendants(pids: set[int], interval_s: float = 1.0) -> None:
    """Keep adding a job's descendant pids (the GPU work runs in them) until cancelled."""
    while True:
        for pid in list(pids):
            with contextlib.suppress(psutil.Error):
                pids.update(c.pid for c in psutil.Process(pid).children(recursive=True))
        await asyncio.sleep(interval_s)
