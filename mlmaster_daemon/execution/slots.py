"""The execution slots nodes run in, and the GPU sampler that feeds their admission.

A slot is a GPU (or a 1/n share of one) plus a disjoint set of CPU cores, or, without GPUs,
a set of CPU cores alone. Tasks wait for slots fairly: round-robin between tasks, first come
first served within one.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import re
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass

from mlmaster_daemon.execution.gpu import GpuInfo, GpuProbe, GpuSample
from mlmaster_daemon.execution.lease import Lease
from mlmaster_daemon.logs import get_logger

log = get_logger("mlmaster.slots")

FreeMemory = Callable[[str], int | None]
Sleep = Callable[[float], Awaitable[None]]


def partition_cpus(local: Sequence[Sequence[int]], cpus: Sequence[int]) -> list[tuple[int, ...]]:
    """Split `cpus` among len(local) slots; `local[i]` are the cores close to slot i's GPU.

    With at least as many CPUs as slots the sets are disjoint, cover every CPU and differ in
    size by at most one; each slot takes cores local to its GPU before any others (slots in
    order, so one GPU's slots share a NUMA node where they can). With fewer CPUs than slots,
    each slot gets one CPU and slots share them, as evenly as possible, local cores first.
    """
    allowed = sorted(set(cpus))
    n = len(local)
    if n == 0 or not allowed:
        return [() for _ in range(n)]
    allowed_set = set(allowed)
    if len(allowed) < n:
        uses: Counter[int] = Counter()
        shared: list[tuple[int, ...]] = []
        for near in local:
            candidates = sorted(set(near) & allowed_set) or allowed
            cpu = min(candidates, key=lambda c: (uses[c], c))
            uses[cpu] += 1
            shared.append((cpu,))
        return shared
    base, extra = divmod(len(allowed), n)
    sizes = [base + (1 if i < extra else 0) for i in range(n)]
    sets: list[list[int]] = [[] for _ in range(n)]
    taken: set[int] = set()
    for i, near in enumerate(local):
        for cpu in sorted(set(near) & allowed_set):
            if len(sets[i]) == sizes[i]:
                break
            if cpu not in taken:
                sets[i].append(cpu)
                taken.add(cpu)
    rest = deque(c for c in allowed if c not in taken)
    for i in range(n):
        while len(sets[i]) < sizes[i]:
            sets[i].append(rest.popleft())
    return [tuple(sorted(s)) for s in sets]


@dataclass(eq=False)
class _Slot:
    id: str
    cpus: tuple[int, ...]
    gpu: GpuInfo | None
    memory_mb: int | None
    lease: Lease | None = None
    holder: str | None = None


@dataclass(eq=False)
class _Waiter:
    seq: int
    task_id: str
    free_memory_mb: FreeMemory | None
    holder: str | None
    future: asyncio.Future[Lease]


class SlotPool:
    """A fixed set of slots that nodes lease.

    With GPUs, each GPU gives `slots_per_gpu` slots, each with `memory_total_mb //
    slots_per_gpu` as its memory share; without, there are `cpu_slots` CPU slots. A GPU slot
    is admitted only while its GPU's free memory (from the latest sample) is at least
    `admit_ratio` times its share: the driver keeps some memory, so an idle GPU never shows
    its whole total free. The check reads one sample, so two slots of one GPU granted before
    their jobs allocate are both admitted on the same reading.
    """

    def __init__(self, gpus: Sequence[GpuInfo], cpu_slots: int, slots_per_gpu: int,
                 cpus: Sequence[int] | None = None, *, admit_ratio: float = 0.9) -> None:
        allowed = sorted(os.sched_getaffinity(0)) if cpus is None else list(cpus)
        layout: list[tuple[str, GpuInfo | None, int | None]] = []
        for gpu in gpus:
            share = gpu.memory_total_mb // slots_per_gpu
            layout += [(f"gpu{gpu.index}.{k}", gpu, share) for k in range(slots_per_gpu)]
        if not gpus:
            layout = [(f"cpu{k}", None, None) for k in range(cpu_slots)]
        local = [g.local_cpus if g is not None else () for _, g, _ in layout]
        cpu_sets = partition_cpus(local, allowed)
        self._slots = [_Slot(slot_id, cpu_set, gpu, share)
                       for (slot_id, gpu, share), cpu_set in zip(layout, cpu_sets, strict=True)]
        self._by_id = {slot.id: slot for slot in self._slots}
        self._admit_ratio = admit_ratio
        self._waiting: dict[str, deque[_Waiter]] = {}
        self._last_grant: dict[str, int] = {}
        self._seq = 0
        self._grants = 0

    @property
    def capacity(self) -> int:
        """How many slots there are."""
        return len(self._slots)

    @property
    def waiting(self) -> int:
        """How many acquire calls are waiting."""
        return sum(len(q) for q in self._waiting.values())

    @property
    def busy(self) -> int:
        """How many slots are leased to a node."""
        return sum(1 for slot in self._slots if slot.lease is not None)

    async def acquire(self, task_id: str, free_memory_mb: FreeMemory | None = None, *,
                      holder: str | None = None) -> Lease:
        """Wait for a slot and lease it to `task_id` (`holder`, e.g. a node id, is shown in
        snapshots). Waiting tasks are served round-robin, least recently served first, and
        one task's requests in order. `free_memory_mb(gpu_uuid)` gives the GPU's free MiB
        (None: unknown, admit). Cancelled while waiting, it leaves no slot taken."""
        self._seq += 1
        loop = asyncio.get_running_loop()
        waiter = _Waiter(self._seq, task_id, free_memory_mb, holder, loop.create_future())
        self._waiting.setdefault(task_id, deque()).append(waiter)
        self._dispatch()
        try:
            return await waiter.future
        except asyncio.CancelledError:
            if waiter.future.done() and not waiter.future.cancelled():
                # Granted in the same instant as the cancel: hand the slot back.
                self.release(waiter.future.result())
            else:
                self._drop(waiter)
                self._dispatch()
            raise

    def release(self, lease: Lease) -> None:
        """Give the lease's slot back. Releasing a lease that is no longer held does nothing."""
        slot = self._by_id.get(lease.slot_id)
        if slot is None or slot.lease is not lease:
            return
        slot.lease = None
        slot.holder = None
        self._dispatch()

    def notify_sample(self) -> None:
        """A new GPU sample arrived: waiters held back for memory may now fit."""
        self._dispatch()

    def snapshot(self) -> list[dict[str, object]]:
        """One JSON-ready dict per slot."""
        return [{
            "id": slot.id,
            "gpu_uuid": slot.gpu.uuid if slot.gpu else None,
            "gpu_name": slot.gpu.name if slot.gpu else None,
            "gpu_index": slot.gpu.index if slot.gpu else None,
            "memory_mb": slot.memory_mb,
            "cpus": list(slot.cpus),
            "busy": slot.lease is not None,
            "task_id": slot.lease.task_id if slot.lease else None,
            "holder": slot.holder,
        } for slot in self._slots]

    def _drop(self, waiter: _Waiter) -> None:
        queue = self._waiting.get(waiter.task_id)
        if queue is None:
            return
        with contextlib.suppress(ValueError):
            queue.remove(waiter)
        if not queue:
            del self._waiting[waiter.task_id]

    def _admissible(self, slot: _Slot, waiter: _Waiter) -> bool:
        if slot.gpu is None or slot.memory_mb is None or waiter.free_memory_mb is None:
            return True
        free = waiter.free_memory_mb(slot.gpu.uuid)
        return free is None or free >= slot.memory_mb * self._admit_ratio

    def _pick(self, waiter: _Waiter) -> _Slot | None:
        """A free admissible slot, on the GPU with the fewest busy slots (spreads the load)."""
        busy = Counter(s.gpu.uuid for s in self._slots if s.lease is not None and s.gpu)
        best: tuple[int, int] | None = None
        chosen: _Slot | None = None
        for order, slot in enumerate(self._slots):
            if slot.lease is not None or not self._admissible(slot, waiter):
                continue
            key = (busy[slot.gpu.uuid] if slot.gpu else 0, order)
            if best is None or key < best:
                best, chosen = key, slot
        return chosen

    def _dispatch(self) -> None:
        """Grant free slots to waiters, one at a time, until none more can be granted."""
        while any(slot.lease is None for slot in self._slots) and self._waiting:
            order = sorted(self._waiting, key=lambda t: (self._last_grant.get(t, -1),
                                                         self._waiting[t][0].seq))
            for task_id in order:
                waiter = self._waiting[task_id][0]
                slot = self._pick(waiter)
                if slot is not None:
                    self._grant(slot, waiter)
                    break
            else:
                return

    def _grant(self, slot: _Slot, waiter: _Waiter) -> None:
        self._drop(waiter)
        if waiter.future.done():
            return  # cancelled, and its acquire has not run its cleanup yet
        gpu = slot.gpu
        lease = Lease(slot_id=slot.id, task_id=waiter.task_id, cpus=slot.cpus,
                      gpu_uuid=gpu.uuid if gpu else None, gpu_index=gpu.index if gpu else None,
                      gpu_name=gpu.name if gpu else None, gpu_memory_mb=slot.memory_mb)
        slot.lease, slot.holder = lease, waiter.holder
        self._grants += 1
        self._last_grant[waiter.task_id] = self._grants
        self._prune_grants()
        waiter.future.set_result(lease)

    def _prune_grants(self) -> None:
        # Only order among waiting tasks matters; forget idle tasks so the map stays small.
        if len(self._last_grant) > 1024:
            active = set(self._waiting) | {s.lease.task_id for s in self._slots if s.lease}
            self._last_grant = {t: g for t, g in self._last_grant.items() if t in active}


class GpuSampler:
    """Samples the GPUs every `interval_s` in a worker thread, under a `timeout_s` limit, and
    remembers per-process GPU memory so a finished job's usage can be read back.

    A sample that times out or fails is logged and skipped; while a hung sample is still
    running in its thread no new one is started, so a stuck driver costs one thread. The
    pause between samples goes through `sleep`, so a test can step the loop.
    """

    def __init__(self, probe: GpuProbe, pool: SlotPool | None = None, *,
                 interval_s: float = 2.0, timeout_s: float = 5.0,
                 gpus: Sequence[GpuInfo] = (), retain_s: float = 3600.0,
                 sleep: Sleep = asyncio.sleep) -> None:
        self._probe = probe
        self._sleep = sleep
        self._pool = pool
        self._interval_s = interval_s
        self._timeout_s = timeout_s
        self._gpus = {g.uuid: g for g in gpus}
        self._retain_ticks = max(1, math.ceil(retain_s / interval_s))
        self._latest: list[GpuSample] = []
        self._tick = 0
        # pid -> {tick: MiB summed over GPUs}, and the tick each pid was last seen.
        self._history: dict[int, dict[int, int]] = {}
        self._last_seen: dict[int, int] = {}
        self._pids: Callable[[], Iterable[int]] | None = None
        self._task: asyncio.Task[None] | None = None
        self._inflight: asyncio.Future[list[GpuSample]] | None = None

    def track(self, pid_set_provider: Callable[[], Iterable[int]] | None) -> None:
        """Record only the pids `pid_set_provider()` names at each sample (our jobs'), rather
        than every process on the GPUs; None records all."""
        self._pids = pid_set_provider

    def start(self) -> None:
        """Start sampling in the background (once)."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="gpu-sampler")

    async def stop(self) -> None:
        """Stop sampling and wait for the loop to end (a hung probe thread is abandoned)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._inflight is not None and not self._inflight.done():
            self._inflight.cancel()

    async def _run(self) -> None:
        while True:
            await self.sample_once()
            await self._sleep(self._interval_s)

    async def sample_once(self) -> bool:
        """Take one sample now; False if it was skipped, timed out or failed."""
        if self._inflight is not None and not self._inflight.done():
            log.warning("gpu sample skipped: the previous one is still running")
            return False
        inflight = asyncio.ensure_future(asyncio.to_thread(self._probe.sample))
        # Nobody may await a sample that outlived its timeout; fetch its error so it is not lost.
        inflight.add_done_callback(lambda f: f.cancelled() or f.exception())
        self._inflight = inflight
        try:
            async with asyncio.timeout(self._timeout_s):
                samples = await asyncio.shield(inflight)
        except TimeoutError:
            log.warning("gpu sample timed out", timeout_s=self._timeout_s)
            return False
        except Exception as exc:
            log.warning("gpu sample failed", error=f"{type(exc).__name__}: {exc}")
            return False
        self._record(samples)
        if self._pool is not None:
            self._pool.notify_sample()
        return True

    def _record(self, samples: list[GpuSample]) -> None:
        self._latest = list(samples)
        self._tick += 1
        wanted = set(self._pids()) if self._pids is not None else None
        used: Counter[int] = Counter()
        for sample in samples:
            for pid, mib in sample.processes.items():
                if wanted is None or pid in wanted:
                    used[pid] += mib
        for pid, mib in used.items():
            self._history.setdefault(pid, {})[self._tick] = mib
            self._last_seen[pid] = self._tick
        stale = [p for p, t in self._last_seen.items() if self._tick - t > self._retain_ticks]
        self.forget(stale)

    def latest(self) -> list[GpuSample]:
        """The latest successful sample, one entry per GPU ([] before the first)."""
        return list(self._latest)

    def free_memory_mb(self, uuid: str) -> int | None:
        """The GPU's free MiB in the latest sample; None if unknown."""
        for sample in self._latest:
            if sample.uuid == uuid:
                return sample.memory_free_mb
        return None

    def usage(self, pids: Iterable[int]) -> tuple[int, float]:
        """(peak MiB, GPU-seconds) of a set of processes, e.g. one job's.

        Approximation: each successful sample stands for one `interval_s`. The peak is the
        largest per-sample sum over the pids; GPU-seconds count `interval_s` for every
        sample in which any of the pids held GPU memory. Jobs shorter than an interval may
        show nothing, and a job's time during skipped samples is not counted.
        """
        per_tick: Counter[int] = Counter()
        for pid in set(pids):
            for tick, mib in self._history.get(pid, {}).items():
                per_tick[tick] += mib
        peak = max(per_tick.values(), default=0)
        return peak, len(per_tick) * self._interval_s

    def forget(self, pids: Iterable[int]) -> None:
        """Drop what is remembered of these pids (call once their usage has been read:
        pids get reused). Pids unseen for `retain_s` are dropped anyway."""
        for pid in pids:
            self._history.pop(pid, None)
            self._last_seen.pop(pid, None)

    def snapshot(self) -> list[dict[str, object]]:
        """One JSON-ready dict per GPU from the latest sample, for `GET /v1/slots`."""
        rows: list[dict[str, object]] = []
        for sample in self._latest:
            info = self._gpus.get(sample.uuid)
            rows.append({
                "uuid": sample.uuid,
                "index": info.index if info else None,
                "name": info.name if info else None,
                "memory_total_mb": info.memory_total_mb if info else None,
                "memory_used_mb": sample.memory_used_mb,
                "memory_free_mb": sample.memory_free_mb,
                "utilization_pct": sample.utilization_pct,
                "processes": [{"pid": pid, "memory_mb": mib}
                              for pid, mib in sorted(sample.processes.items())],
            })
        return rows


_OOM = re.compile(
    r"CUDA out of memory"
    r"|CUDA error: out of memory"
    r"|CUDA_ERROR_OUT_OF_MEMORY"
    r"|cudaErrorMemoryAllocation"
    r"|CUDNN_STATUS_ALLOC_FAILED"
    r"|CUBLAS_STATUS_ALLOC_FAILED"
    r"|OutOfMemoryError"
    r"|RESOURCE_EXHAUSTED: Out of memory"
    r"|OOM when allocating tensor",
    re.IGNORECASE,
)


def is_cuda_oom(text: str) -> bool:
    """Whether a job's output shows it ran out of GPU memory (PyTorch, cuDNN, cuBLAS, the
    CUDA runtime and driver, JAX/XLA, TensorFlow). A plain host `MemoryError` is not one."""
    return _OOM.search(text) is not None
