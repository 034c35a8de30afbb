"""`mlmaster doctor` on the Ray backend: whether the configured cluster answers, which live
machines it has and whether one of them offers what a node asks, and whether each machine
runs the daemon's Python, Ray and mlmaster-daemon. Every wait is bounded: a dead address or a
machine that cannot run the probe is reported, never waited on for ever."""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from mlmaster_daemon.config import ExecutionConfig
from mlmaster_daemon.doctor import Check
from mlmaster_daemon.errors import MlmasterError
from mlmaster_daemon.execution.ray_cluster import (
    NoWorkerFits,
    asked_resources,
    check_fits,
    cluster_nodes,
    connect,
    disconnect,
)

# How long doctor waits to join a cluster (and to leave it). The head's port answered a TCP
# handshake first; Ray Client starts a server process per connection, slow on a busy head.
JOIN_TIMEOUT_S = 30.0
CLIENT_JOIN_TIMEOUT_S = 90.0
# Starting a single-machine cluster (ray_address = "") takes longer on a loaded machine.
START_TIMEOUT_S = 60.0
# The TCP handshake with the head's port, before Ray is asked to join it.
CONNECT_TIMEOUT_S = 5.0
# How long the version probes may take, all machines together.
PROBE_TIMEOUT_S = 30.0
GIB = 1024.0**3
MIB = 1024.0**2
_CONFIG_KEYS = {"CPU": "ray_num_cpus", "GPU": "ray_num_gpus", "memory": "ray_memory_mb"}


class ClusterUnreachable(MlmasterError):
    """The configured Ray cluster did not answer (or could not be started)."""

    code = "ray_unreachable"
    status = 503


@dataclass(frozen=True)
class MachineReport:
    """What one machine runs, as the version probe found it there."""

    python: str
    ray: str
    # "" when mlmaster_daemon does not import there (`import_error` says why).
    mlmaster: str
    import_error: str = ""

    @classmethod
    def of(cls, found: dict[str, str]) -> MachineReport:
        return cls(found["python"], found["ray"], found["mlmaster"], found["error"])


def make_probe() -> Callable[[], dict[str, str]]:
    """The version probe. Built inside a function so that Ray ships its code by value: a
    machine runs it even where mlmaster_daemon is another version or does not import at all
    (a module-level function would be imported from mlmaster_daemon there)."""

    def probe() -> dict[str, str]:
        import platform

        import ray

        found = {"python": platform.python_version(), "ray": str(ray.__version__),
                 "mlmaster": "", "error": ""}
        try:
            import mlmaster_daemon

            found["mlmaster"] = str(mlmaster_daemon.__version__)
        except Exception as exc:
            found["error"] = f"{type(exc).__name__}: {exc}"[:300]
        return found

    return probe


def local_report() -> MachineReport:
    """What the daemon's own machine runs."""
    return MachineReport.of(make_probe()())


def cluster_checks(execution: ExecutionConfig, join_timeout_s: float | None = None,
                   probe_timeout_s: float = PROBE_TIMEOUT_S) -> list[Check]:
    """Join (or start) the configured cluster, check it, and leave it as it was found: a
    cluster doctor joined is left, one it started is stopped. Blocking."""
    import ray

    if ray.is_initialized():
        return _checks(execution, Check("ray cluster", True, "already joined by this process"),
                       probe_timeout_s)
    session = _Session(execution)
    try:
        reachable = session.join(join_timeout_s)
    except ClusterUnreachable as exc:
        return [Check("ray cluster", False, exc.message)]
    try:
        return _checks(execution, reachable, probe_timeout_s)
    finally:
        session.leave()


def _checks(execution: ExecutionConfig, reachable: Check,
            probe_timeout_s: float) -> list[Check]:
    nodes = cluster_nodes()
    checks = [reachable, *machine_checks(nodes), resources_check(execution, nodes)]
    if execution.ray_address:
        checks.extend(version_checks(nodes, probe_timeout_s))
    else:
        checks.append(Check("ray versions", True, "the single-machine cluster runs this "
                                                  "Python and this install"))
    return checks


