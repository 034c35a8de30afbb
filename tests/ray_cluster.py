"""A real Ray cluster on this machine for the Ray tests: a head that runs nothing (with a Ray
Client server) and two workers of one CPU each, one of them advertising `accel` (standing in
for a GPU). Import it after `pytest.importorskip("ray")`."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from dataclasses import dataclass

from ray.cluster_utils import Cluster

MIB = 1024 * 1024
# The object store's smallest size: the cluster shares a 2-core machine with other work.
STORE = 80 * MIB


@dataclass
class Workers:
    cluster: Cluster
    plain: str
    accel: str
    # The head's Ray Client server: ray://127.0.0.1:<port>.
    client_port: int


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


@contextlib.contextmanager
def local_cluster() -> Iterator[Workers]:
    """The cluster, up until the block ends."""
    client_port = free_port()
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "include_dashboard": False, "object_store_memory": STORE,
        "ray_client_server_port": client_port})
    try:
        plain = cluster.add_node(num_cpus=1, object_store_memory=STORE)
        accel = cluster.add_node(num_cpus=1, resources={"accel": 1}, object_store_memory=STORE)
        cluster.wait_for_nodes()
        yield Workers(cluster, plain.node_id, accel.node_id, client_port)
    finally:
        cluster.shutdown()  # type: ignore[no-untyped-call]
