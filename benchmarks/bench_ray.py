"""The Ray backend against the local one, side by side in one run (issue 16).

1. Per-node overhead: a trivial script (prints, writes metrics.json, ~0 s of work) runs N times
   on each backend, interleaved (local, Ray with a shared filesystem, Ray without), one node
   at a time. Printed as medians: submit -> `started` callback (the script's process exists),
   submit -> the script's first line, the script's last line -> `run()` returned (outputs back
   in the workspace, ready to commit), and the whole run; then the ratios Ray / local.
2. Throughput: M nodes whose script waits a fixed wall time without using the CPU
   (`select.select` on nothing) are submitted at once, on a local Ray cluster of 1, 2 and 4
   simulated workers of one CPU each (a head that runs nothing, as in tests/test_ray_executor.py)
   and, as the reference, on the local backend with max_concurrent_nodes 1, 2 and 4. Printed as
   nodes/s, speed-up against the fewest workers, and the share of the ideal (slots / job time).

Both backends go through the `Executor` protocol (`LocalExecutor`, `RayExecutor`) with the same
[execution] config (sandbox "auto", the same limits); the Ray runs join the cluster by address,
the path a daemon on a real cluster takes. Times come from time.time(): the script prints its
own, so on a real cluster they hold as far as the machines' clocks agree (NTP: a few ms).

Usage:
  .venv/bin/python benchmarks/bench_ray.py [--quick] [--nodes 20] [--throughput-nodes 16]
      [--job-seconds 2] [--workers 1,2,4]
On a real cluster (started with `ray start --head` / `ray start --address HEAD:6379`, every
worker with mlmaster-daemon installed at this version), from a machine of that cluster:
  .venv/bin/python benchmarks/bench_ray.py --address HEAD:6379 [--shared-dir /nfs/scratch]
There is then no simulated-worker sweep: overhead and throughput are measured on that cluster
(its CPUs are the slots, the local reference gets as many). Without --shared-dir (a folder
every worker sees at the same path) only `ray_shared_fs = false` is measured; what the runs
leave in each worker's temp folder is removed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import count
from pathlib import Path
from typing import Any

from mlmaster_daemon.config import Config, Settings, load_config
from mlmaster_daemon.execution.executor import Executor, LocalExecutor, NodeJob
from mlmaster_daemon.execution.lease import ProcessIdentity
from mlmaster_daemon.execution.slots import SlotPool
from mlmaster_daemon.execution.workspace import Workspace, remove_tree
from mlmaster_daemon.logs import configure_logging
from mlmaster_daemon.tasks.competition import load_task
from mlmaster_daemon.tasks.examples import build_example
from mlmaster_daemon.tasks.spec import TaskSpec

MIB = 1024 * 1024
# The object store's smallest size: the cluster shares the machine with other work.
STORE = 80 * MIB
TRIVIAL = """import json, time
print("first", time.time(), flush=True)
json.dump({"validation_metric": 0.5}, open("metrics.json", "w"))
print("last", time.time(), flush=True)
"""
# Waits `seconds` of wall time and burns no CPU (the simulated workers share a few cores).
WAITING = """import json, select, time
print("first", time.time(), flush=True)
select.select([], [], [], {seconds})
json.dump({{"validation_metric": 0.5}}, open("metrics.json", "w"))
print("last", time.time(), flush=True)
"""
LOCAL, RAY_SHARED, RAY_COPIED = "local", "ray, shared fs", "ray, no shared fs"
SPANS = ("submit->started", "submit->first line", "last line->returned", "whole run")


class BenchFailed(RuntimeError):
    """A node of the benchmark did not run cleanly: its figures would mean nothing."""


@dataclass(frozen=True)
class Timing:
    """One node's spans, in seconds, in the order of SPANS."""

    spans: tuple[float, float, float, float]


@dataclass(frozen=True)
class Backend:
    name: str
    executor: Executor
    task_id: str