class _Session:
    """Doctor's connection to the cluster, held by a thread of its own from join to leave:
    doctor stops waiting for a join that does not end (`ray.init` on an address where no
    GCS answers retries for ever), and a cluster it starts lives as long as the thread that
    started it (Ray ends the processes it starts with their starting thread)."""

    def __init__(self, execution: ExecutionConfig) -> None:
        self.execution = execution
        self.error: BaseException | None = None
        self.joined = threading.Event()
        self.done = threading.Event()
        # A daemon thread: one stuck in `ray.init` does not keep doctor from exiting.
        self.thread = threading.Thread(target=self._hold, name="ray doctor", daemon=True)

    def _hold(self) -> None:
        try:
            with _quiet_thread_warning():
                connect(self.execution)
        except BaseException as exc:
            self.error = exc
            return
        finally:
            self.joined.set()
        self.done.wait()
        disconnect()

    def join(self, timeout_s: float | None) -> Check:
        """Join within `timeout_s` (a default by address), or raise ClusterUnreachable."""
        import ray

        address = self.execution.ray_address
        if address not in ("", "auto"):
            _reach(address)
        wait_s = timeout_s if timeout_s is not None else (
            CLIENT_JOIN_TIMEOUT_S if address.startswith("ray://")
            else JOIN_TIMEOUT_S if address else START_TIMEOUT_S)
        self.thread.start()
        if not self.joined.wait(wait_s):
            # A join that ends after all is left at once: this process stays off the cluster.
            self.done.set()
            raise ClusterUnreachable(f"no answer within {wait_s:.0f} s from "
                                     f"{address or 'the cluster it started'}: {_hint(address)}")
        if self.error is not None:
            reason = f"{type(self.error).__name__}: {self.error}".splitlines()[0][:300]
            if not address:
                raise ClusterUnreachable(f"could not start a single-machine Ray cluster "
                                         f"({reason}); see `ray start --head` for what stops it")
            raise ClusterUnreachable(f"could not join {address} ({reason}): {_hint(address)}")
        if not address:
            return Check("ray cluster", True, 'ray_address = "": the daemon starts its own '
                                              "single-machine cluster; started one for this "
                                              f"check (Ray {ray.__version__})")
        return Check("ray cluster", True, f"joined {address} (Ray {ray.__version__})")

    def leave(self) -> None:
        """Leave the cluster (stopping it if doctor started it), waiting a bounded time."""
        self.done.set()
        self.thread.join(JOIN_TIMEOUT_S)


