"""The cluster backend: `RayExecutor` runs each node's script as a task of a Ray cluster,
under the same contract and limits as `LocalExecutor` (the task calls the same runner: see
`ray_worker.py`). Ray places the task where the resources it asks are free (CPUs, GPUs or a
share of one, memory, custom resources); the daemon's loop only awaits the answers.

The tasks are submitted by the daemon's `Dispatcher` actor (`ray_dispatcher.py`), named in
this daemon's namespace, which owns them. The crash journal gets the script's real process
identity (pid, start time and boot id of the worker machine) and a slot naming where it runs,
`ray:<node ip>:<node id>`. On a cluster the daemon started itself, a daemon crash ends the
cluster and its scripts (the launcher ties a script to its worker); the node is re-run from
its saved code. On a cluster that outlives the daemon (`ray_address` set) the dispatcher is
detached: after a crash the restarted daemon leaves the scripts alone, finds the dispatcher
by name and takes each re-queued node's result when it ends; only a run the dispatcher no
longer holds is run again from the saved code. One node never runs twice at the same time:
the dispatcher holds one run per node.
"""

from __future__ import annotations

import asyncio
import hashlib
import socket
from collections import OrderedDict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from mlmaster_daemon.bus import Event, TaskStateChanged
from mlmaster_daemon.clock import Clock, SystemClock
from mlmaster_daemon.config import ExecutionConfig, Settings
from mlmaster_daemon.execution.executor import (
    NodeJob,
    NodeRun,
    Started,
    hidden_paths,
    readable_paths,
)
from mlmaster_daemon.execution.ray_cluster import (
    asked_resources,
    check_fits,
    check_input_fits,
    cluster_nodes,
)
from mlmaster_daemon.execution.ray_dispatcher import Dispatcher, Lost, Raised
from mlmaster_daemon.execution.ray_worker import (
    Finished,
    WorkerJob,
    input_size,
    pack_public_dir,
    remove_task_folder,
    write_outputs,
)
from mlmaster_daemon.execution.ray_worker import Started as WorkerStarted
from mlmaster_daemon.execution.runner import RunResult
from mlmaster_daemon.execution.workspace import Workspace
from mlmaster_daemon.logs import get_logger
from mlmaster_daemon.metrics import DaemonMetrics
from mlmaster_daemon.models import TaskState
from mlmaster_daemon.ray_config import NodeResources
from mlmaster_daemon.tasks.spec import TaskSpec

log = get_logger("mlmaster.ray")
# Past the time limit and the kill grace, how long the daemon waits for a worker's answer
# before it takes the node back itself.
ANSWER_SLACK_S = 30.0
# Tasks whose input archive stays in the object store (the oldest is dropped past this).
ARCHIVES_KEPT = 8
# How long an ended task's clean-up on the workers may take.
CLEANUP_WAIT_S = 120.0
# Past the kill grace, how long a script asked to stop has before its worker is killed.
STOP_SLACK_S = 10.0
# The dispatcher actor's name, in the daemon's namespace.
DISPATCHER = "dispatcher"


