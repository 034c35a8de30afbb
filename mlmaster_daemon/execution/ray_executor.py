"""The cluster backend: `RayExecutor` runs each node's script as a task of a Ray cluster, under
the same contract and limits as `LocalExecutor` (the worker calls the same runner: see
`ray_worker.py`). Ray places the task where the resources it asks are free (CPUs, GPUs or a
share of one, memory, custom resources); the daemon's loop only awaits the task's stream.

The crash journal gets the script's real process identity (pid, start time and boot id of the
worker machine) and a slot naming where it runs, `ray:<node ip>:<node id>`. After a daemon
crash the identity is killed only on a machine it provably belongs to (same boot: a
single-machine cluster); elsewhere the script already died with the daemon's Ray driver (Ray
ends a dead driver's tasks, and the launcher ends the script with its worker), and the node
is re-queued and re-run from its saved code, as a local node whose process died is."""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mlmaster_daemon.clock import Clock, SystemClock
from mlmaster_daemon.config import ExecutionConfig, Settings
from mlmaster_daemon.errors import MlmasterError
from mlmaster_daemon.execution.executor import (
    NodeJob,
    NodeRun,
    Started,
    hidden_paths,
    readable_paths,
)
from mlmaster_daemon.execution.ray_worker import (
    Finished,
    WorkerJob,
    pack_public_dir,
    run_node,
    write_outputs,
)
from mlmaster_daemon.execution.ray_worker import Started as WorkerStarted
from mlmaster_daemon.execution.runner import RunResult
from mlmaster_daemon.logs import get_logger
from mlmaster_daemon.metrics import DaemonMetrics
from mlmaster_daemon.tasks.spec import TaskSpec

log = get_logger("mlmaster.ray")
# Past the time limit and the kill grace, how long the daemon waits for a worker's answer
# before it takes the node back itself.
ANSWER_SLACK_S = 30.0
# Tasks whose input archive stays in the object store (the oldest is dropped past this).
ARCHIVES_KEPT = 8


class NoWorkerFits(MlmasterError):
    """No live machine of the cluster has what a node asks (Ray would queue it for ever)."""

    code = "no_worker_fits"
    status = 503


def connect(execution: ExecutionConfig) -> bool:
    """Join the configured cluster, or start a single-machine one (`ray_address = ""`); True
    when this daemon started it, and so stops it (`disconnect`). Blocking."""
    import ray

    if ray.is_initialized():
        return False
    # "local" starts a new cluster even when RAY_ADDRESS or a `ray start` on this machine
    # would otherwise be joined (a cluster the daemon then mistook for its own to stop).
    ray.init(address=execution.ray_address or "local", include_dashboard=False,
             log_to_driver=False, logging_level=logging.WARNING)
    return not execution.ray_address


def disconnect() -> None:
    import ray

    ray.shutdown()


def asked_resources(execution: ExecutionConfig) -> dict[str, float]:
    """What one node script asks of a machine, in Ray's resource names."""
    asked = {"CPU": execution.ray_num_cpus, **execution.ray_resources}
    if execution.ray_num_gpus:
        asked["GPU"] = execution.ray_num_gpus
    if execution.ray_memory_mb:
        asked["memory"] = execution.ray_memory_mb * 1024.0 * 1024.0
    return asked


def check_fits(asked: dict[str, float], nodes: list[dict[str, Any]]) -> None:
    """Raise NoWorkerFits unless some live machine has, in all, what `asked` holds."""
    if any(node["alive"] and all(node["total"].get(name, 0.0) >= amount
                                 for name, amount in asked.items()) for node in nodes):
        return
    shown = ", ".join(f"{name}={amount:g}" for name, amount in sorted(asked.items()))
    raise NoWorkerFits(
        f"no live Ray worker offers {shown}: lower [execution] ray_num_cpus, ray_num_gpus, "
        "ray_memory_mb or ray_resources, or add a worker that has them "
        "(`ray start --resources`)")


def describe_share(execution: ExecutionConfig) -> str:
    """The hardware line for prompts: what a node gets on a worker."""
    cpus = f"{execution.ray_num_cpus:g} CPU cores"
    if not execution.ray_num_gpus:
        return f"CPU only: {cpus}, no GPU (on a Ray worker)"
    return f"{execution.ray_num_gpus:g} GPU, {cpus} (on a Ray worker)"


def cluster_nodes() -> list[dict[str, Any]]:
    """The cluster's machines: address, alive, and their total and free resources."""
    import ray

    # No public per-node figure of free resources without the dashboard's state API.
    from ray._private.state import available_resources_per_node

    free = available_resources_per_node()  # type: ignore[no-untyped-call]

    def own(resources: dict[str, float]) -> dict[str, float]:
        return {k: v for k, v in resources.items() if not k.startswith("node:")}

    return [{"node_id": node["NodeID"], "ip": node["NodeManagerAddress"],
             "alive": node["Alive"], "total": own(node["Resources"]),
             "free": own(free.get(node["NodeID"], {}))}
            for node in ray.nodes()]  # type: ignore[no-untyped-call]