@contextmanager
def _quiet_thread_warning() -> Iterator[None]:
    """Ray warns that a join outside the main thread sets no SIGTERM handler: doctor needs
    none, and its output should show only what is wrong."""

    def keep(record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("SIGTERM handler is not set")

    logger = logging.getLogger("ray._private.worker")
    logger.addFilter(keep)
    try:
        yield
    finally:
        logger.removeFilter(keep)


def _reach(address: str) -> None:
    """Raise ClusterUnreachable unless the head's port takes a TCP connection (quickly)."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ClusterUnreachable(f"cannot reach the Ray head at {address} ({reason}): "
                                 f"{_hint(address)}") from None


def _hint(address: str) -> str:
    if address == "auto":
        return ("start a cluster on this machine with `ray start --head`, or set [execution] "
                "ray_address to the head's HOST:PORT")
    port = address.rpartition(":")[2]
    client = address.startswith("ray://")
    return (f"start the head there with `ray start --head"
            f"{' --ray-client-server-port=' if client else ' --port='}{port}`, check "
            "[execution] ray_address (HOST:PORT as `ray start --head` prints it, or "
            f"ray://HOST:10001 for Ray Client) and that port {port} is open from this machine")


def machine_checks(nodes: list[dict[str, Any]]) -> list[Check]:
    """One line per live machine: where it is and what it has in all (and free now)."""
    live = [node for node in nodes if node["alive"]]
    checks = [Check("ray machine", True, f"{_name(node)}: {_shown(node['total'])} "
                                         f"({_shown(node['free'])} free)")
              for node in live]
    dead = len(nodes) - len(live)
    if dead:
        checks.append(Check("ray machine", True, f"{dead} dead machine(s) not counted"))
    if not live:
        checks.append(Check("ray machine", False, "the cluster has no live machine: start "
                                                  "workers with `ray start --address=HEAD`"))
    return checks


def resources_check(execution: ExecutionConfig, nodes: list[dict[str, Any]]) -> Check:
    """Whether some live machine offers all that one node asks; if not, which key to lower."""
    asked = asked_resources(execution)
    shown = ", ".join(_amount(name, amount) for name, amount in sorted(asked.items()))
    try:
        check_fits(asked, nodes)
    except NoWorkerFits:
        return Check("ray resources", False, f"a node asks {shown}; " + _too_much(asked, nodes))
    fitting = sum(1 for node in nodes if node["alive"] and all(
        node["total"].get(name, 0.0) >= amount for name, amount in asked.items()))
    return Check("ray resources", True, f"a node asks {shown}: {fitting} live machine(s) "
                                        "offer it")


def _too_much(asked: dict[str, float], nodes: list[dict[str, Any]]) -> str:
    live = [node for node in nodes if node["alive"]]
    missing = []
    for name, amount in sorted(asked.items()):
        most = max((node["total"].get(name, 0.0) for node in live), default=0.0)
        if most < amount:
            best = f"the most is {_amount(name, most)}" if most else "none has any"
            missing.append(f"no live machine offers {_amount(name, amount)} ({best}): lower "
                           f"[execution] {_config_key(name)} or add a worker that has it "
                           f"({_start_flag(name)})")
    if missing:
        return "; ".join(missing)
    keys = ", ".join(_config_key(name) for name in sorted(asked))
    return (f"each is offered somewhere but no one live machine offers them all: lower one "
            f"of [execution] {keys}, or add a worker that has them all")


def version_checks(nodes: list[dict[str, Any]],
                   timeout_s: float = PROBE_TIMEOUT_S) -> list[Check]:
    """Run the version probe on each live machine (pinned to it, asking no CPU) and compare
    with this machine; a machine whose probe does not answer in time is not checked."""
    import ray
    from ray.exceptions import RayError
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = local_report()
    remote = ray.remote(make_probe())
    live = [node for node in nodes if node["alive"]]
    refs = [remote.options(
        num_cpus=0, max_retries=0, name="mlmaster doctor version probe",
        scheduling_strategy=NodeAffinitySchedulingStrategy(node["node_id"], soft=False),
    ).remote() for node in live]
    ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
    done = set(ready)
    checks = []
    for node, ref in zip(live, refs, strict=True):
        if ref not in done:
            ray.cancel(ref, force=True)
            checks.append(Check("ray versions", False, f"{_name(node)}: not checked, the "
                                f"probe got no answer within {timeout_s:.0f} s (no worker "
                                "process could start there?)"))
            continue
        try:
            there = MachineReport.of(ray.get(ref))
        except RayError as exc:
            reason = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
            checks.append(Check("ray versions", False, f"{_name(node)}: the probe failed "
                                                       f"({reason})"))
            continue
        checks.append(compare_versions(_name(node), here, there))
    return checks


def compare_versions(machine: str, here: MachineReport, there: MachineReport) -> Check:
    """One machine's versions against the daemon's: Python (to the minor version, as Ray
    requires), Ray and mlmaster-daemon must match, and mlmaster_daemon must import there."""
    same = f"pip install 'mlmaster-daemon[ray]=={here.mlmaster}' 'ray=={here.ray}'"
    if there.import_error or not there.mlmaster:
        return Check("ray versions", False,
                     f"{machine}: mlmaster_daemon does not import there "
                     f"({there.import_error or 'no version'}); this machine runs "
                     f"mlmaster-daemon {here.mlmaster}: install the same version there: {same}")
    wrong = []
    python_differs = _minor(there.python) != _minor(here.python)
    if python_differs:
        wrong.append(f"Python {there.python} (this machine: {here.python})")
    if there.ray != here.ray:
        wrong.append(f"Ray {there.ray} (this machine: {here.ray})")
    if there.mlmaster != here.mlmaster:
        wrong.append(f"mlmaster-daemon {there.mlmaster} (this machine: {here.mlmaster})")
    if wrong:
        python = f" on Python {_minor(here.python)}" if python_differs else ""
        return Check("ray versions", False, f"{machine} runs {', '.join(wrong)}: install the "
                                            f"same versions there{python}: {same}")
    return Check("ray versions", True, f"{machine}: Python {there.python}, Ray {there.ray}, "
                                       f"mlmaster-daemon {there.mlmaster}, as here")


def _minor(version: str) -> str:
    return ".".join(version.split(".")[:2])


def _name(node: dict[str, Any]) -> str:
    return f"{node['ip']} ({node['node_id'][:12]})"


def _config_key(resource: str) -> str:
    return _CONFIG_KEYS.get(resource, f"ray_resources.{resource}")


def _start_flag(resource: str) -> str:
    flags = {"CPU": "`ray start --num-cpus`", "GPU": "`ray start --num-gpus`",
             "memory": "`ray start --memory`"}
    return flags.get(resource, "`ray start --resources`")


def _amount(name: str, amount: float) -> str:
    if name == "memory":
        return f"memory={amount / MIB:.0f} MiB"
    return f"{name}={amount:g}"


def _shown(resources: dict[str, float]) -> str:
    """CPU, GPU and memory first, then custom resources; the object store is left out."""
    parts = [f"CPU {resources.get('CPU', 0.0):g}", f"GPU {resources.get('GPU', 0.0):g}"]
    if "memory" in resources:
        memory = resources["memory"]
        parts.append(f"memory {memory / GIB:.1f} GiB" if memory >= GIB
                     else f"memory {memory / MIB:.0f} MiB")
    parts.extend(f"{name}={amount:g}" for name, amount in sorted(resources.items())
                 if name not in ("CPU", "GPU", "memory", "object_store_memory"))
    return ", ".join(parts)
