"""A per-job cgroup: the boundary that holds a node's whole process tree.

A process group is not containment (a descendant can `setsid`), a cgroup is: every process the
job starts stays in it, so "kill everything in the cgroup" reaches grandchildren that escaped.
The cgroup also carries the job's memory limit (the kernel's OOM killer acts inside it) and its
process limit (the fork-bomb defence that binds root too, unlike RLIMIT_NPROC).

Supported layouts:
- cgroup v2 (unified `/sys/fs/cgroup`): one directory with `memory.max`, `memory.swap.max`,
  `memory.oom.group`, `pids.max`; `cgroup.kill` kills all; `memory.events` / `pids.events`
  count OOM kills and refused forks. Jobs live under `<our cgroup>/mlmaster/`; when our own
  cgroup holds processes (systemd service with `Delegate=yes`), the daemon first moves itself
  into a `daemon` leaf, as the "no internal processes" rule requires.
- cgroup v1 (one hierarchy per controller): a directory under the `memory` and the `pids`
  hierarchies, each inside our own cgroup of that hierarchy; `memory.limit_in_bytes` (and
  `memory.memsw.limit_in_bytes` so swap does not extend it), `pids.max`; OOM kills from
  `memory.oom_control`, refused forks from `pids.events`; kill-all is a kill loop.
- none: neither is writable. The job is then held only by its process group (and by
  bubblewrap's pid namespace when sandboxed), and memory falls back to RLIMIT_AS for CPU jobs.

Everything here is blocking file I/O on cgroupfs; async callers use `asyncio.to_thread`.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import re
import secrets
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

from mlmaster_daemon.execution.lease import JobLimits

GROUP_DIR = "mlmaster"
DAEMON_LEAF = "daemon"
CONTROLLERS = ("memory", "pids")
MIB = 1024 * 1024


@dataclass(frozen=True)
class CgroupLayout:
    """Where job cgroups can go: `version` is "v2", "v1" or "none"; `bases` maps each usable
    controller to our own cgroup directory in its hierarchy (all the same directory on v2)."""

    version: str
    bases: dict[str, Path] = field(default_factory=dict)


@dataclass(frozen=True)
class _Mount:
    fstype: str
    root: str
    mountpoint: Path
    options: frozenset[str]


def _unescape(text: str) -> str:
    # mountinfo writes space, tab, newline and backslash as octal escapes.
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), text)


def _parse_mountinfo(text: str) -> list[_Mount]:
    mounts = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if not sep or len(fields) < 5 or len(tail) < 3 or tail[0] not in ("cgroup", "cgroup2"):
            continue
        mounts.append(_Mount(tail[0], _unescape(fields[3]), Path(_unescape(fields[4])),
                             frozenset(tail[2].split(","))))
    return mounts


def _parse_proc_cgroup(text: str) -> tuple[dict[str, str], str | None]:
    """(v1 controller -> our path, our v2 path) from /proc/<pid>/cgroup."""
    v1: dict[str, str] = {}
    v2 = None
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":
            v2 = path
        for name in controllers.split(","):
            if name:
                v1[name] = path
    return v1, v2


def _own_dir(mount: _Mount, own: str) -> Path:
    rel = own
    root = mount.root.rstrip("/")
    if root:
        # A container may mount just its own subtree: make our path relative to it.
        rel = own[len(root):] if own == root or own.startswith(root + "/") else "/"
    if ".." in rel.split("/"):
        rel = "/"
    return mount.mountpoint / rel.lstrip("/")


def layout_from(mountinfo: str, proc_cgroup: str) -> CgroupLayout:
    """The layout described by the text of /proc/self/mountinfo and /proc/self/cgroup.

    v2 wins when our v2 cgroup offers the memory or pids controller; otherwise the v1
    memory/pids hierarchies; otherwise none. Only existing directories count."""
    mounts = _parse_mountinfo(mountinfo)
    v1_paths, v2_path = _parse_proc_cgroup(proc_cgroup)
    for mount in mounts:
        if mount.fstype != "cgroup2" or v2_path is None:
            continue
        base = _own_dir(mount, v2_path)
        try:
            offered = set((base / "cgroup.controllers").read_text().split())
        except OSError:
            continue
        if offered & set(CONTROLLERS):
            return CgroupLayout("v2", {c: base for c in CONTROLLERS if c in offered})
    bases: dict[str, Path] = {}
    for mount in mounts:
        for controller in CONTROLLERS:
            if mount.fstype == "cgroup" and controller in mount.options and controller not in bases:
                base = _own_dir(mount, v1_paths.get(controller, "/"))
                if base.is_dir():
                    bases[controller] = base
    return CgroupLayout("v1", bases) if bases else CgroupLayout("none")


@functools.cache
def detect_layout() -> CgroupLayout:
    """This process's cgroup layout (read once)."""
    try:
        mountinfo = Path("/proc/self/mountinfo").read_text()
        own = Path("/proc/self/cgroup").read_text()
    except OSError:
        return CgroupLayout("none")
    return layout_from(mountinfo, own)


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _read_key(path: Path, key: str) -> int | None:
    """The value of `key` in a flat keyed file such as memory.events or oom_control."""
    try:
        for line in path.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    except (OSError, ValueError):
        return None
    return None


