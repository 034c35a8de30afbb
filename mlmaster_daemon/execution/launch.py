"""The job launcher: `python -m mlmaster_daemon.execution.launch [options] -- CMD...`.

It runs between the daemon's fork and the job's command, in the job's own process, and does
what must happen before the job's first instruction: join the job's cgroup (so nothing the job
starts can be outside it), set the CPU affinity to the lease's cores (inherited by every
thread and child created later; setting it on a running process would miss those), set the
rlimits, then exec CMD in place, keeping the pid. It replaces `preexec_fn`, which is unsafe in
a process with threads (the daemon has aiosqlite's, NVML's and `to_thread`'s).

RLIMIT_AS (`--address-space-mb`) caps virtual address space, not memory use. CUDA processes
reserve a huge virtual address space (hundreds of GiB) whatever they really use, so under any
useful RLIMIT_AS they fail at CUDA initialisation: the daemon asks for it only for CPU-only
leases on hosts without a memory cgroup.

The module imports only the standard library and the daemon runs it by file path in isolated
mode (`python -I -S launch.py`), so nothing in the job's workspace or environment can shadow
a module it imports. A failure before exec exits with 125 and a line on stderr; a command that
cannot be executed exits with 126 (or 127 when not found), as shells do.
"""

from __future__ import annotations

import os
import resource
import signal
import sys
from collections.abc import Sequence

EXIT_SETUP_FAILED = 125
EXIT_NOT_EXECUTABLE = 126
EXIT_NOT_FOUND = 127
MIB = 1024 * 1024


class Options:
    """The launcher's options (0 or empty: leave that alone)."""

    # A plain class: importing dataclasses would double the launcher's start-up time.
    def __init__(self) -> None:
        self.cgroup_procs: list[str] = []
        self.cpus: list[int] = []
        self.file_size_mb = 0
        self.max_processes = 0
        self.address_space_mb = 0
        self.parent_pid = 0


def parse_options(args: Sequence[str]) -> Options:
    """`--cgroup-procs PATH` (repeatable: one per v1 hierarchy), `--cpus 0,1,...`,
    `--file-size-mb N` (RLIMIT_FSIZE), `--max-processes N` (RLIMIT_NPROC headroom over the
    user's current tasks, non-root only), `--address-space-mb N` (RLIMIT_AS), `--parent-pid N`
    (the daemon: the job is killed when it dies)."""
    # Hand-parsed: importing argparse would double the launcher's start-up time.
    options = Options()
    if len(args) % 2:
        raise ValueError(f"option {args[-1]!r} has no value")
    for name, value in zip(args[::2], args[1::2], strict=True):
        if name == "--cgroup-procs":
            options.cgroup_procs.append(value)
        elif name == "--cpus":
            options.cpus = [int(c) for c in value.split(",") if c.strip()]
        elif name in ("--file-size-mb", "--max-processes", "--address-space-mb",
                      "--parent-pid"):
            setattr(options, name[2:].replace("-", "_"), int(value))
        else:
            raise ValueError(f"unknown option {name!r}")
    return options


def split_argv(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """(launcher options, command) split at the first `--`; the command must not be empty."""
    if "--" not in argv:
        raise ValueError("usage: launch [options] -- CMD [ARGS...]")
    cut = list(argv).index("--")
    command = list(argv[cut + 1:])
    if not command:
        raise ValueError("no command after --")
    return list(argv[:cut]), command


def join_cgroup(procs_files: Sequence[str]) -> None:
    """Move this process into each cgroup (one file per v1 hierarchy, one on v2)."""
    for path in procs_files:
        with open(path, "w") as f:
            f.write(str(os.getpid()))


PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int) -> None:
    """SIGKILL this process (and the command it becomes: the setting survives exec) when the
    daemon dies. If the daemon died before this ran, we were already handed to another parent:
    refuse to start, or the job would run unseen after a crash."""
    import ctypes  # only here: the launcher's start-up time matters

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent_pid:
        raise ValueError(f"the daemon (pid {parent_pid}) that started this job is gone")


def set_affinity(cpus: Sequence[int]) -> None:
    """Pin to `cpus` as far as we are allowed to run on them (a container may allow fewer)."""
    allowed = os.sched_getaffinity(0)
    usable = set(cpus) & allowed
    if not usable:
        print(f"launch: none of CPUs {sorted(cpus)} is allowed here; keeping {sorted(allowed)}",
              file=sys.stderr)
        return
    os.sched_setaffinity(0, usable)


def _user_tasks(uid: int) -> int:
    """Tasks (threads count: RLIMIT_NPROC counts them) whose real uid is `uid`."""
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status") as f:
                status = dict(line.split(":", 1) for line in f if ":" in line)
            if int(status["Uid"].split()[0]) == uid:
                total += int(status["Threads"])
        except (OSError, KeyError, ValueError):
            continue
    return total


def _clamp(limit: int, which: int) -> int:
    hard = resource.getrlimit(which)[1]
    return limit if hard == resource.RLIM_INFINITY else min(limit, hard)


def set_limits(file_size_mb: int, max_processes: int, address_space_mb: int) -> None:
    """Apply the rlimits (soft = hard, so the job cannot raise them); 0 leaves one unset."""
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if file_size_mb > 0:
        size = _clamp(file_size_mb * MIB, resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))
    # RLIMIT_NPROC never binds root, and counts every task of the user, not just this job's.
    if max_processes > 0 and os.geteuid() != 0:
        count = _clamp(_user_tasks(os.getuid()) + max_processes, resource.RLIMIT_NPROC)
        resource.setrlimit(resource.RLIMIT_NPROC, (count, count))
    if address_space_mb > 0:
        size = _clamp(address_space_mb * MIB, resource.RLIMIT_AS)
        resource.setrlimit(resource.RLIMIT_AS, (size, size))


def main(argv: Sequence[str] | None = None) -> int:
    """Set the job up and exec its command; returns only on failure (the exit status)."""
    try:
        args, command = split_argv(sys.argv[1:] if argv is None else argv)
        options = parse_options(args)
        join_cgroup(options.cgroup_procs)
        if options.parent_pid:
            die_with_parent(options.parent_pid)
        if options.cpus:
            set_affinity(options.cpus)
        set_limits(options.file_size_mb, options.max_processes, options.address_space_mb)
    except (OSError, ValueError) as exc:
        print(f"launch: job set-up failed: {exc}", file=sys.stderr)
        return EXIT_SETUP_FAILED
    # Python ignores these two at start-up and an ignored signal stays ignored across exec:
    # give the job the defaults (a write past RLIMIT_FSIZE must be able to kill a C program).
    for sig in (signal.SIGPIPE, signal.SIGXFSZ):
        signal.signal(sig, signal.SIG_DFL)
    try:
        os.execvp(command[0], command)
    except FileNotFoundError as exc:
        print(f"launch: {exc}", file=sys.stderr)
        return EXIT_NOT_FOUND
    except OSError as exc:
        print(f"launch: {exc}", file=sys.stderr)
        return EXIT_NOT_EXECUTABLE


if __name__ == "__main__":
    sys.exit(main())