class RayExecutor:
    """Runs node scripts on a Ray cluster (joined with `connect` before the first run),
    through this daemon's dispatcher; runs left from before a crash are re-attached (`adopt`,
    then the node's `run`)."""

    def __init__(self, settings: Settings, state_dir: Path, socket_path: Path | None = None,
                 metrics: DaemonMetrics | None = None, clock: Clock | None = None) -> None:
        import ray

        self.settings = settings
        self.state_dir = state_dir
        self.socket_path = socket_path
        self.metrics = metrics
        self.clock: Clock = clock or SystemClock()
        self.namespace = namespace_for(state_dir)
        # Each task's public folder, put once in the object store (no shared filesystem).
        self._archives: OrderedDict[str, Any] = OrderedDict()
        self._actor = ray.remote(Dispatcher)
        self._dispatcher: Any = None
        # Nodes whose run from before a restart may still go on in its actor.
        self._left: set[tuple[str, int]] = set()
        # Clean-ups of ended tasks' input on the workers, under way.
        self._cleanups: set[asyncio.Task[None]] = set()
        # The cluster's machines when last read, the runs asked and not started yet, and
        # where each started run is (its machine's Ray node id).
        self._machines: list[dict[str, Any]] = []
        self._asked: set[tuple[str, int]] = set()
        self._where: dict[tuple[str, int], str] = {}

    @property
    def capacity(self) -> int:
        """How many node scripts the live machines could run at once, when last read."""
        asked = asked_resources(self.settings.config.execution)
        return sum(min(int(machine["total"].get(name, 0.0) // amount)
                       for name, amount in asked.items())
                   for machine in self._machines if machine["alive"])

    @property
    def busy(self) -> int:
        return len(self._where)

    @property
    def waiting(self) -> int:
        """Runs asked of the cluster that no machine has started yet."""
        return len(self._asked)

    def slot_rows(self) -> list[dict[str, Any]]:
        """The cluster's share as `/v1/slots` rows: one per running node (its machine's id),
        then one free row per script the live machines could still take."""
        rows: list[dict[str, Any]] = [
            {"id": f"ray:{where[:12]}", "busy": True, "task_id": task,
             "holder": f"{task}/{node}", "gpu_uuid": None, "cpus": []}
            for (task, node), where in sorted(self._where.items())]
        rows += [{"id": "ray", "busy": False, "task_id": None, "holder": None,
                  "gpu_uuid": None, "cpus": []}] * max(0, self.capacity - len(rows))
        return rows

    async def cluster_view(self) -> list[dict[str, Any]]:
        """The cluster's machines, their total and free resources, and the nodes each runs
        ("task/node")."""
        self._machines = await asyncio.to_thread(cluster_nodes)
        return [{**machine, "running": sorted(f"{task}/{node}" for (task, node), where
                                              in self._where.items()
                                              if where == machine["node_id"])}
                for machine in self._machines]

    def observe(self, event: Event) -> None:
        """A bus tap: once a task has ended, its input goes from the object store and, without
        a shared filesystem, its folder from every worker's temp dir."""
        if not isinstance(event, TaskStateChanged) or not TaskState(event.state).terminal:
            return
        self._archives.pop(event.task_id, None)
        if self.settings.config.execution.ray_shared_fs:
            return
        cleanup = asyncio.get_running_loop().create_task(self._clean_workers(event.task_id))
        self._cleanups.add(cleanup)
        cleanup.add_done_callback(self._cleanups.discard)

    async def _clean_workers(self, task_id: str) -> None:
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        remove = ray.remote(remove_task_folder)
        refs = [remove.options(num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(
                    node["node_id"], soft=False)).remote(task_id)
                for node in await asyncio.to_thread(cluster_nodes) if node["alive"]]
        try:
            await asyncio.wait_for(asyncio.gather(*refs), CLEANUP_WAIT_S)
        except Exception as exc:  # a worker gone meanwhile keeps its copy until its reboot
            log.warning("a task's input could not be removed from every Ray worker",
                        task_id=task_id, error=f"{type(exc).__name__}: {exc}"[:300])

    async def adopt(self, requeued: Iterable[tuple[str, int]]) -> int:
        """At start, after a crash: the runs of nodes that run again are kept, to be
        re-attached by their run; the others (their nodes failed or ended meanwhile) are
        stopped. Returns how many were kept."""
        wanted = {run_key(task_id, node_id): (task_id, node_id)
                  for task_id, node_id in requeued}
        dispatcher = await asyncio.to_thread(self._lookup)
        if dispatcher is None:
            return 0
        self._dispatcher = dispatcher
        grace = self.settings.config.execution.kill_grace_s
        for key in await dispatcher.keys.remote():
            if key in wanted:
                self._left.add(wanted[key])
            else:
                log.warning("stopped a node run left on the cluster that no node waits for",
                            run=key)
                await dispatcher.stop.remote(key, grace)
        return len(self._left)

    async def attachable(self, task_id: str, node_id: int) -> bool:
        """Whether a run of this node from before the restart may still be going on: its
        workspace is then left as it is (the run writes there)."""
        return (task_id, node_id) in self._left

    async def run(self, job: NodeJob, started: Started,
                  still_wanted: Callable[[], bool]) -> NodeRun | None:
        if not still_wanted():
            return None
        retry = self.settings.config.execution.ray_worker_lost == "retry"
        left = (job.task_id, job.node_id) in self._left
        self._left.discard((job.task_id, job.node_id))
        if left:
            log.info("re-attaching to a node's run from before the restart",
                     task_id=job.task_id, node_id=job.node_id)
            run, lost = await self._attempt(job, started, attach=True)
            if not lost:
                return self._ran(run)
            log.warning("the node's run from before the restart was lost; running its saved "
                        "code again", task_id=job.task_id, node_id=job.node_id,
                        reason=run.result.reason)
            # What the lost run left must not pass for the new run's outputs.
            await asyncio.to_thread(Workspace.create, job.workspace.root, job.spec.public_dir,
                                    job.workspace.script.read_text())
        run, lost = await self._attempt(job, started)
        if lost and retry:
            log.warning("worker lost; running the node again", task_id=job.task_id,
                        node_id=job.node_id, reason=run.result.reason)
            run, lost = await self._attempt(job, started)
        return self._ran(run)

    def _ran(self, run: NodeRun) -> NodeRun:
        if self.metrics is not None:
            self.metrics.node_ran(run.result)
        return run

    async def _attempt(self, job: NodeJob, started: Started,
                       attach: bool = False) -> tuple[NodeRun, bool]:
        """One run on some worker, or the rest of one from before a restart (`attach`):
        (how it went, whether its worker, or the run from before the restart, was lost)."""
        from ray.exceptions import RayError

        execution = execution_for(self.settings.config.execution, job.spec)
        timeout = job.timeout_s()
        key = run_key(job.task_id, job.node_id)
        asked = self.clock.time()
        dispatcher = await self._get_dispatcher()
        if not attach:
            self._machines = await asyncio.to_thread(cluster_nodes)
            check_fits(asked_resources(execution), self._machines)
            await self._submit(dispatcher, key, job, execution, timeout,
                               await self._archive(job))
        where, pid = "unknown node (before the script started)", 0
        self._asked.add((job.task_id, job.node_id))
        try:
            first = await dispatcher.first.remote(key)
            self._asked.discard((job.task_id, job.node_id))
            if isinstance(first, WorkerStarted):
                where, pid = first.node_ip, first.identity.pid
                self._where[(job.task_id, job.node_id)] = first.ray_node_id
                if self.metrics is not None and not attach:
                    self.metrics.slot_waited(self.clock.time() - asked)
                await started(first.identity, f"ray:{first.node_ip}:{first.ray_node_id[:12]}")
                last = await asyncio.wait_for(
                    dispatcher.last.remote(key),
                    timeout + execution.kill_grace_s + ANSWER_SLACK_S)
            else:
                last = first
        except TimeoutError:
            dispatcher.stop.remote(key, 0.0)
            reason = f"killed after its {timeout:.0f} s time limit (its worker did not answer)"
            return NodeRun(RunResult(None, True, timeout, pid, reason), timeout), False
        except asyncio.CancelledError:
            # Task cancelled, daemon stopping: the script is stopped as a local one is
            # (SIGTERM, the kill grace, SIGKILL of its tree).
            await self._stop(dispatcher, key, execution)
            raise
        except RayError as exc:
            # The dispatcher itself is gone (its machine died...): a new one is made next.
            self._dispatcher = None
            last = Lost(f"{type(exc).__name__}: {exc}"[:500])
        except BaseException:
            dispatcher.stop.remote(key, 0.0)
            raise
        finally:
            self._asked.discard((job.task_id, job.node_id))
            self._where.pop((job.task_id, job.node_id), None)
        dispatcher.forget.remote(key)
        if last is None or isinstance(last, Lost):
            error = "not held by the dispatcher" if last is None else last.error
            log.warning("worker lost", task_id=job.task_id, node_id=job.node_id,
                        node_ip=where, error=error)
            result = RunResult(None, False, self.clock.time() - asked, pid,
                               f"worker lost: {where}")
            return NodeRun(result, timeout), True
        if isinstance(last, Raised):
            if attach:
                # The run from before the restart failed on its own (its input was lost
                # with the old driver...): it is run again.
                result = RunResult(None, False, 0.0, pid, type(last.error).__name__[:200])
                return NodeRun(result, timeout), True
            raise last.error
        if not isinstance(last, Finished):
            raise RuntimeError(f"a Ray worker answered {type(last).__name__}, not Finished")
        if last.outputs:
            await asyncio.to_thread(write_outputs, job.workspace, last.outputs)
        return NodeRun(last.result, timeout, last.gpu_peak_mb, last.gpu_seconds), False

    async def _submit(self, dispatcher: Any, key: str, job: NodeJob,
                      execution: ExecutionConfig, time_limit_s: float, archive: Any) -> None:
        """Start the node's task through the dispatcher (its run begins when Ray places it)."""
        shared = execution.ray_shared_fs
        worker_job = WorkerJob(
            task_id=job.task_id, node_id=job.node_id, execution=execution,
            timeout_s=time_limit_s, gpu=execution.ray_num_gpus > 0,
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
        archives = [archive] if archive else []
        if not await dispatcher.submit.remote(key, worker_job, archives, options):
            # A run of this node that no one waits for (a crash this daemon did not adopt):
            # it is stopped before this one starts.
            await dispatcher.stop.remote(key, execution.kill_grace_s)
            await dispatcher.submit.remote(key, worker_job, archives, options)

    async def _stop(self, dispatcher: Any, key: str, execution: ExecutionConfig) -> None:
        """Ask for the run to stop, for at most the kill grace and some slack."""
        from ray.exceptions import RayError

        grace = execution.kill_grace_s + STOP_SLACK_S
        try:
            await asyncio.wait_for(asyncio.shield(dispatcher.stop.remote(key, grace)),
                                   grace + STOP_SLACK_S)
        except (TimeoutError, RayError) as exc:
            log.warning("a node's script did not stop when asked",
                        error=f"{type(exc).__name__}: {exc}"[:300])

    async def _get_dispatcher(self) -> Any:
        """This daemon's dispatcher: found by name, or made (once per daemon and cluster)."""
        if self._dispatcher is None:
            self._dispatcher = await asyncio.to_thread(self._lookup)
        if self._dispatcher is None:
            options: dict[str, Any] = {
                "name": DISPATCHER, "namespace": self.namespace, "get_if_exists": True,
                "num_cpus": 0, "max_restarts": 0, "max_concurrency": 10_000,
                # On the head, which outlives the workers.
                "resources": {"node:__internal_head__": 0.001}}
            if self.settings.config.execution.ray_address:
                # On a cluster that outlives the daemon, the runs outlive a daemon crash.
                options["lifetime"] = "detached"
            self._dispatcher = self._actor.options(**options).remote()
        return self._dispatcher

    def _lookup(self) -> Any:
        """This daemon's live dispatcher, or None. Blocking."""
        import ray

        try:
            return ray.get_actor(DISPATCHER, namespace=self.namespace)
        except ValueError:
            return None

    async def _archive(self, job: NodeJob) -> Any:
        """The task's input in the object store (None on a shared filesystem)."""
        if self.settings.config.execution.ray_shared_fs:
            return None
        import ray

        ref = self._archives.get(job.task_id)
        if ref is None:
            size = await asyncio.to_thread(input_size, job.spec.public_dir)
            check_input_fits(size, self._machines)
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


def namespace_for(state_dir: Path) -> str:
    """The Ray namespace of one daemon's actors: daemons sharing a cluster never meet."""
    place = f"{socket.gethostname()}:{state_dir.resolve()}"
    return f"mlmaster-{hashlib.sha256(place.encode()).hexdigest()[:16]}"


def execution_for(execution: ExecutionConfig, spec: TaskSpec) -> ExecutionConfig:
    """The config a task's nodes run under: its task.toml's [resources] in place of the
    config's `ray_*` asks."""
    return NodeResources.model_validate(spec.resources).apply(execution)


def run_key(task_id: str, node_id: int) -> str:
    return f"{task_id}/{node_id}"