@dataclass
class Bench:
    """Where the nodes' workspaces go, the task they belong to, and the config they run under."""

    root: Path
    spec: TaskSpec
    address: str
    nodes: Iterator[int] = field(default_factory=lambda: count(1))

    def config(self, **execution: object) -> Config:
        overrides: dict[str, object] = {
            "daemon.state_dir": str(self.root / "state"),
            "daemon.socket": str(self.root / "d.sock"),
            "execution.node_timeout_s": 300, "execution.kill_grace_s": 1.0}
        overrides.update({f"execution.{k}": v for k, v in execution.items()})
        return load_config(None, environ={}, overrides=overrides)

    def local(self, slots: int) -> Backend:
        config = self.config(max_concurrent_nodes=slots)
        # CPU slots only: the Ray side asks no GPU either.
        pool = SlotPool([], slots, 1)
        return Backend(LOCAL, LocalExecutor(Settings(config), pool, config.state_dir()),
                       f"bench{os.getpid()}l{slots}")

    def ray(self, shared_fs: bool, tag: str) -> Backend:
        from mlmaster_daemon.execution.ray_executor import RayExecutor

        config = self.config(backend="ray", ray_address=self.address, ray_shared_fs=shared_fs)
        name = RAY_SHARED if shared_fs else RAY_COPIED
        task_id = f"bench{os.getpid()}{'s' if shared_fs else 'c'}{tag}"
        return Backend(name, RayExecutor(Settings(config), config.state_dir()), task_id)

    def job(self, backend: Backend, code: str) -> NodeJob:
        node_id = next(self.nodes)
        ws = Workspace.create(self.root / "nodes" / f"{backend.task_id}-{node_id}",
                              self.spec.public_dir, code)
        return NodeJob(backend.task_id, node_id, self.spec, ws, lambda: 300.0)


async def run_node(backend: Backend, job: NodeJob) -> Timing:
    """Run one node to the end and measure it; BenchFailed unless its script exited 0."""
    started_at: list[float] = []

    async def started(identity: ProcessIdentity, slot: str) -> None:
        started_at.append(time.time())

    submitted = time.time()
    run = await backend.executor.run(job, started, lambda: True)
    returned = time.time()
    if run is None or run.result.exit_code != 0 or not started_at:
        said = run.result.reason if run is not None else "not run"
        raise BenchFailed(f"{backend.name}: node {job.node_id}: {said}\n"
                          f"{job.workspace.output_tail(3000)}")
    marks = dict(line.split()[:2] for line in job.workspace.stdout.read_text().splitlines()
                 if line.startswith(("first ", "last ")))
    first, last = float(marks["first"]), float(marks["last"])
    return Timing((started_at[0] - submitted, first - submitted, returned - last,
                   returned - submitted))


async def overhead(bench: Bench, backends: Sequence[Backend],
                   nodes: int) -> tuple[dict[str, Timing], dict[str, list[Timing]]]:
    """Each backend's first (cold) node, then `nodes` more each, interleaved."""
    cold = {b.name: await run_node(b, bench.job(b, TRIVIAL)) for b in backends}
    warm: dict[str, list[Timing]] = {b.name: [] for b in backends}
    for _ in range(nodes):
        for backend in backends:
            warm[backend.name].append(await run_node(backend, bench.job(backend, TRIVIAL)))
    return cold, warm


class _Probe:
    """An actor that does nothing: what creating one costs is Ray's own (a worker process)."""

    def pid(self) -> int:
        return os.getpid()


def _probe() -> int:
    return os.getpid()


async def ray_floor(rounds: int) -> dict[str, float]:
    """Ray's own cost, without mlmaster code, medians in seconds: an empty 1-CPU task's round
    trip (a pooled worker process), then a new 1-CPU actor's creation and first call (a new
    worker process, as a node's actor needs). Not interleaved: a killed actor's worker would
    be the next task's to replace."""
    import ray

    task = ray.remote(_probe).options(num_cpus=1, scheduling_strategy="SPREAD")
    actor_class: Any = ray.remote(_Probe).options(num_cpus=1, scheduling_strategy="SPREAD")
    tasks: list[float] = []
    actors: list[float] = []
    # One at once per CPU, so that every worker has a pooled process before the timed ones.
    slots = int(ray.cluster_resources().get("CPU", 1))  # type: ignore[no-untyped-call]
    await asyncio.gather(*(task.remote() for _ in range(slots)))
    for _ in range(rounds):
        begun = time.perf_counter()
        await task.remote()
        tasks.append(time.perf_counter() - begun)
    for _ in range(rounds):
        begun = time.perf_counter()
        actor = actor_class.remote()
        await actor.pid.remote()
        actors.append(time.perf_counter() - begun)
        ray.kill(actor, no_restart=True)
    return {"empty task round trip": statistics.median(tasks),
            "new actor + first call": statistics.median(actors)}


async def throughput(bench: Bench, backend: Backend, nodes: int, job_s: float) -> float:
    """Nodes per second with `nodes` submitted at once."""
    code = WAITING.format(seconds=job_s)
    jobs = [bench.job(backend, code) for _ in range(nodes)]
    begun = time.perf_counter()
    await asyncio.gather(*(run_node(backend, job) for job in jobs))
    return nodes / (time.perf_counter() - begun)


async def warm_up(bench: Bench, backend: Backend, slots: int) -> None:
    """One short node per slot at once, so every worker has run one before it is timed."""
    code = WAITING.format(seconds=0.2)
    await asyncio.gather(*(run_node(backend, bench.job(backend, code)) for _ in range(slots)))


