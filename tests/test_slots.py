"""Slots, fair leasing, memory admission and the GPU sampler, with a fake probe; the NVML
probe against a stand-in pynvml; process identities with real child processes."""

from __future__ import annotations

import asyncio
import ctypes
import dataclasses
import os
import subprocess
import sys
import threading
from types import SimpleNamespace
from typing import Any

import pynvml
import pytest

from mlmaster_daemon.execution.gpu import (
    GpuInfo,
    GpuSample,
    NullProbe,
    NvmlProbe,
    is_same_process,
    open_probe,
    process_identity,
    read_boot_id,
)
from mlmaster_daemon.execution.lease import Lease
from mlmaster_daemon.execution.slots import GpuSampler, SlotPool, is_cuda_oom, partition_cpus

GPU0 = GpuInfo(0, "GPU-aaaa", "Fake H100", 80_000, local_cpus=(4, 5, 6, 7))
GPU1 = GpuInfo(1, "GPU-bbbb", "Fake H100", 80_000, local_cpus=(0, 1, 2, 3))


class FakeProbe:
    """Plays back scripted samples (then repeats the last); can be made to hang."""

    def __init__(self, script: list[list[GpuSample]], gpus: list[GpuInfo] | None = None) -> None:
        self.script = list(script)
        self.gpus = gpus or []
        self.calls = 0
        self.hang = threading.Event()
        self.unhang = threading.Event()

    def discover(self) -> list[GpuInfo]:
        return list(self.gpus)

    def sample(self) -> list[GpuSample]:
        self.calls += 1
        if self.hang.is_set():
            self.unhang.wait(10)
        return self.script.pop(0) if len(self.script) > 1 else list(self.script[0])

    def close(self) -> None:
        return None


class SteppedSleep:
    """Stands in for asyncio.sleep in the sampler's loop: records each pause asked for and
    holds the loop there until the test lets it go on (or, free-running, sleeps for real)."""

    def __init__(self) -> None:
        self.requested: list[float] = []
        self._paused: asyncio.Queue[asyncio.Future[None]] = asyncio.Queue()
        self._gates: list[asyncio.Future[None]] = []
        self._free_running = False

    async def __call__(self, seconds: float) -> None:
        self.requested.append(seconds)
        if self._free_running:
            await asyncio.sleep(seconds)
            return
        gate: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._gates.append(gate)
        self._paused.put_nowait(gate)
        await gate

    async def paused(self) -> asyncio.Future[None]:
        """Wait until the loop pauses next; set the returned future's result to go on. The
        bound is a safety net against a hang, not a timing check."""
        return await asyncio.wait_for(self._paused.get(), 10)

    def free_run(self) -> None:
        """Let the loop go, now and at every later pause."""
        self._free_running = True
        for gate in self._gates:
            if not gate.done():
                gate.set_result(None)


def _sample(uuid: str, free: int | None, processes: dict[int, int] | None = None) -> GpuSample:
    return GpuSample(uuid, None if free is None else 80_000 - free, free, 50, processes or {})


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def test_cpu_sets_are_disjoint_cover_everything_and_take_gpu_local_cores_first() -> None:
    pool = SlotPool([GPU0, GPU1], cpu_slots=1, slots_per_gpu=2, cpus=list(range(10)))
    sets: list[tuple[int, ...]] = [tuple(row["cpus"])  # type: ignore[arg-type]
                                   for row in pool.snapshot()]
    flat = [cpu for cpus in sets for cpu in cpus]
    assert sorted(flat) == list(range(10))
    assert len(flat) == len(set(flat))
    assert sorted(len(s) for s in sets) == [2, 2, 3, 3]
    # GPU0's first slot and GPU1's slots fit in their GPU's local cores.
    assert set(sets[0]) <= set(GPU0.local_cpus)
    assert set(sets[2]) <= set(GPU1.local_cpus)
    assert set(sets[3]) <= set(GPU1.local_cpus)
    assert set(GPU0.local_cpus) <= set(sets[0]) | set(sets[1])


def test_fewer_cpus_than_slots_share_them_evenly_local_first() -> None:
    sets = partition_cpus([(1,), (1,), (), ()], [0, 1])
    assert all(len(s) == 1 for s in sets)
    assert sets[0] == (1,)
    assert sorted(s[0] for s in sets) == [0, 0, 1, 1]


def test_without_gpus_the_pool_has_cpu_slots_only() -> None:
    pool = SlotPool([], cpu_slots=3, slots_per_gpu=4, cpus=list(range(6)))
    rows = pool.snapshot()
    assert pool.capacity == 3
    assert [r["gpu_uuid"] for r in rows] == [None, None, None]
    assert [r["cpus"] for r in rows] == [[0, 1], [2, 3], [4, 5]]


