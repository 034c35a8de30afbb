"""What the GPUs are and what they are doing (through NVML), and who a pid really is.

Every probe call blocks (NVML talks to the driver), so callers run them in a thread with a
timeout. Without an NVML library or a loaded driver the daemon falls back to `NullProbe` and
runs nodes on CPU slots only.
"""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

from mlmaster_daemon.execution.lease import ProcessIdentity
from mlmaster_daemon.logs import get_logger

log = get_logger("mlmaster.gpu")

_MIB = 1024 * 1024
_T = TypeVar("_T")


@dataclass(frozen=True)
class GpuInfo:
    """One GPU as found at start-up. `index` is NVML's (PCI bus order)."""

    index: int
    uuid: str
    name: str
    memory_total_mb: int
    # CPUs close to the GPU (its NUMA node) that this process may use; empty if unknown.
    local_cpus: tuple[int, ...] = ()


@dataclass(frozen=True)
class GpuSample:
    """One reading of one GPU. None means NVML could not say."""

    uuid: str
    memory_used_mb: int | None
    memory_free_mb: int | None
    utilization_pct: int | None
    # pid -> MiB of this GPU's memory the process uses (0 when NVML does not report it).
    processes: dict[int, int]


class GpuProbe(Protocol):
    """Reads the GPUs. Every method blocks; run it in a thread."""

    def discover(self) -> list[GpuInfo]:
        """The GPUs, in NVML index order; [] when there are none."""
        ...

    def sample(self) -> list[GpuSample]:
        """One reading per GPU."""
        ...

    def close(self) -> None:
        """Release the library; a later call may open it again."""
        ...


class NullProbe:
    """No GPUs: the daemon runs CPU slots only."""

    def discover(self) -> list[GpuInfo]:
        return []

    def sample(self) -> list[GpuSample]:
        return []

    def close(self) -> None:
        return None


def _expand_mask(words: Any, bits_per_word: int) -> set[int]:
    """CPU ids set in an affinity bitmask given as words, lowest CPUs in the first word."""
    cpus: set[int] = set()
    for w, word in enumerate(words):
        value = int(word)
        bit = 0
        while value:
            if value & 1:
                cpus.add(w * bits_per_word + bit)
            value >>= 1
            bit += 1
    return cpus