def print_overhead(cold: dict[str, Timing], warm: dict[str, list[Timing]], nodes: int) -> None:
    print(f"per-node overhead, trivial script, {nodes} nodes per backend, interleaved "
          "(median, ms):")
    print(f"  {'backend':<20}" + "".join(f"{s:>21}" for s in SPANS))
    medians = {name: [statistics.median(t.spans[k] for t in runs) for k in range(len(SPANS))]
               for name, runs in warm.items()}
    for name, figures in medians.items():
        print(f"  {name:<20}" + "".join(f"{f * 1000:21.1f}" for f in figures))
    for name, figures in medians.items():
        if name != LOCAL and LOCAL in medians:
            ratios = [f / max(base, 1e-6) for f, base in zip(figures, medians[LOCAL],
                                                               strict=True)]
            print(f"  ratio {name} / local:" + "".join(f" {s} {r:.2f}x;"
                                                        for s, r in zip(SPANS, ratios,
                                                                        strict=True)))
    print("  first node of each (cold: Ray worker start, input archive put), whole run: "
          + ", ".join(f"{name} {t.spans[3] * 1000:.0f} ms" for name, t in cold.items()))


def print_floor(floor: dict[str, float], rounds: int) -> None:
    print(f"  Ray's own floor (no mlmaster code), median of {rounds}: "
          + ", ".join(f"{name} {seconds * 1000:.1f} ms" for name, seconds in floor.items()))


def print_throughput(rows: dict[int, dict[str, float]], nodes: int, job_s: float) -> None:
    print(f"throughput, {nodes} nodes of {job_s:g} s waiting each, submitted at once "
          "(nodes/s; speed-up vs the fewest slots; share of slots/job time):")
    names = list(next(iter(rows.values())))
    print(f"  {'slots':<6}" + "".join(f"{n:>34}" for n in names)
          + "".join(f"{n + ' / local':>26}" for n in names if n != LOCAL))
    base = rows[min(rows)]
    for slots, figures in rows.items():
        cells = [f"{figures[n]:10.3f} {figures[n] / base[n]:6.2f}x "
                 f"{figures[n] * job_s / slots:5.0%}" for n in names]
        ratios = [f"{figures[n] / figures[LOCAL]:25.2f}x" for n in names if n != LOCAL]
        print(f"  {slots:<6}" + "".join(f"{c:>34}" for c in cells) + "".join(ratios))


@contextmanager
def local_cluster(workers: int) -> Iterator[Any]:
    """A Ray cluster on this machine, joined: a head that runs nothing, `workers` workers of
    one CPU. Shut down, and left, on the way out."""
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "include_dashboard": False, "object_store_memory": STORE})
    try:
        grow(cluster, workers)
        ray.init(address=cluster.address, log_to_driver=False, logging_level=logging.WARNING)
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()  # type: ignore[no-untyped-call]


def grow(cluster: Any, more: int) -> None:
    for _ in range(more):
        cluster.add_node(num_cpus=1, object_store_memory=STORE)
    cluster.wait_for_nodes()