async def test_a_cpu_lease_hides_every_gpu() -> None:
    pool = SlotPool([], cpu_slots=1, slots_per_gpu=1, cpus=[0, 1])
    lease = await pool.acquire("t")
    assert lease.gpu_uuid is None
    assert lease.env()["CUDA_VISIBLE_DEVICES"] == ""
    assert lease.cpus == (0, 1)


async def test_slots_per_gpu_share_one_gpu_and_split_its_memory() -> None:
    pool = SlotPool([GPU0], cpu_slots=8, slots_per_gpu=2, cpus=list(range(8)))
    first = await pool.acquire("a")
    second = await pool.acquire("b")
    assert first.gpu_uuid == second.gpu_uuid == GPU0.uuid
    assert first.slot_id != second.slot_id
    assert first.gpu_memory_mb == second.gpu_memory_mb == 40_000
    third = asyncio.create_task(pool.acquire("c"))
    await _settle()
    assert not third.done()
    pool.release(first)
    assert (await third).slot_id == first.slot_id


async def test_a_gpu_lease_env_names_the_gpu_by_uuid_in_pci_bus_order() -> None:
    pool = SlotPool([GPU0], cpu_slots=1, slots_per_gpu=1, cpus=list(range(8)))
    lease = await pool.acquire("t")
    assert lease.env() == {"CUDA_VISIBLE_DEVICES": "GPU-aaaa", "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
    assert (lease.gpu_index, lease.gpu_name) == (0, "Fake H100")


async def test_acquire_waits_for_release_and_a_double_release_is_harmless() -> None:
    pool = SlotPool([], cpu_slots=1, slots_per_gpu=1, cpus=[0])
    lease = await pool.acquire("a", holder="node-1")
    assert pool.snapshot()[0] | {"cpus": None} == {
        "id": "cpu0", "gpu_uuid": None, "gpu_name": None, "gpu_index": None, "memory_mb": None,
        "cpus": None, "busy": True, "task_id": "a", "holder": "node-1"}
    waiting = asyncio.create_task(pool.acquire("b"))
    await _settle()
    assert not waiting.done() and pool.waiting == 1
    pool.release(lease)
    second = await waiting
    pool.release(lease)  # stale: must not free the slot the second lease holds
    assert pool.snapshot()[0]["task_id"] == "b"
    pool.release(second)
    assert pool.snapshot()[0]["busy"] is False


async def test_waiting_tasks_are_served_round_robin() -> None:
    pool = SlotPool([], cpu_slots=1, slots_per_gpu=1, cpus=[0])
    held = await pool.acquire("x")
    pending: set[asyncio.Task[Lease]] = set()
    for _ in range(5):
        pending.add(asyncio.create_task(pool.acquire("A")))
        await _settle()
    pending.add(asyncio.create_task(pool.acquire("B")))
    await _settle()
    order: list[str] = []
    while pending:
        pool.release(held)
        done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        assert len(done) == 1
        held = done.pop().result()
        order.append(held.task_id)
    assert order.index("B") <= 1  # no later than A's second
    assert order == ["A", "B", "A", "A", "A", "A"]


async def test_a_gpu_without_enough_free_memory_waits_for_a_sample_that_shows_enough() -> None:
    probe = FakeProbe([[_sample(GPU0.uuid, free=1_000)], [_sample(GPU0.uuid, free=79_000)]])
    pool = SlotPool([GPU0], cpu_slots=1, slots_per_gpu=1, cpus=[0])
    sampler = GpuSampler(probe, pool, interval_s=0.01, gpus=[GPU0])
    assert await sampler.sample_once()
    waiting = asyncio.create_task(pool.acquire("t", sampler.free_memory_mb))
    await _settle()
    assert not waiting.done()
    pool.notify_sample()
    await _settle()
    assert not waiting.done()
    assert await sampler.sample_once()  # now 79 000 MiB free: the sampler notifies the pool
    lease = await asyncio.wait_for(waiting, 1)
    assert lease.gpu_uuid == GPU0.uuid


async def test_unknown_free_memory_admits() -> None:
    pool = SlotPool([GPU0], cpu_slots=1, slots_per_gpu=1, cpus=[0])
    lease = await asyncio.wait_for(pool.acquire("t", lambda uuid: None), 1)
    assert lease.gpu_uuid == GPU0.uuid


async def test_a_cancelled_waiter_leaves_the_pool_consistent() -> None:
    pool = SlotPool([], cpu_slots=1, slots_per_gpu=1, cpus=[0])
    held = await pool.acquire("x")
    doomed = asyncio.create_task(pool.acquire("A"))
    survivor = asyncio.create_task(pool.acquire("B"))
    await _settle()
    doomed.cancel()
    await _settle()
    assert doomed.cancelled() and pool.waiting == 1
    pool.release(held)
    lease = await asyncio.wait_for(survivor, 1)
    assert lease.task_id == "B" and pool.waiting == 0


async def test_a_waiter_cancelled_as_it_is_granted_hands_the_slot_back() -> None:
    pool = SlotPool([], cpu_slots=1, slots_per_gpu=1, cpus=[0])
    held = await pool.acquire("x")
    doomed = asyncio.create_task(pool.acquire("A"))
    await _settle()
    pool.release(held)  # grants to A's waiter synchronously...
    doomed.cancel()  # ...before its task resumes
    await _settle()
    assert doomed.cancelled()
    assert pool.snapshot()[0]["busy"] is False
    assert (await asyncio.wait_for(pool.acquire("B"), 1)).task_id == "B"


async def test_the_sampler_records_per_process_peak_and_gpu_seconds() -> None:
    script = [
        [_sample(GPU0.uuid, 70_000, {100: 500})],
        [_sample(GPU0.uuid, 70_000, {100: 800, 101: 300})],
        [_sample(GPU0.uuid, 70_000, {101: 200}), _sample(GPU1.uuid, 70_000, {101: 50})],
        [_sample(GPU0.uuid, 75_000)],
    ]
    probe = FakeProbe(script)
    sleep = SteppedSleep()
    sampler = GpuSampler(probe, interval_s=0.01, gpus=[GPU0, GPU1], sleep=sleep)
    sampler.start()
    for _ in range(len(script) - 1):
        (await sleep.paused()).set_result(None)
    await sleep.paused()  # the last scripted sample is in; the loop waits for its next turn
    await sampler.stop()
    assert probe.calls == len(script)  # one sample per turn of the loop
    assert sleep.requested == [0.01] * len(script)  # with interval_s between them
    peak, seconds = sampler.usage({100})
    assert peak == 800 and seconds == pytest.approx(0.02)
    peak, seconds = sampler.usage({100, 101})  # 800 + 300 at once; 101 counts on both GPUs
    assert peak == 1100 and seconds == pytest.approx(0.03)
    assert sampler.usage({999}) == (0, 0.0)
    assert sampler.free_memory_mb(GPU0.uuid) == 75_000
    assert sampler.free_memory_mb("GPU-unknown") is None
    row = sampler.snapshot()[0]
    assert (row["uuid"], row["name"], row["memory_total_mb"]) == (GPU0.uuid, "Fake H100", 80_000)
    sampler.forget({100})
    assert sampler.usage({100}) == (0, 0.0)


async def test_a_tracked_sampler_records_only_the_named_pids() -> None:
    probe = FakeProbe([[_sample(GPU0.uuid, 70_000, {100: 500, 7: 9_000})]])
    sampler = GpuSampler(probe, interval_s=1.0)
    sampler.track(lambda: {100})
    assert await sampler.sample_once()
    assert sampler.usage({100}) == (500, 1.0)
    assert sampler.usage({7}) == (0, 0.0)


async def test_a_hung_probe_is_skipped_and_the_loop_stays_responsive() -> None:
    probe = FakeProbe([[_sample(GPU0.uuid, 79_000)]])
    probe.hang.set()
    pool = SlotPool([GPU0], cpu_slots=1, slots_per_gpu=1, cpus=[0])
    sleep = SteppedSleep()
    sampler = GpuSampler(probe, pool, interval_s=0.01, timeout_s=0.05, sleep=sleep)
    # Admitted by the first sample that shows the memory free (none yet: not admitted).
    waiting = asyncio.create_task(pool.acquire("t", lambda uuid: sampler.free_memory_mb(uuid)
                                               or 0))
    sampler.start()
    try:
        # The loop goes round while the probe's thread hangs: the first turn gave up on the
        # sample at its timeout, the second skipped it (the hung one still runs).
        (await sleep.paused()).set_result(None)
        await sleep.paused()
        assert probe.calls == 1  # no new thread while the hung one still runs
        assert sampler.latest() == []
        assert not waiting.done()
    finally:
        probe.hang.clear()
        probe.unhang.set()
    sleep.free_run()
    # Once the hung sample ends, a later turn samples again and the pool hears of it.
    lease = await asyncio.wait_for(waiting, 10)
    await sampler.stop()
    assert lease.gpu_uuid == GPU0.uuid
    assert sampler.free_memory_mb(GPU0.uuid) == 79_000


def test_is_cuda_oom_recognises_gpu_memory_errors_only() -> None:
    positives = [
        "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB",
        "RuntimeError: CUDA error: out of memory\nCUDA kernel errors might be asynchronously",
        "RuntimeError: cuDNN error: CUDNN_STATUS_ALLOC_FAILED",
        "RuntimeError: CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`",
        "torch.cuda.OutOfMemoryError: oops",
        "jaxlib.xla_extension.XlaRuntimeError: RESOURCE_EXHAUSTED: Out of memory while trying",
    ]
    negatives = ["MemoryError", "Killed", "Traceback ...\nValueError: bad shape", ""]
    assert all(is_cuda_oom(text) for text in positives)
    assert not any(is_cuda_oom(text) for text in negatives)


def test_process_identity_matches_only_the_same_live_process() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        identity = process_identity(child.pid)
        assert identity is not None
        assert identity.pid == child.pid and identity.boot_id == read_boot_id()
        assert is_same_process(identity)
        assert not is_same_process(dataclasses.replace(identity,
                                                       start_time=identity.start_time + 1))
        assert not is_same_process(dataclasses.replace(identity, boot_id="another-boot"))
    finally:
        child.kill()
        child.wait()
    assert process_identity(child.pid) is None
    assert not is_same_process(identity)


def test_a_zombie_is_not_a_live_process() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        # Wait for the exit without reaping it: the child stays a zombie.
        os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)
        assert process_identity(child.pid) is None  # exited, not yet reaped
    finally:
        child.wait()