class NvmlProbe:
    """The real probe, through nvidia-ml-py's `pynvml`.

    NVML is initialised on first use. A failing call for one field leaves that field empty
    (None, 0 or ()) rather than failing the whole reading; a GPU whose UUID cannot be read is
    left out, since a node could not be pointed at it. Queries and `close` are serialised, so
    `close` waits for a query in flight before shutting NVML down. Process ids are those of
    the host's pid namespace.
    """

    def __init__(self) -> None:
        import pynvml

        self._nvml: Any = pynvml
        self._lock = threading.Lock()
        self._initialised = False
        self._handles: list[tuple[int, str, Any]] | None = None

    def init(self) -> None:
        """Initialise NVML now; raises pynvml.NVMLError (e.g. LibraryNotFound) if it cannot."""
        with self._lock:
            self._ensure()

    def _ensure(self) -> None:
        if not self._initialised:
            self._nvml.nvmlInit()
            self._initialised = True

    def _query(self, func: Callable[..., _T], *args: Any, default: _T) -> _T:
        try:
            return func(*args)
        except self._nvml.NVMLError as exc:
            log.debug("nvml query failed", error=f"{type(exc).__name__}: {exc}")
            return default

    def _devices(self) -> list[tuple[int, str, Any]]:
        """(index, uuid, handle) per usable GPU, cached until `close`."""
        if self._handles is None:
            nv = self._nvml
            handles: list[tuple[int, str, Any]] = []
            for index in range(int(self._query(nv.nvmlDeviceGetCount, default=0))):
                handle = self._query(nv.nvmlDeviceGetHandleByIndex, index, default=None)
                if handle is None:
                    continue
                uuid = self._query(nv.nvmlDeviceGetUUID, handle, default=None)
                if uuid:
                    handles.append((index, _text(uuid), handle))
            self._handles = handles
        return self._handles

    def _local_cpus(self, handle: Any, allowed: set[int]) -> tuple[int, ...]:
        # Enough words even if they are 32-bit; NVML leaves the surplus zero.
        size = ((os.cpu_count() or 1) + 31) // 32
        words = self._query(self._nvml.nvmlDeviceGetCpuAffinity, handle, size, default=None)
        if words is None:
            return ()
        # The bindings have used both c_ulong and c_ulonglong words over the years.
        bits = 8 * ctypes.sizeof(getattr(words, "_type_", ctypes.c_ulonglong))
        return tuple(sorted(_expand_mask(words, bits) & allowed))

    def discover(self) -> list[GpuInfo]:
        nv = self._nvml
        allowed = os.sched_getaffinity(0)
        with self._lock:
            self._ensure()
            found: list[GpuInfo] = []
            for index, uuid, handle in self._devices():
                name = self._query(nv.nvmlDeviceGetName, handle, default="")
                memory = self._query(nv.nvmlDeviceGetMemoryInfo, handle, default=None)
                total = int(memory.total) // _MIB if memory is not None else 0
                found.append(GpuInfo(index, uuid, _text(name), total,
                                     self._local_cpus(handle, allowed)))
            return found

    def _processes(self, handle: Any) -> dict[int, int]:
        nv = self._nvml
        # The newest struct version first; older drivers lack the newer entry points.
        names = ("nvmlDeviceGetComputeRunningProcesses_v3",
                 "nvmlDeviceGetComputeRunningProcesses_v2",
                 "nvmlDeviceGetComputeRunningProcesses")
        for name in names:
            func = getattr(nv, name, None)
            if func is None:
                continue
            try:
                infos = func(handle)
            except nv.NVMLError_FunctionNotFound:
                continue
            except nv.NVMLError as exc:
                log.debug("nvml process query failed", error=f"{type(exc).__name__}: {exc}")
                return {}
            usage: dict[int, int] = {}
            for info in infos:
                used = getattr(info, "usedGpuMemory", None)
                pid = int(info.pid)
                usage[pid] = usage.get(pid, 0) + (int(used) // _MIB if used else 0)
            return usage
        return {}

    def sample(self) -> list[GpuSample]:
        nv = self._nvml
        with self._lock:
            self._ensure()
            samples: list[GpuSample] = []
            for _, uuid, handle in self._devices():
                memory = self._query(nv.nvmlDeviceGetMemoryInfo, handle, default=None)
                rates = self._query(nv.nvmlDeviceGetUtilizationRates, handle, default=None)
                samples.append(GpuSample(
                    uuid=uuid,
                    memory_used_mb=int(memory.used) // _MIB if memory is not None else None,
                    memory_free_mb=int(memory.free) // _MIB if memory is not None else None,
                    utilization_pct=int(rates.gpu) if rates is not None else None,
                    processes=self._processes(handle),
                ))
            return samples

    def close(self) -> None:
        with self._lock:
            if self._initialised:
                self._handles = None
                self._initialised = False
                self._query(self._nvml.nvmlShutdown, default=None)


def _text(value: object) -> str:
    """NVML strings are bytes in older bindings, str in newer ones."""
    return value.decode() if isinstance(value, bytes) else str(value)


def open_probe() -> tuple[GpuProbe, str]:
    """The NVML probe if NVML initialises and sees a GPU, else a NullProbe; plus a one-line
    reason fit for the log. Blocks (NVML initialisation); run it in a thread."""
    try:
        import pynvml
    except ImportError:
        return NullProbe(), "nvidia-ml-py is not installed: CPU slots only"
    probe = NvmlProbe()
    try:
        probe.init()
    except pynvml.NVMLError_LibraryNotFound:
        return NullProbe(), "no NVML library (NVMLError_LibraryNotFound): CPU slots only"
    except pynvml.NVMLError_DriverNotLoaded:
        return NullProbe(), "NVIDIA driver not loaded (NVMLError_DriverNotLoaded): CPU slots only"
    except pynvml.NVMLError as exc:
        return NullProbe(), f"NVML failed to start ({type(exc).__name__}: {exc}): CPU slots only"
    gpus = probe.discover()
    if not gpus:
        probe.close()
        return NullProbe(), "no GPUs found by NVML: CPU slots only"
    names = ", ".join(f"{g.index}: {g.name} ({g.memory_total_mb} MiB)" for g in gpus)
    return probe, f"{len(gpus)} GPU(s) through NVML: {names}"


_BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


def read_boot_id() -> str:
    """This boot's random id; it changes on every reboot."""
    return _BOOT_ID.read_text().strip()


def _stat_fields(pid: int) -> list[str] | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses; fields after it are plain.
    return stat[stat.rindex(")") + 2:].split()


def process_start_time(pid: int) -> float | None:
    """Seconds after boot at which `pid` started (/proc/<pid>/stat field 22), None if gone.
    A zombie still has one: this is for our own unreaped children too."""
    fields = _stat_fields(pid)
    return None if fields is None else int(fields[19]) / os.sysconf("SC_CLK_TCK")


def process_identity(pid: int) -> ProcessIdentity | None:
    """The pid's identity now (start time and boot id), or None if no such live process.

    A zombie (exited, not yet reaped) counts as gone: it runs nothing and cannot be stopped.
    """
    fields = _stat_fields(pid)
    if fields is None or fields[0] in ("Z", "X", "x"):  # field 3 of proc(5): the state
        return None
    return ProcessIdentity(pid, int(fields[19]) / os.sysconf("SC_CLK_TCK"), read_boot_id())


def is_same_process(identity: ProcessIdentity) -> bool:
    """True only if the process is alive and is the very one `identity` was taken from:
    same boot and same start time, so a reused pid never matches."""
    now = process_identity(identity.pid)
    return (now is not None and now.boot_id == identity.boot_id
            and now.start_time == identity.start_time)
