"""The cluster backend: `RayExecutor` runs each node's script in an actor of a Ray cluster,
under the same contract and limits as `LocalExecutor` (the actor calls the same runner: see
`ray_worker.py`). Ray places the actor where the resources it asks are free (CPUs, GPUs or a
share of one, memory, custom resources); the daemon's loop only awaits the actor's answers.

The crash journal gets the script's real process identity (pid, start time and boot id of the
worker machine) and a slot naming where it runs, `ray:<node ip>:<node id>`. On a cluster the
daemon started itself, a daemon crash ends the cluster, and with it the actor and its script
(the launcher ties the script to its worker); the node is re-run from its saved code. On a
cluster that outlives the daemon (`ray_address` set) the actor is detached and named after
its node: after a crash, the restarted daemon leaves its script alone, finds the actor by name
and takes its result when it ends; only when the actor is gone is the saved code run again.
Either way one node never runs twice at the same time: the name is the node's.
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
from mlmaster_daemon.execution.ray_worker import (
    Finished,
    NodeRunner,
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
# A node's actor name, still held by an actor being killed, is tried this often.
NAME_TRIES, NAME_WAIT_S = 20, 0.25


class RayExecutor:
    """Runs node scripts on a Ray cluster (joined with `connect` before the first run). Each
    run is a `NodeRunner` actor named after its node in this daemon's namespace; on a cluster
    the daemon did not start it is detached, so it outlives a daemon crash and is re-attached
    after the restart (`adopt`, then the node's `run`)."""

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
        self._runner = ray.remote(NodeRunner)
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
        """At start, after a crash: the actors of nodes that run again are kept, to be
        re-attached by their run; the others (their nodes failed or ended meanwhile) are
        killed. Returns how many were kept."""
        wanted = {actor_name(task_id, node_id): (task_id, node_id)
                  for task_id, node_id in requeued}
        for name in await asyncio.to_thread(self._actor_names):
            if name in wanted:
                self._left.add(wanted[name])
            else:
                log.warning("killed a node run left on the cluster that no node waits for",
                            actor=name)
                await asyncio.to_thread(self._kill_named, name)
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
        actor = await asyncio.to_thread(self._lookup, actor_name(job.task_id, job.node_id))
        if left and actor is not None:
            log.info("re-attached to a node still running on the cluster",
                     task_id=job.task_id, node_id=job.node_id)
            run, lost = await self._attempt(job, started, actor)
            if not lost:
                return self._ran(run)
            log.warning("the node's run from before the restart was lost; running its saved "
                        "code again", task_id=job.task_id, node_id=job.node_id,
                        reason=run.result.reason)
        if left:
            # What the lost run left must not pass for the new run's outputs.
            await asyncio.to_thread(Workspace.create, job.workspace.root, job.spec.public_dir,
                                    job.workspace.script.read_text())
        elif actor is not None:
            # A run of this node that no one waits for (a crash this daemon did not adopt).
            await asyncio.to_thread(_kill, actor)
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
                       actor: Any = None) -> tuple[NodeRun, bool]:
        """One run on some worker, or the rest of one (`actor`, re-attached): (how it went,
        whether its worker, or the run from before the restart, was lost)."""
        from ray.exceptions import RayError, RayTaskError

        execution = self.settings.config.execution
        timeout = job.timeout_s()
        reattached = actor is not None
        asked = self.clock.time()
        key = (job.task_id, job.node_id)
        if actor is None:
            self._machines = await asyncio.to_thread(cluster_nodes)
            check_fits(asked_resources(execution), self._machines)
            actor = await self._create(job, execution, timeout, await self._archive(job))
        where, pid = "unknown node (before the script started)", 0
        self._asked.add(key)
        try:
            first = await actor.first.remote()
            self._asked.discard(key)
            if isinstance(first, WorkerStarted):
                where, pid = first.node_ip, first.identity.pid
                self._where[key] = first.ray_node_id
                if self.metrics is not None and not reattached:
                    self.metrics.slot_waited(self.clock.time() - asked)
                await started(first.identity, f"ray:{first.node_ip}:{first.ray_node_id[:12]}")
                last = await asyncio.wait_for(
                    actor.last.remote(), timeout + execution.kill_grace_s + ANSWER_SLACK_S)
            else:
                last = first
        except TimeoutError:
            reason = f"killed after its {timeout:.0f} s time limit (its worker did not answer)"
            return NodeRun(RunResult(None, True, timeout, pid, reason), timeout), False
        except RayTaskError as exc:
            if reattached:
                # The run from before the restart failed on its own (its input was lost
                # with the old driver...): it is run again.
                result = RunResult(None, False, 0.0, pid, f"{type(exc).__name__}"[:200])
                return NodeRun(result, timeout), True
            # The runner itself failed on the worker (a sandbox that cannot be honoured...).
            raise exc.as_instanceof_cause() from None  # type: ignore[no-untyped-call]
        except asyncio.CancelledError:
            # Task cancelled, daemon stopping: the script is stopped as a local one is
            # (SIGTERM, the kill grace, SIGKILL of its tree), then its actor goes.
            await self._stop(actor, execution)
            raise
        except RayError as exc:
            log.warning("worker lost", task_id=job.task_id, node_id=job.node_id, node_ip=where,
                        error=f"{type(exc).__name__}: {exc}"[:500])
            result = RunResult(None, False, self.clock.time() - asked, pid,
                               f"worker lost: {where}")
            return NodeRun(result, timeout), True
        finally:
            # Done, timed out, lost, cancelled (task cancelled, daemon stopping) or the
            # journal failed: the actor goes, and the script with it (the launcher ties it
            # to its worker), and a detached actor does not outlive its use.
            _kill(actor)
            self._asked.discard(key)
            self._where.pop(key, None)
        if not isinstance(last, Finished):
            raise RuntimeError(f"a Ray worker answered {type(last).__name__}, not Finished")
        if last.outputs:
            await asyncio.to_thread(write_outputs, job.workspace, last.outputs)
        return NodeRun(last.result, timeout), False

    async def _create(self, job: NodeJob, execution: ExecutionConfig, time_limit_s: float,
                      archive: Any) -> Any:
        """The node's actor, started on some worker (its run begins at once)."""
        shared = execution.ray_shared_fs
        worker_job = WorkerJob(
            task_id=job.task_id, node_id=job.node_id, execution=execution, timeout_s=time_limit_s,
            gpu=execution.ray_num_gpus > 0,
            public_dir=str(job.spec.public_dir) if shared else "",
            workspace=str(job.workspace.root) if shared else "",
            code="" if shared else job.workspace.script.read_text(),
            hidden_paths=tuple(str(p) for p in self.hidden_paths(job.spec)) if shared else (),
            readable_paths=tuple(str(p) for p in readable_paths(job.spec)) if shared else ())
        options: dict[str, Any] = {
            "num_cpus": execution.ray_num_cpus, "num_gpus": execution.ray_num_gpus,
            "resources": dict(execution.ray_resources),
            # A lost worker is the daemon's to retry (ray_worker_lost), never Ray's.
            "max_restarts": 0, "max_task_retries": 0, "max_concurrency": 2,
            "name": actor_name(job.task_id, job.node_id), "namespace": self.namespace,
            # One heavy script per machine before two on one: spread over the workers.
            "scheduling_strategy": "SPREAD"}
        if execution.ray_address:
            # On a cluster that outlives the daemon, the run outlives a daemon crash.
            options["lifetime"] = "detached"
        if execution.ray_memory_mb:
            options["memory"] = execution.ray_memory_mb * 1024 * 1024
        for _ in range(NAME_TRIES):
            try:
                return self._runner.options(**options).remote(
                    worker_job, [archive] if archive else [])
            except ValueError:
                # The name is still held by an actor being killed: wait until it is gone.
                await asyncio.to_thread(self._kill_named, options["name"])
                await asyncio.sleep(NAME_WAIT_S)
        raise RuntimeError(f"the Ray actor name {options['name']} stays taken")

    async def _stop(self, actor: Any, execution: ExecutionConfig) -> None:
        """Ask the actor to stop its script, for at most the kill grace and some slack."""
        from ray.exceptions import RayError

        wait_s = execution.kill_grace_s + STOP_SLACK_S
        try:
            await asyncio.wait_for(asyncio.shield(actor.stop.remote(wait_s)), wait_s + 1.0)
        except (TimeoutError, RayError) as exc:
            log.warning("a node's script did not stop when asked; its worker is killed",
                        error=f"{type(exc).__name__}: {exc}"[:300])

    def _actor_names(self) -> list[str]:
        import ray

        return [actor["name"] for actor in ray.util.list_named_actors(all_namespaces=True)
                if actor["namespace"] == self.namespace]

    def _lookup(self, name: str) -> Any:
        """This daemon's live actor of that name, or None. Blocking."""
        import ray

        try:
            return ray.get_actor(name, namespace=self.namespace)
        except ValueError:
            return None

    def _kill_named(self, name: str) -> None:
        actor = self._lookup(name)
        if actor is not None:
            _kill(actor)

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


def actor_name(task_id: str, node_id: int) -> str:
    return f"node/{task_id}/{node_id}"


def _kill(actor: Any) -> None:
    """End an actor and its script now (its worker process goes)."""
    import ray

    ray.kill(actor, no_restart=True)