def _nvml_error(code: int) -> pynvml.NVMLError:
    return pynvml.NVMLError(code)


def test_open_probe_falls_back_to_cpu_slots_with_a_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing() -> None:
        raise _nvml_error(pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)

    def no_driver() -> None:
        raise _nvml_error(pynvml.NVML_ERROR_DRIVER_NOT_LOADED)

    monkeypatch.setattr(pynvml, "nvmlInit", missing)
    probe, reason = open_probe()
    assert isinstance(probe, NullProbe)
    assert reason == "no NVML library (NVMLError_LibraryNotFound): CPU slots only"
    monkeypatch.setattr(pynvml, "nvmlInit", no_driver)
    assert "DriverNotLoaded" in open_probe()[1]
    monkeypatch.setattr(pynvml, "nvmlInit", lambda: None)
    monkeypatch.setattr(pynvml, "nvmlShutdown", lambda: None)
    monkeypatch.setattr(pynvml, "nvmlDeviceGetCount", lambda: 0)
    probe, reason = open_probe()
    assert isinstance(probe, NullProbe) and "no GPUs" in reason


def _fake_nvml(monkeypatch: pytest.MonkeyPatch) -> None:
    """A two-GPU pynvml where some calls fail, as they do on real drivers."""
    def fail(*_: Any) -> Any:
        raise _nvml_error(pynvml.NVML_ERROR_NOT_SUPPORTED)

    def no_v3(_: Any) -> Any:
        raise _nvml_error(pynvml.NVML_ERROR_FUNCTION_NOT_FOUND)

    def affinity(handle: int, size: int) -> Any:
        words = (ctypes.c_ulonglong * size)()
        words[0] = 0b1111 << (4 * handle)  # GPU0: CPUs 0-3, GPU1: 4-7
        return words

    mib = 1024 * 1024
    memory = SimpleNamespace(total=16_000 * mib, used=1_000 * mib, free=15_000 * mib)
    calls: dict[str, Any] = {
        "nvmlInit": lambda: None,
        "nvmlShutdown": lambda: None,
        "nvmlDeviceGetCount": lambda: 2,
        "nvmlDeviceGetHandleByIndex": lambda i: i,
        "nvmlDeviceGetUUID": lambda h: f"GPU-{h}",
        "nvmlDeviceGetName": lambda h: b"Fake" if h == 0 else fail(),
        "nvmlDeviceGetMemoryInfo": lambda h: memory,
        "nvmlDeviceGetUtilizationRates": lambda h: SimpleNamespace(gpu=42) if h == 0 else fail(),
        "nvmlDeviceGetComputeRunningProcesses_v3": no_v3,
        "nvmlDeviceGetComputeRunningProcesses_v2": lambda h: (
            [SimpleNamespace(pid=10, usedGpuMemory=512 * mib),
             SimpleNamespace(pid=11, usedGpuMemory=None)] if h == 0 else fail()),
        "nvmlDeviceGetCpuAffinity": affinity,
    }
    for name, func in calls.items():
        monkeypatch.setattr(pynvml, name, func)


def test_the_nvml_probe_reads_what_it_can_and_leaves_failed_fields_empty(
        monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_nvml(monkeypatch)
    monkeypatch.setattr("os.sched_getaffinity", lambda _: {0, 1, 2, 5, 6, 7})
    probe = NvmlProbe()
    gpus = probe.discover()
    assert gpus == [GpuInfo(0, "GPU-0", "Fake", 16_000, (0, 1, 2)),
                    GpuInfo(1, "GPU-1", "", 16_000, (5, 6, 7))]
    first, second = probe.sample()
    assert first == GpuSample("GPU-0", 1_000, 15_000, 42, {10: 512, 11: 0})
    assert second == GpuSample("GPU-1", 1_000, 15_000, None, {})
    probe.close()