def _write(path: Path, value: str) -> None:
    with path.open("w") as f:
        f.write(value)


class JobCgroup:
    """One job's cgroup: `version` "v1" or "v2" with its directories, or "none" (no
    directory: nothing to join, nothing to detect, nothing to kill; `note` says why)."""

    def __init__(self, version: str = "none", memory_mb: int = 0, max_processes: int = 0,
                 note: str = "") -> None:
        self.version = version
        self.memory_mb = memory_mb
        self.max_processes = max_processes
        self.note = note
        # controller -> its job directory (one shared directory on v2)
        self.dirs: dict[str, Path] = {}
        # Every job directory: a v2 cgroup tracks processes even with no controller enabled.
        self.all_dirs: list[Path] = []

    @property
    def limits_memory(self) -> bool:
        """Whether the kernel enforces the job's memory limit through this cgroup."""
        return "memory" in self.dirs and self.memory_mb > 0

    @property
    def limits_processes(self) -> bool:
        """Whether the kernel enforces the job's process limit through this cgroup."""
        return "pids" in self.dirs and self.max_processes > 0

    def procs_files(self) -> list[Path]:
        """The files the launcher writes its pid to, to join the cgroup before exec."""
        return [d / "cgroup.procs" for d in self.all_dirs]

    def pids(self) -> set[int]:
        """Every process now in the cgroup."""
        found: set[int] = set()
        for procs in self.procs_files():
            with contextlib.suppress(OSError):
                found.update(int(x) for x in procs.read_text().split())
        return found

    def oom_kills(self) -> int:
        """How many of the job's processes the OOM killer has killed."""
        memory = self.dirs.get("memory")
        if memory is None:
            return 0
        name = "memory.events" if self.version == "v2" else "memory.oom_control"
        return _read_key(memory / name, "oom_kill") or 0

    def memory_limit_hits(self) -> int:
        """How often the job's memory reached its limit (even if reclaim then coped)."""
        memory = self.dirs.get("memory")
        if memory is None:
            return 0
        if self.version == "v2":
            return _read_key(memory / "memory.events", "max") or 0
        return _read_int(memory / "memory.failcnt") or 0

    def fork_refusals(self) -> int:
        """How many forks/clones the process limit refused."""
        pids = self.dirs.get("pids")
        return 0 if pids is None else _read_key(pids / "pids.events", "max") or 0

    def breach(self) -> str | None:
        """Why the job broke a limit, in words for the user, or None."""
        if self.oom_kills() > 0:
            return self.memory_reason()
        if self.fork_refusals() > 0:
            # With no limit of our own, a limit above the job's cgroup refused the fork.
            limit = f" ({self.max_processes})" if self.max_processes else " (the host's)"
            return f"process limit reached{limit}"
        return None

    def memory_reason(self) -> str:
        """The reason given when the job ran out of memory."""
        if self.memory_mb:
            return f"memory limit exceeded ({self.memory_mb} MiB)"
        return "killed by the kernel's out-of-memory killer"

    def kill_all(self, timeout_s: float = 5.0) -> bool:
        """SIGKILL every process in the cgroup until it is empty; False if some remain."""
        if self.version == "v2":
            for d in self.all_dirs:
                with contextlib.suppress(OSError):
                    _write(d / "cgroup.kill", "1")
        deadline = time.monotonic() + timeout_s
        while True:
            left = self.pids()
            if not left:
                return True
            if time.monotonic() > deadline:
                return False
            # A process may fork between the read and the kill: loop until the cgroup is empty.
            for pid in left:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.01)

    def remove(self, timeout_s: float = 5.0) -> bool:
        """Kill what is left, then delete the cgroup; False if it could not be deleted."""
        self.kill_all(timeout_s)
        deadline = time.monotonic() + timeout_s
        ok = True
        for d in reversed(self.all_dirs):
            while True:
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError as exc:
                    # EBUSY while a killed process is still exiting.
                    if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                        ok = False
                        break
                    time.sleep(0.02)
        return ok


def _sweep_stale(group: Path, min_age_s: float = 60.0) -> None:
    """Delete empty job cgroups left by a daemon that died before removing them. A fresh one
    may be empty only because its launcher has not joined yet: those are left alone."""
    now = time.time()
    with contextlib.suppress(OSError):
        for job in group.iterdir():
            with contextlib.suppress(OSError):
                if job.is_dir() and now - job.stat().st_mtime > min_age_s:
                    if not (job / "cgroup.procs").read_text().strip():
                        job.rmdir()


