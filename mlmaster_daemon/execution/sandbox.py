"""A job's command line: launcher, then the sandbox wrapper (bubblewrap or none), then the script.

With bubblewrap the job sees the whole system read-only (`--ro-bind / /`), its workspace
read-write, the task's public data read-only, a private `/tmp`, a minimal `/dev` (plus the
NVIDIA device nodes for a GPU lease), its own `/proc`, no network (a fresh network namespace
holds only `lo`), and its own pid namespace: when the namespace's first process dies, the
kernel kills every process in it, so nothing escapes by `setsid`. `--die-with-parent` ends
the sandbox when the daemon dies, and `--cap-drop ALL` keeps a job run by root from
remounting its read-only view writable.

The public data stays reachable at `<workspace>/input`: that is a symlink to the public
folder (made by `Workspace.create`), and the sandbox binds the folder read-only at the very
path the link points to. (Binding onto the link itself fails: bubblewrap resolves its target
outside the new root. Replacing the link with a directory would leave a directory that the
next `Workspace.create` cannot unlink.) A real `input` directory is bound over instead.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from mlmaster_daemon.errors import MlmasterError
from mlmaster_daemon.execution import launch

SANDBOXES = ("auto", "bwrap", "none")
# Caches that default to $HOME, which is read-only in the sandbox.
SANDBOX_ENV = {
    "TMPDIR": "/tmp",
    "MPLCONFIGDIR": "/tmp/matplotlib",
    "TRITON_CACHE_DIR": "/tmp/triton",
}


class SandboxUnavailable(MlmasterError):
    """`sandbox = "bwrap"` was configured but bubblewrap is missing or does not work here."""

    code = "sandbox_unavailable"
    status = 500


@functools.cache
def _bwrap_works(path: str) -> bool:
    # Installed is not enough: containers often forbid the namespaces bubblewrap needs.
    probe = [path, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc",
             "--unshare-pid", "--unshare-net", "--die-with-parent", "--", "true"]
    try:
        done = subprocess.run(probe, capture_output=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def resolve_sandbox(setting: str) -> str:
    """The sandbox to use: "bwrap" or "none". "auto" is bwrap when bubblewrap is installed
    and works here (probed once, blocking briefly), else none. "bwrap" raises
    SandboxUnavailable rather than run unsandboxed."""
    if setting not in SANDBOXES:
        raise ValueError(f"unknown sandbox {setting!r}: expected one of {', '.join(SANDBOXES)}")
    if setting == "none":
        return "none"
    path = shutil.which("bwrap")
    works = path is not None and _bwrap_works(path)
    if setting == "auto":
        return "bwrap" if works else "none"
    if not works:
        why = "does not work here" if path else "is not installed (apt-get install bubblewrap)"
        raise SandboxUnavailable(f"sandbox = \"bwrap\" but bubblewrap {why}; "
                                 "set [execution] sandbox = \"auto\" or \"none\" to run without")
    return "bwrap"


@dataclass(frozen=True)
class LaunchOptions:
    """What the launcher sets up before exec (0 or empty: leave it alone)."""

    cgroup_procs: tuple[Path, ...] = ()
    cpus: tuple[int, ...] = ()
    file_size_mb: int = 0
    max_processes: int = 0
    address_space_mb: int = 0
    # The daemon's pid: the job dies with it (a crash between spawn and the journal entry
    # would otherwise leave a job nobody knows of).
    parent_pid: int = 0

    def argv(self, python: str) -> list[str]:
        """The launcher's command line, up to and including the `--` before the job's."""
        args = [python, "-I", "-S", str(Path(launch.__file__).resolve())]
        for procs in self.cgroup_procs:
            args += ["--cgroup-procs", str(procs)]
        if self.cpus:
            args += ["--cpus", ",".join(str(c) for c in self.cpus)]
        for flag, value in (("--file-size-mb", self.file_size_mb),
                            ("--max-processes", self.max_processes),
                            ("--address-space-mb", self.address_space_mb),
                            ("--parent-pid", self.parent_pid)):
            if value > 0:
                args += [flag, str(value)]
        return [*args, "--"]


def gpu_device_nodes(dev: Path = Path("/dev")) -> list[Path]:
    """The NVIDIA device nodes a CUDA job needs (nvidiaN, nvidiactl, nvidia-uvm, caps...)."""
    return sorted(dev.glob("nvidia*"))


def ensure_input_link(workspace: Path, public_dir: Path) -> None:
    """Make `<workspace>/input` a symlink to the public folder again if a run replaced it
    (a real directory is left alone: the sandbox binds over it)."""
    link = workspace / "input"
    target = public_dir.resolve()
    if link.is_symlink() and link.resolve() == target:
        return
    if link.is_dir() and not link.is_symlink():
        return
    tmp = workspace / ".input.link"
    tmp.unlink(missing_ok=True)
    os.symlink(target, tmp, target_is_directory=True)
    os.replace(tmp, link)


def interpreter_paths(python: str) -> list[Path]:
    """What the job's interpreter needs to stay visible: its environment (a venv may live
    under /tmp, which the sandbox replaces), the base installation and this package (an
    editable install points at the source tree)."""
    exe = Path(python).resolve() if Path(python).is_absolute() else None
    candidates = [Path(sys.prefix), Path(sys.base_prefix), Path(sys.exec_prefix),
                  Path(__file__).resolve().parents[2]]
    if exe is not None:
        candidates.append(exe.parent.parent)
    seen: list[Path] = []
    for path in candidates:
        real = path.resolve()
        if real.is_dir() and real != Path("/") and real not in seen:
            seen.append(real)
    return seen


def bwrap_argv(workspace: Path, *, public_dir: Path | None = None, gpu: bool = False,
               hidden: Sequence[Path] = (), bwrap: str = "bwrap",
               dev: Path = Path("/dev"), keep: Sequence[Path] = ()) -> list[str]:
    """bubblewrap's command line for a job in `workspace`, up to the `--` before the job's.

    `hidden` paths (the daemon's state, key files) are covered: a directory by an empty
    tmpfs, a file by /dev/null. The workspace and public folder are bound after them, so
    they stay visible even when they lie inside a hidden directory; so are the `keep` paths
    (read-only), e.g. the interpreter's environment when it lies under /tmp."""
    ws = workspace.resolve()
    args = [bwrap, "--die-with-parent", "--unshare-pid", "--unshare-net", "--unshare-ipc",
            "--cap-drop", "ALL", "--ro-bind", "/", "/", "--dev", "/dev"]
    if gpu:
        for node in gpu_device_nodes(dev):
            args += ["--dev-bind", str(node), str(node)]
    args += ["--proc", "/proc", "--tmpfs", "/tmp"]
    for path in hidden:
        if path.is_dir():
            args += ["--tmpfs", str(path.resolve())]
        elif path.exists():
            args += ["--ro-bind", "/dev/null", str(path.resolve())]
    for path in keep:
        args += ["--ro-bind", str(path), str(path)]
    args += ["--bind", str(ws), str(ws)]
    if public_dir is not None:
        public = str(public_dir.resolve())
        args += ["--ro-bind", public, public]
        link = ws / "input"
        if link.is_dir() and not link.is_symlink():
            args += ["--ro-bind", public, str(link)]
    return [*args, "--chdir", str(ws), "--"]
