"""Node processes left running by a daemon that stopped abnormally: found by their recorded
identity and killed at the next start, never a stranger that reused a pid."""

from __future__ import annotations

import asyncio

from mlmaster_daemon.execution.cgroups import kill_job_cgroups
from mlmaster_daemon.execution.lease import ProcessIdentity
from mlmaster_daemon.execution.processes import kill_identity
from mlmaster_daemon.logs import get_logger
from mlmaster_daemon.store import Store

log = get_logger("mlmaster.daemon")


async def reconcile_processes(store: Store, on_cluster: bool = False) -> int:
    """Kill node processes that outlived a daemon crash, but only those provably ours (same
    pid, start time and boot): PID reuse can never make this kill a stranger. Their nodes are
    then re-queued by `interrupt_unfinished`. `on_cluster`: nodes run on a Ray cluster that
    outlives the daemon are left running, to be re-attached (`RayExecutor.adopt`)."""
    killed = 0
    for node in await store.running_processes():
        if node.pid is None or node.pid_start_time is None or node.boot_id is None:
            continue
        if on_cluster and (node.slot or "").startswith("ray:"):
            continue
        identity = ProcessIdentity(node.pid, node.pid_start_time, node.boot_id)
        if await asyncio.to_thread(kill_identity, identity):
            killed += 1
            log.warning("killed a node process left from before the restart",
                        task_id=node.task_id, node_id=node.id, pid=node.pid)
    # Whatever escaped the process group (setsid) is still in the job's cgroup, and so is a
    # job started just before the crash, before its pid reached the journal.
    for task_id, node_id in [] if on_cluster else await store.unfinished_with_code():
        await asyncio.to_thread(kill_job_cgroups, f"{task_id}-{node_id}")
    return killed