def _safe(job_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", job_id)[:64] or "job"


def _job_name(job_id: str) -> str:
    return f"{_safe(job_id)}-{secrets.token_hex(4)}"


def kill_job_cgroups(job_id: str, layout: CgroupLayout | None = None) -> int:
    """Kill everything in, and remove, the cgroups left by earlier runs of `job_id` (a daemon
    that died mid-run leaves them, with any process that escaped its group); for start-up
    reconciliation, next to `kill_identity`. Returns how many such cgroups there were."""
    layout = layout or detect_layout()
    pattern = re.compile(re.escape(_safe(job_id)) + r"-[0-9a-f]{8}")
    names: set[str] = set()
    for base in set(layout.bases.values()):
        with contextlib.suppress(OSError):
            for job in (base / GROUP_DIR).iterdir():
                if job.is_dir() and pattern.fullmatch(job.name):
                    stale = JobCgroup(layout.version)
                    stale.all_dirs.append(job)
                    stale.remove()
                    names.add(job.name)
    return len(names)


def _enable_controllers(cgroup: Path, wanted: set[str]) -> None:
    enabled = set((cgroup / "cgroup.subtree_control").read_text().split())
    missing = wanted - enabled
    if missing:
        _write(cgroup / "cgroup.subtree_control", " ".join(f"+{c}" for c in sorted(missing)))


def _enable_v2(base: Path, wanted: set[str]) -> None:
    try:
        _enable_controllers(base, wanted)
    except OSError as exc:
        if exc.errno != errno.EBUSY:
            raise
        # v2 forbids controllers for children of a cgroup with processes: leave it for a leaf.
        leaf = base / DAEMON_LEAF
        leaf.mkdir(exist_ok=True)
        _write(leaf / "cgroup.procs", str(os.getpid()))
        _enable_controllers(base, wanted)


def _create_v2(base: Path, name: str, limits: JobLimits) -> JobCgroup:
    wanted = set(CONTROLLERS) & set((base / "cgroup.controllers").read_text().split())
    _enable_v2(base, wanted)
    group = base / GROUP_DIR
    group.mkdir(exist_ok=True)
    _enable_controllers(group, wanted)
    _sweep_stale(group)
    job = group / name
    job.mkdir()
    cgroup = JobCgroup("v2", limits.memory_mb, limits.max_processes)
    cgroup.all_dirs.append(job)
    cgroup.dirs.update({c: job for c in wanted})
    try:
        if "memory" in wanted and limits.memory_mb:
            _write(job / "memory.max", str(limits.memory_mb * MIB))
            # Optional knobs: swap must not extend the limit; an OOM takes the whole job down.
            for knob, value in (("memory.swap.max", "0"), ("memory.oom.group", "1")):
                with contextlib.suppress(OSError):
                    _write(job / knob, value)
        if "pids" in wanted and limits.max_processes:
            _write(job / "pids.max", str(limits.max_processes))
    except OSError:
        cgroup.remove(1.0)
        raise
    return cgroup


def _create_v1(bases: dict[str, Path], name: str, limits: JobLimits) -> JobCgroup:
    cgroup = JobCgroup("v1", limits.memory_mb, limits.max_processes)
    try:
        for controller, base in bases.items():
            (base / GROUP_DIR).mkdir(exist_ok=True)
            _sweep_stale(base / GROUP_DIR)
            job = base / GROUP_DIR / name
            job.mkdir()
            cgroup.dirs[controller] = job
            cgroup.all_dirs.append(job)
        memory = cgroup.dirs.get("memory")
        if memory is not None and limits.memory_mb:
            _write(memory / "memory.limit_in_bytes", str(limits.memory_mb * MIB))
            # Present only with swap accounting; it must not be below the memory limit.
            with contextlib.suppress(OSError):
                _write(memory / "memory.memsw.limit_in_bytes", str(limits.memory_mb * MIB))
        pids = cgroup.dirs.get("pids")
        if pids is not None and limits.max_processes:
            _write(pids / "pids.max", str(limits.max_processes))
    except OSError:
        cgroup.remove(1.0)
        raise
    return cgroup


def create_job_cgroup(job_id: str, limits: JobLimits,
                      layout: CgroupLayout | None = None) -> JobCgroup:
    """A fresh cgroup for one job with `limits` applied, or the "none" JobCgroup (with its
    `note`) when cgroups are not writable here. Never raises for an unusable cgroupfs."""
    layout = layout or detect_layout()
    name = _job_name(job_id)
    try:
        if layout.version == "v2":
            base = next(iter(layout.bases.values()))
            return _create_v2(base, name, limits)
        if layout.version == "v1":
            return _create_v1(layout.bases, name, limits)
    except OSError as exc:
        note = f"cgroup {layout.version} not usable: {exc}"
    else:
        note = "no cgroup hierarchy found"
    return JobCgroup("none", limits.memory_mb, limits.max_processes, note)