class RayExecutor:
    """Runs node scripts on a Ray cluster (joined with `connect` before the first run)."""

    def __init__(self, settings: Settings, state_dir: Path, socket_path: Path | None = None,
                 metrics: DaemonMetrics | None = None, clock: Clock | None = None) -> None:
        import ray

        self.settings = settings
        self.state_dir = state_dir
        self.socket_path = socket_path
        self.metrics = metrics
        self.clock: Clock = clock or SystemClock()
        # Each task's public folder, put once in the object store (no shared filesystem).
        self._archives: OrderedDict[str, Any] = OrderedDict()
        self._remote = ray.remote(run_node)

    async def run(self, job: NodeJob, started: Started,
                  still_wanted: Callable[[], bool]) -> NodeRun | None:
        if not still_wanted():
            return None
        retry = self.settings.config.execution.ray_worker_lost == "retry"
        run, lost = await self._attempt(job, started)
        if lost and retry:
            log.warning("worker lost; running the node again", task_id=job.task_id,
                        node_id=job.node_id, reason=run.result.reason)
            run, lost = await self._attempt(job, started)
        if self.metrics is not None:
            self.metrics.node_ran(run.result)
        return run

    async def _attempt(self, job: NodeJob, started: Started) -> tuple[NodeRun, bool]:
        """One run on some worker: (how it went, whether its worker was lost)."""
        import ray
        from ray.exceptions import RayError, RayTaskError

        execution = self.settings.config.execution
        timeout = job.timeout_s()
        check_fits(asked_resources(execution), await asyncio.to_thread(cluster_nodes))
        stream = self._submit(job, execution, timeout, await self._archive(job))
        asked = self.clock.time()
        where, pid = "unknown node (before the script started)", 0
        try:
            first = await _next(stream)
            if isinstance(first, WorkerStarted):
                where, pid = first.node_ip, first.identity.pid
                if self.metrics is not None:
                    self.metrics.slot_waited(self.clock.time() - asked)
                await started(first.identity, f"ray:{first.node_ip}:{first.ray_node_id[:12]}")
                last = await asyncio.wait_for(
                    _next(stream), timeout + execution.kill_grace_s + ANSWER_SLACK_S)
            else:
                last = first
        except TimeoutError:
            ray.cancel(stream, force=True)
            reason = f"killed after its {timeout:.0f} s time limit (its worker did not answer)"
            return NodeRun(RunResult(None, True, timeout, pid, reason), timeout), False
        except RayTaskError as exc:
            # The runner itself failed on the worker (a sandbox that cannot be honoured...).
            raise exc.as_instanceof_cause() from None  # type: ignore[no-untyped-call]
        except RayError as exc:
            log.warning("worker lost", task_id=job.task_id, node_id=job.node_id, node_ip=where,
                        error=f"{type(exc).__name__}: {exc}"[:500])
            result = RunResult(None, False, self.clock.time() - asked, pid,
                               f"worker lost: {where}")
            return NodeRun(result, timeout), True
        except BaseException:
            # Cancelled (task cancelled, daemon stopping) or the journal failed: the worker
            # is killed, and the script with it (the launcher ties it to its worker).
            ray.cancel(stream, force=True)
            raise
        if not isinstance(last, Finished):
            raise RuntimeError(f"a Ray worker answered {type(last).__name__}, not Finished")
        if last.outputs:
            await asyncio.to_thread(write_outputs, job.workspace, last.outputs)
        return NodeRun(last.result, timeout), False

    def _submit(self, job: NodeJob, execution: ExecutionConfig, timeout: float,
                archive: Any) -> Any:
        shared = execution.ray_shared_fs
        worker_job = WorkerJob(
            task_id=job.task_id, node_id=job.node_id, execution=execution, timeout_s=timeout,
            gpu=execution.ray_num_gpus > 0,
            public_dir=str(job.spec.public_dir) if shared else "",
            workspace=str(job.workspace.root) if shared else "",
            code="" if shared else job.workspace.script.read_text(),
            hidden_paths=tuple(str(p) for p in self.hidden_paths(job.spec)) if shared else (),
            readable_paths=tuple(str(p) for p in readable_paths(job.spec)) if shared else ())
        options: dict[str, Any] = {
            "num_returns": "streaming", "num_cpus": execution.ray_num_cpus,
            "num_gpus": execution.ray_num_gpus, "resources": dict(execution.ray_resources),
            # A lost worker is the daemon's to retry (ray_worker_lost), never Ray's.
            "max_retries": 0, "name": f"mlmaster node {job.holder}",
            # One heavy script per machine before two on one: spread over the workers.
            "scheduling_strategy": "SPREAD"}
        if execution.ray_memory_mb:
            options["memory"] = execution.ray_memory_mb * 1024 * 1024
        return self._remote.options(**options).remote(worker_job, [archive] if archive else [])

    async def _archive(self, job: NodeJob) -> Any:
        """The task's input in the object store (None on a shared filesystem)."""
        if self.settings.config.execution.ray_shared_fs:
            return None
        import ray

        ref = self._archives.get(job.task_id)
        if ref is None:
            data = await asyncio.to_thread(pack_public_dir, job.spec.public_dir)
            ref = await asyncio.to_thread(ray.put, data)
            self._archives[job.task_id] = ref
            while len(self._archives) > ARCHIVES_KEPT:
                self._archives.popitem(last=False)
        self._archives.move_to_end(job.task_id)
        return ref

    def hidden_paths(self, spec: TaskSpec) -> tuple[Path, ...]:
        """As `LocalExecutor.hidden_paths`, on a worker that shares the filesystem."""
        return hidden_paths(self.settings, self.state_dir, self.socket_path, spec)


async def _next(stream: Any) -> Any:
    """The next item a worker streamed back, None once its stream has ended."""
    try:
        ref = await stream.__anext__()
    except StopAsyncIteration:
        return None
    return await ref
