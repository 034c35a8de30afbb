"""`mlmaster doctor`: checks what the daemon needs, one line each, and says what to fix
(on the Ray backend the cluster too: `ray_doctor.py`)."""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass

from mlmaster_daemon.coders.choice import make_coders
from mlmaster_daemon.config import Config, Settings
from mlmaster_daemon.errors import MlmasterError
from mlmaster_daemon.execution.limits import Machine, job_limits
from mlmaster_daemon.tokenizer import TiktokenCounter


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


def _state_dir(config: Config) -> Check:
    path = config.state_dir()
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent  # the daemon creates what is missing below the first existing one
    writable = os.access(probe, os.W_OK)
    return Check("state dir", writable,
                 f"{path}" + ("" if writable else " is not writable; pass --state-dir"))


def _tokenizer(config: Config) -> Check:
    try:
        TiktokenCounter(config.memory.encoding).load()
    except MlmasterError as exc:
        return Check("tokenizer", False, exc.message)
    return Check("tokenizer", True, f"{config.memory.encoding} loaded offline")


def _job_limits(config: Config) -> Check:
    """What each node's script may use here, with "auto" limits worked out for this machine
    (CPU slots; a GPU machine has one slot per GPU share instead)."""
    execution = config.execution
    probe = config.state_dir()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    limits = job_limits(execution, Machine.read(probe, execution.max_concurrent_nodes))

    def mib(value: int) -> str:
        return "no limit" if value == 0 else f"{value} MiB"

    return Check("job limits", True,
                 f"memory {mib(limits.memory_mb)}, one file {mib(limits.max_file_size_mb)}, "
                 f"workspace {mib(limits.max_workspace_mb)}, {limits.max_processes or 'any'} "
                 f"processes (per node, {execution.max_concurrent_nodes} CPU slots)")


def _gpu(config: Config) -> Check:
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            count = pynvml.nvmlDeviceGetCount()
            names = [pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(i))
                     for i in range(count)]
        finally:
            pynvml.nvmlShutdown()
    except Exception as exc:
        # No driver or no NVML library: the daemon runs nodes on CPU slots.
        where = ("nodes run on the Ray cluster" if config.execution.backend == "ray"
                 else "nodes run on CPU slots")
        return Check("gpu", True, f"no GPU usable through NVML ({type(exc).__name__}); "
                                  f"{where}")
    return Check("gpu", True, f"{count} GPU(s): {', '.join(map(str, names))}")


async def _endpoints(config: Config) -> list[Check]:
    if config.llm.code is None:
        return [Check("llm", True, "no [llm.code] configured: the built-in offline coder is "
                                   "used")]
    try:
        coders = make_coders(Settings(config))
    except MlmasterError as exc:
        return [Check("llm", False, exc.message)]
    assert coders.llm is not None
    checks = []
    try:
        for endpoint in coders.llm.endpoints:
            error = await endpoint.probe()
            checks.append(Check(f"llm {endpoint.role}", error is None,
                                f"{endpoint.cfg.base_url} model {endpoint.cfg.model}: "
                                + ("answered" if error is None else error)))
    finally:
        await coders.close()
    return checks


def run_doctor(config: Config) -> list[Check]:
    checks = [_state_dir(config), _tokenizer(config), _job_limits(config), _gpu(config)]
    if config.execution.backend == "ray":
        # Imported here: it needs Ray, which the local backend does without.
        from mlmaster_daemon.ray_doctor import cluster_checks

        checks.extend(cluster_checks(config.execution))
    checks.extend(asyncio.run(_endpoints(config)))
    return checks
