"""The real NVML probe on a real GPU; skipped where NVML does not initialise."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import sys
from collections.abc import Iterator

import pytest

from mlmaster_daemon.execution.gpu import NvmlProbe, open_probe
from mlmaster_daemon.execution.slots import GpuSampler, SlotPool


def _nvml_reason() -> str:
    """Why NVML is unusable here, or "" when it works."""
    try:
        import pynvml

        pynvml.nvmlInit()
        pynvml.nvmlShutdown()
    except Exception as exc:
        return f"NVML does not initialise: {type(exc).__name__}"
    return ""


_REASON = _nvml_reason()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(bool(_REASON), reason=_REASON)]

# Holds ~1 GiB of the leased GPU until stdin closes.
_JOB = """
import sys, torch
block = torch.empty(1024 ** 3, dtype=torch.uint8, device="cuda")
torch.cuda.synchronize()
print("ready", flush=True)
sys.stdin.read()
"""


@pytest.fixture
def probe() -> Iterator[NvmlProbe]:
    probe = NvmlProbe()
    yield probe
    probe.close()


def test_open_probe_finds_the_gpus() -> None:
    probe, reason = open_probe()
    try:
        assert isinstance(probe, NvmlProbe), reason
        assert "GPU" in reason
    finally:
        probe.close()


def test_discover_reports_sane_gpus(probe: NvmlProbe) -> None:
    gpus = probe.discover()
    assert gpus
    allowed = os.sched_getaffinity(0)
    for gpu in gpus:
        assert gpu.uuid.startswith("GPU-")
        assert gpu.name
        assert 1024 <= gpu.memory_total_mb <= 4 * 1024 * 1024
        assert gpu.local_cpus and set(gpu.local_cpus) <= allowed
    assert len({g.uuid for g in gpus}) == len(gpus)


def test_sample_reports_memory_and_utilisation(probe: NvmlProbe) -> None:
    gpus = {g.uuid: g for g in probe.discover()}
    samples = probe.sample()
    assert {s.uuid for s in samples} == set(gpus)
    for sample in samples:
        assert sample.memory_used_mb is not None and sample.memory_free_mb is not None
        total = gpus[sample.uuid].memory_total_mb
        assert 0 < sample.memory_free_mb <= total
        assert 0 <= sample.memory_used_mb <= total
        assert sample.utilization_pct is not None and 0 <= sample.utilization_pct <= 100


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch is not installed")
async def test_two_jobs_sharing_a_gpu_are_attributed_to_their_pids(probe: NvmlProbe) -> None:
    gpus = (await asyncio.to_thread(probe.discover))[:1]
    pool = SlotPool(gpus, cpu_slots=1, slots_per_gpu=2)
    sampler = GpuSampler(probe, pool, interval_s=0.5, timeout_s=30, gpus=gpus)
    leases = [await pool.acquire("a"), await pool.acquire("b")]
    assert leases[0].gpu_uuid == leases[1].gpu_uuid == gpus[0].uuid
    jobs = [await asyncio.create_subprocess_exec(
                sys.executable, "-c", _JOB, env={**os.environ, **lease.env()},
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
            for lease in leases]
    try:
        for job in jobs:
            assert job.stdout is not None
            line = await asyncio.wait_for(job.stdout.readline(), 120)
            assert line.strip() == b"ready"
        assert await sampler.sample_once()
        assert await sampler.sample_once()
        processes = sampler.latest()[0].processes
        for job in jobs:
            # NVML reports host pids; they match ours unless the test runs in a pid namespace.
            assert processes.get(job.pid, 0) >= 1024
            peak, seconds = sampler.usage({job.pid})
            assert peak >= 1024 and seconds == pytest.approx(1.0)
        assert sampler.usage({jobs[0].pid, jobs[1].pid})[0] >= 2048
    finally:
        for job in jobs:
            with contextlib.suppress(ProcessLookupError):
                job.kill()
            await job.wait()