def clean_workers(task_ids: Sequence[str]) -> None:
    """Remove what runs without a shared filesystem left in each worker machine's temp folder
    (one removal per machine: simulated workers share this machine's)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from mlmaster_daemon.execution.ray_worker import worker_root

    def remove(ids: Sequence[str]) -> None:
        for task_id in ids:
            with contextlib.suppress(FileNotFoundError):
                remove_tree(worker_root(task_id))

    remote = ray.remote(remove)
    machines = {node["NodeManagerAddress"]: node["NodeID"]
                for node in ray.nodes() if node["Alive"]}  # type: ignore[no-untyped-call]
    for node_id in machines.values():
        ray.get(remote.options(num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(
            node_id, soft=False)).remote(list(task_ids)))
    remove(task_ids)


@dataclass(frozen=True)
class Sizes:
    nodes: int
    throughput_nodes: int
    job_s: float
    # Whether throughput is measured without a shared filesystem too (not in --quick).
    copied_throughput: bool


async def sweep(bench: Bench, widths: Sequence[int], sizes: Sizes) -> None:
    """Overhead on the first width, then throughput at each width, growing one cluster."""
    task_ids: list[str] = []
    with local_cluster(widths[0]) as cluster:
        bench.address = cluster.address
        try:
            shared, copied = bench.ray(True, "o"), bench.ray(False, "o")
            task_ids.append(copied.task_id)
            cold, warm = await overhead(bench, [bench.local(1), shared, copied], sizes.nodes)
            print_overhead(cold, warm, sizes.nodes)
            print_floor(await ray_floor(sizes.nodes), sizes.nodes)
            rows: dict[int, dict[str, float]] = {}
            for width in widths:
                grow(cluster, width - len(cluster.worker_nodes))
                measured = [bench.local(width), bench.ray(True, f"t{width}")]
                if sizes.copied_throughput:
                    measured.append(bench.ray(False, f"t{width}"))
                    task_ids.append(measured[-1].task_id)
                rows[width] = await throughputs(bench, measured, width, sizes)
            print_throughput(rows, sizes.throughput_nodes, sizes.job_s)
        finally:
            clean_workers(task_ids)


async def throughputs(bench: Bench, backends: Sequence[Backend], slots: int,
                      sizes: Sizes) -> dict[str, float]:
    """Each backend warmed up, then its nodes/s, one backend after the other."""
    for backend in backends:
        await warm_up(bench, backend, slots)
    return {b.name: await throughput(bench, b, sizes.throughput_nodes, sizes.job_s)
            for b in backends}


async def on_cluster(bench: Bench, shared_fs: bool, sizes: Sizes) -> None:
    """The same figures on a cluster that was already there (no sweep)."""
    import ray

    ray.init(address=bench.address, log_to_driver=False, logging_level=logging.WARNING)
    task_ids: list[str] = []
    try:
        slots = int(ray.cluster_resources().get("CPU", 0))  # type: ignore[no-untyped-call]
        if slots < 1:
            raise BenchFailed(f"the cluster at {bench.address} offers no CPU")
        machines = len(ray.nodes())  # type: ignore[no-untyped-call]
        print(f"cluster {bench.address}: {machines} machines, {slots} CPUs")
        copied = bench.ray(False, "o")
        task_ids.append(copied.task_id)
        backends = [bench.local(1), *([bench.ray(True, "o")] if shared_fs else []), copied]
        cold, warm = await overhead(bench, backends, sizes.nodes)
        print_overhead(cold, warm, sizes.nodes)
        print_floor(await ray_floor(sizes.nodes), sizes.nodes)
        copied = bench.ray(False, "t")
        task_ids.append(copied.task_id)
        measured = [bench.local(slots), *([bench.ray(True, "t")] if shared_fs else []), copied]
        # Every slot runs at least two nodes.
        sizes = dataclasses.replace(sizes, throughput_nodes=max(sizes.throughput_nodes,
                                                                2 * slots))
        row = await throughputs(bench, measured, slots, sizes)
        print_throughput({slots: row}, sizes.throughput_nodes, sizes.job_s)
    finally:
        clean_workers(task_ids)
        ray.shutdown()


def widths(text: str) -> list[int]:
    values = sorted({int(part) for part in text.split(",") if part.strip()})
    if not values or values[0] < 1:
        raise argparse.ArgumentTypeError("a list of worker counts, such as 1,2,4")
    return values


async def main(args: argparse.Namespace) -> None:
    configure_logging("warning")
    sizes = Sizes(nodes=args.nodes or (4 if args.quick else 20),
                  throughput_nodes=args.throughput_nodes or (8 if args.quick else 16),
                  job_s=args.job_seconds or (0.5 if args.quick else 2.0),
                  copied_throughput=not args.quick)
    base = args.shared_dir or os.environ.get("TMPDIR") or "/tmp"
    with tempfile.TemporaryDirectory(prefix="mlm-bench-ray-", dir=base) as tmp:
        root = Path(tmp)
        spec = load_task(build_example("breast_cancer", root / "competition"))
        bench = Bench(root, spec, args.address)
        began = time.perf_counter()
        if args.address:
            await on_cluster(bench, bool(args.shared_dir), sizes)
        else:
            await sweep(bench, args.workers, sizes)
        print(f"(benchmark took {time.perf_counter() - began:.0f} s)")


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="small sizes: 4 overhead nodes, 8 throughput nodes of 0.5 s, "
                             "throughput with a shared filesystem only (about 2 minutes)")
    parser.add_argument("--nodes", type=int, default=0,
                        help="trivial nodes per backend for the overhead (default 20)")
    parser.add_argument("--throughput-nodes", type=int, default=0,
                        help="nodes per throughput run (default 16)")
    parser.add_argument("--job-seconds", type=float, default=0.0,
                        help="wall time of each throughput node's script (default 2)")
    parser.add_argument("--workers", type=widths, default=[1, 2, 4],
                        help="simulated worker counts, comma-separated (default 1,2,4)")
    parser.add_argument("--address", default="",
                        help="join this cluster (ray://HOST:PORT or HOST:PORT) instead")
    parser.add_argument("--shared-dir", default="",
                        help="with --address: a folder every worker sees at the same path")
    return parser


if __name__ == "__main__":
    arguments = parser().parse_args()
    if arguments.shared_dir and not arguments.address:
        sys.exit("--shared-dir goes with --address")
    asyncio.run(main(arguments))
