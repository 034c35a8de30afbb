"""`python -m tools.chaos` (or `scripts/chaos`): the chaos run's command line. Exit code 0 when
every check holds."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from mlmaster_daemon.tasks.examples import EXAMPLES
from tools.chaos.run import ChaosRun, say
from tools.chaos.settings import MOMENTS, ChaosSettings

# The object store's smallest size: the cluster shares the machine with the daemon.
RAY_STORE = 80 * 1024 * 1024


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scripts/chaos",
        description="SIGKILL the daemon at random moments while it searches an example task, "
                    "restart it each time, and check that no finished node is lost or "
                    "duplicated and no node process is orphaned. Exit code 0 when all hold.")
    parser.add_argument("--example", default="breast_cancer", choices=sorted(EXAMPLES))
    parser.add_argument("--steps", type=int, default=16, help="steps of each task")
    parser.add_argument("--kills", type=int, default=20, help="SIGKILLs of the daemon")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill moments")
    parser.add_argument("--parallel", type=int, default=2, help="nodes run at once")
    parser.add_argument("--sandbox", default="auto", choices=("auto", "bwrap", "none"),
                        help="the daemon's [execution] sandbox")
    parser.add_argument("--moments", default=",".join(MOMENTS),
                        help=f"comma list of kill moments to use (default: all of "
                             f"{', '.join(MOMENTS)})")
    parser.add_argument("--state-dir", type=Path,
                        help="the daemon's state dir (default: a fresh one in a temp dir)")
    parser.add_argument("--finish-timeout", type=float, default=900.0,
                        help="seconds the tasks may take to finish after the last kill")
    parser.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                        help="run the nodes on a Ray cluster: that of ADDRESS, or one the "
                             "chaos run starts (a head and --parallel one-CPU workers)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the temp dir (state, daemon log) even when the run passes")
    return parser


@contextlib.contextmanager
def ray_cluster(settings: ChaosSettings) -> Iterator[str | None]:
    """The Ray cluster's address: the one asked, or one started here for the run."""
    if settings.ray_address != "":
        yield settings.ray_address
        return
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "include_dashboard": False, "object_store_memory": RAY_STORE})
    try:
        for _ in range(settings.parallel):
            cluster.add_node(num_cpus=1, object_store_memory=RAY_STORE)
        cluster.wait_for_nodes()
        yield str(cluster.address)
    finally:
        cluster.shutdown()  # type: ignore[no-untyped-call]


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    moments = tuple(m.strip() for m in args.moments.split(",") if m.strip())
    if not moments or set(moments) - set(MOMENTS) or moments == ("start-up",):
        parser.error(f"--moments: choose from {', '.join(MOMENTS)} (not start-up alone)")
    settings = ChaosSettings(
        example=args.example, steps=args.steps, kills=args.kills, seed=args.seed,
        parallel=args.parallel, sandbox=args.sandbox, state_dir=args.state_dir,
        finish_timeout_s=args.finish_timeout, keep=args.keep, moments=moments,
        ray_address=args.ray)
    # A short path: the socket lives here and Unix socket paths must fit in 107 bytes.
    workdir = Path(tempfile.mkdtemp(prefix="mlm-chaos-"))
    run = ChaosRun(settings, workdir)
    say(f"chaos: {settings.example}, {settings.steps} steps, {settings.kills} kills "
        f"(seed {settings.seed}), parallel {settings.parallel}, sandbox {settings.sandbox}, "
        f"state dir {run.state_dir}")
    with ray_cluster(settings) as address:
        if address is not None:
            run = ChaosRun(dataclasses.replace(settings, ray_address=address), workdir)
            say(f"nodes run on the Ray cluster at {address}")
        report = asyncio.run(run.run())
    for line in report.lines():
        say(line)
    if report.passed and not settings.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        say(f"the run's files (daemon log, competition, state) are in {workdir}")
    return 0 if report.passed else 1
