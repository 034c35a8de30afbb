"""The limits a job runs under, with "auto" turned into figures that fit this machine.

Unlimited is never the default: a generated script that allocates 30 GB must meet "memory
limit exceeded", not the kernel's OOM killer choosing a victim (maybe the daemon), and one that
writes without end must meet a file or workspace limit before the disk is full.

- memory: the machine's memory less a reserve for the daemon and the system, shared by the
  slots that can run at once;
- one file: a quarter of the free space on the state dir's filesystem per slot, at most 4 GiB;
- a workspace: half of the free space per slot, at most 64 GiB.

The disk shares are never raised to a floor: on a nearly full disk a job gets a small
workspace (and fails saying so) rather than the room to fill the disk, which would pause every
task. A share is measured when the job starts, so jobs that start later share what is left.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import psutil

from mlmaster_daemon.config import ExecutionConfig
from mlmaster_daemon.execution.lease import JobLimits

MIB = 1024 * 1024
# Kept back from jobs for the daemon, the page cache and the system.
RESERVE_MIN_MB = 1024
RESERVE_SHARE = 0.10
# A few MiB always: a limit of 0 would mean "none".
FILE_MB_RANGE = (4, 4096)
WORKSPACE_MB_RANGE = (8, 65536)


@dataclass(frozen=True)
class Machine:
    """What "auto" limits are derived from: memory and free disk in MiB, and the slots that
    share them."""

    memory_mb: int
    free_disk_mb: int
    slots: int

    @classmethod
    def read(cls, state_dir: Path, slots: int) -> Machine:
        """This machine now (blocking: a statvfs and /proc/meminfo)."""
        memory = psutil.virtual_memory().total // MIB
        try:
            free = shutil.disk_usage(state_dir).free // MIB
        except OSError:
            free = 0
        return cls(int(memory), int(free), max(slots, 1))


def _clamp(value: int, bounds: tuple[int, int]) -> int:
    return max(bounds[0], min(bounds[1], value))


def auto_memory_mb(machine: Machine) -> int:
    reserve = max(RESERVE_MIN_MB, int(machine.memory_mb * RESERVE_SHARE))
    return max((machine.memory_mb - reserve) // machine.slots, 256)


def auto_file_mb(machine: Machine) -> int:
    return _clamp(machine.free_disk_mb // (4 * machine.slots), FILE_MB_RANGE)


def auto_workspace_mb(machine: Machine) -> int:
    return _clamp(machine.free_disk_mb // (2 * machine.slots), WORKSPACE_MB_RANGE)


def job_limits(execution: ExecutionConfig, machine: Machine) -> JobLimits:
    """The configured limits, each "auto" one derived from `machine` (0 stays: none)."""
    def pick(value: int | str, auto: int) -> int:
        return auto if value == "auto" else int(value)

    return JobLimits(
        memory_mb=pick(execution.memory_limit_mb, auto_memory_mb(machine)),
        max_processes=execution.max_processes,
        max_file_size_mb=pick(execution.max_file_size_mb, auto_file_mb(machine)),
        max_workspace_mb=pick(execution.max_workspace_mb, auto_workspace_mb(machine)),
    )
