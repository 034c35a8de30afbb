"""What a running node holds: a slot, maybe a GPU (or a share of one), and a CPU set."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Lease:
    """One slot granted to one node. `gpu_uuid` is None for a CPU slot."""

    slot_id: str
    task_id: str
    cpus: tuple[int, ...]
    gpu_uuid: str | None = None
    gpu_index: int | None = None
    gpu_name: str | None = None
    # The slot's share of the GPU's memory in MiB (the whole GPU for an exclusive slot).
    gpu_memory_mb: int | None = None

    def env(self) -> dict[str, str]:
        """Variables the child gets so it sees exactly its GPU (or none) in PCI bus order."""
        return {
            "CUDA_VISIBLE_DEVICES": self.gpu_uuid or "",
            "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
        }


@dataclass(frozen=True)
class ProcessIdentity:
    """Enough to prove later that a pid is still the process we started (PIDs get reused)."""

    pid: int
    start_time: float  # seconds since boot, from /proc/<pid>/stat field 22
    boot_id: str


@dataclass(frozen=True)
class JobLimits:
    """Per-job limits; 0 means none. Memory uses a cgroup where one is available."""

    memory_mb: int = 0
    max_processes: int = 0
    max_file_size_mb: int = 0
    max_workspace_mb: int = 0
    extra_env: dict[str, str] = field(default_factory=dict)
