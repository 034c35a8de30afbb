"""The Ray cluster as the daemon sees it: joining it (or starting a single-machine one),
what one node asks of a machine, whether any live machine has it, and the machines with
their total and free resources. Shared by the executor, `/v1/slots` and `mlmaster doctor`."""

from __future__ import annotations

import logging
import signal
import threading
import time
from typing import Any

from mlmaster_daemon.config import ExecutionConfig
from mlmaster_daemon.errors import MlmasterError

MIB = 1024 * 1024
# Joins through Ray Client refused by the head's server start-up, and the pause between them.
CLIENT_TRIES, CLIENT_RETRY_S = 3, 2.0
# The share of a machine's object store one task's input may take (without a shared fs).
INPUT_STORE_SHARE = 0.5
# How long reading the machines through Ray Client may take (a task on the cluster).
CLIENT_READ_S = 60.0


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
    # Ray's driver takes SIGTERM for itself (it exits at once): the daemon's clean stop keeps
    # it, whatever handler ray.init sets.
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        for attempt in range(1, CLIENT_TRIES + 1):
            try:
                # "local" starts a new cluster even when RAY_ADDRESS or a `ray start` on this
                # machine would otherwise be joined (a cluster the daemon then mistook for its
                # own to stop).
                ray.init(address=execution.ray_address or "local", include_dashboard=False,
                         log_to_driver=False, logging_level=logging.WARNING)
                break
            except ConnectionAbortedError:
                # Ray Client's head starts a server process per connection; on a busy head
                # one can die at birth ("Initialization failure from server"): ask again.
                if attempt == CLIENT_TRIES:
                    raise
                ray.shutdown()  # what the failed join set up
                time.sleep(CLIENT_RETRY_S * attempt)
    finally:
        if threading.current_thread() is threading.main_thread():
            for sig, handler in handlers.items():
                if handler is not None:
                    signal.signal(sig, handler)
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


class InputTooLarge(MlmasterError):
    """Without a shared filesystem, a task's input larger than a worker's object store takes."""

    code = "input_too_large"
    status = 413


def check_input_fits(size: int, nodes: list[dict[str, Any]]) -> None:
    """Raise InputTooLarge when the task's input (`size` bytes, shipped through the object
    store) passes half the smallest live machine's object store."""
    stores = [node["total"].get("object_store_memory", 0.0) for node in nodes if node["alive"]]
    limit = min(stores, default=0.0) * INPUT_STORE_SHARE
    if not stores or size <= limit:
        return
    raise InputTooLarge(
        f"the task's input is {size / MIB:.0f} MiB, more than half of a Ray worker's object "
        f"store ({limit / MIB:.0f} MiB can travel): put the state dir and the task folders on "
        "a filesystem every worker shares and set [execution] ray_shared_fs = true, or start "
        "the workers with a larger --object-store-memory")


def describe_share(execution: ExecutionConfig) -> str:
    """The hardware line for prompts: what a node gets on a worker."""
    cpus = f"{execution.ray_num_cpus:g} CPU cores"
    if not execution.ray_num_gpus:
        return f"CPU only: {cpus}, no GPU (on a Ray worker)"
    return f"{execution.ray_num_gpus:g} GPU, {cpus} (on a Ray worker)"


def cluster_nodes() -> list[dict[str, Any]]:
    """The cluster's machines: address, alive, and their total and free resources.
    Blocking. Through Ray Client (`ray://`) the figures are read on the cluster, where the
    state API they come from answers."""
    import ray
    from ray.util.client import ray as client

    if client.is_connected():  # type: ignore[no-untyped-call]
        read = ray.remote(_cluster_nodes).options(num_cpus=0, max_retries=0)
        nodes: list[dict[str, Any]] = ray.get(read.remote(), timeout=CLIENT_READ_S)
        return nodes
    return _cluster_nodes()


def _cluster_nodes() -> list[dict[str, Any]]:
    import ray

    # No public per-node figure of free resources without the dashboard's state API.
    from ray._private.state import available_resources_per_node

    free = available_resources_per_node()  # type: ignore[no-untyped-call]

    def own(resources: dict[str, float]) -> dict[str, float]:
        return {k: v for k, v in resources.items() if not k.startswith("node:")}

    def machine(node: dict[str, Any]) -> dict[str, Any]:
        total = own(node["Resources"])
        # Ray leaves a resource out of the free figures while all of it is taken: it is 0 free.
        left = free.get(node["NodeID"], {})
        return {"node_id": node["NodeID"], "ip": node["NodeManagerAddress"],
                "alive": node["Alive"], "total": total,
                "free": {k: float(left.get(k, 0.0)) for k in total}}

    return [machine(node) for node in ray.nodes()]  # type: ignore[no-untyped-call]
