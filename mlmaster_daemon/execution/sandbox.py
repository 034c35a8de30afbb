"""A job's command line: launcher, then the sandbox wrapper (bubblewrap or none), then the script.

With bubblewrap the job sees an allowlist and nothing else: the system's programs and
libraries (/usr, and /bin, /lib... as the host has them: a directory bound read-only, a
top-level link such as /bin -> usr/bin made again as a link), the few /etc entries that
programs and the numeric libraries read (`ETC_ENTRIES`: the loader's cache, users and groups,
time zone, certificates...; never shadow, sudoers or keys), /sys read-only (CPU and GPU
libraries read it), the interpreter's environment read-only (`interpreter_paths`), the task's
public folder read-only, its own workspace read-write, a private `/tmp` (also its HOME), a
minimal `/dev` (plus the NVIDIA device nodes for a GPU lease), its own `/proc`, no network (a
fresh network namespace holds only `lo`), and its own pid namespace: when the namespace's
first process dies, the kernel kills every process in it, so nothing escapes by `setsid`.
The task's hidden answers, other tasks, the daemon's state, its key files and sockets and the
users' homes are simply not there; the `hidden` paths are covered besides, because they may lie
inside something that is visible. The root the job sees is read-only, `--die-with-parent` ends
the sandbox when the daemon dies, and `--cap-drop ALL` keeps a job run by root from remounting
its read-only view writable.

The public data stays reachable at `<workspace>/input`: that is a symlink to the public
folder (made by `Workspace.create`), and the sandbox binds the folder read-only at the very
path the link points to. (Binding onto the link itself fails: bubblewrap resolves its target
outside the new root. Replacing the link with a directory would leave a directory that the
next `Workspace.create` cannot unlink.) A real `input` directory is bound over instead.
"""

from __future__ import annotations

import fnmatch
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
# Caches and dotfiles that default to $HOME, which the sandbox does not show.
SANDBOX_ENV = {
    "HOME": "/tmp",
    "TMPDIR": "/tmp",
    "MPLCONFIGDIR": "/tmp/matplotlib",
    "TRITON_CACHE_DIR": "/tmp/triton",
}
# Top-level system directories, bound read-only (or made again as links where the host has
# merged them into /usr).
SYSTEM_DIRS = ("usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32")
# The /etc entries (shell patterns) a job may read: what the loader, libc's user and time
# zone look-ups, TLS, fonts, Python and the numeric and GPU libraries read. Nothing secret.
ETC_ENTRIES = (
    "ld.so.cache", "ld.so.conf", "ld.so.conf.d", "ld.so.preload",
    "localtime", "timezone", "locale.alias", "locale.conf",
    "passwd", "group", "nsswitch.conf", "hosts", "host.conf", "gai.conf", "protocols",
    "services", "ssl", "ca-certificates", "ca-certificates.conf", "pki", "crypto-policies",
    "alternatives", "fonts", "mime.types", "magic", "magic.mime", "os-release", "lsb-release",
    "debian_version", "python3*", "matplotlibrc", "OpenCL", "glvnd", "vulkan",
)
# Secrets inside allowed /etc entries, covered with an empty directory.
ETC_SECRETS = ("ssl/private", "pki/tls/private")


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
    """The directories the job's interpreter needs to see, as absolute paths (not resolved:
    the job starts the interpreter by that name): the daemon's own environment and base
    installation (the default interpreter is the daemon's), and for `python` the environment
    holding it (a venv) and the installation its executable resolves to.

    Nothing of this project: a job does not import it, and the launcher, which does, runs
    outside the sandbox."""
    candidates = [Path(sys.prefix), Path(sys.exec_prefix), Path(sys.base_prefix),
                  Path(sys.base_exec_prefix)]
    exe = Path(python)
    if exe.is_absolute():
        candidates += [exe.parent.parent, exe.resolve().parent.parent]
    kept: list[Path] = []
    seen: set[Path] = set()
    for candidate in candidates:
        path = Path(os.path.abspath(candidate))
        real = path.resolve()
        if real.is_dir() and real != Path("/") and real not in seen:
            seen.add(real)
            kept.append(path)
    return kept


def system_view(root: Path = Path("/")) -> list[str]:
    """bubblewrap arguments that show the system under `root` read-only, at the same places
    under the job's /: `SYSTEM_DIRS`, the `ETC_ENTRIES` of etc/ (with `ETC_SECRETS` covered)
    and sys/. A symlink among them is made again as the same link, not bound: bound, it
    would show its target's contents at the link's place and hide that it is a link."""
    args: list[str] = []
    for name in SYSTEM_DIRS:
        args += _show(root / name, f"/{name}")
    etc = root / "etc"
    try:
        names = sorted(os.listdir(etc))
    except OSError:
        names = []
    for name in names:
        if any(fnmatch.fnmatchcase(name, pattern) for pattern in ETC_ENTRIES):
            args += _show(etc / name, f"/etc/{name}")
    for secret in ETC_SECRETS:
        # Only where no link leads elsewhere: the links are made again, not followed.
        if (etc / secret).is_dir() and (etc / secret).resolve() == etc.resolve() / secret:
            args += ["--tmpfs", f"/etc/{secret}"]
    if (root / "sys").is_dir():
        args += ["--ro-bind", str(root / "sys"), "/sys"]
    return args


def _show(source: Path, dest: str) -> list[str]:
    if source.is_symlink():
        return ["--symlink", os.readlink(source), dest]
    if source.exists():
        return ["--ro-bind", str(source), dest]
    return []


def _inside(path: Path, roots: Sequence[Path]) -> bool:
    return any(path.is_relative_to(root) for root in roots)


def _cover(path: Path) -> list[str]:
    # A directory gets an empty tmpfs; anything else (a file, the API's socket) /dev/null.
    if path.is_dir():
        return ["--tmpfs", str(path.resolve())]
    if path.exists():
        return ["--ro-bind", "/dev/null", str(path.resolve())]
    return []


def bwrap_argv(workspace: Path, *, public_dir: Path | None = None, gpu: bool = False,
               hidden: Sequence[Path] = (), bwrap: str = "bwrap",
               dev: Path = Path("/dev"), keep: Sequence[Path] = (),
               readable: Sequence[Path] = (), root: Path = Path("/")) -> list[str]:
    """bubblewrap's command line for a job in `workspace`, up to the `--` before the job's.

    The job sees what the module docstring lists: `system_view(root)`, the `keep` paths
    (read-only; e.g. the interpreter's environment, even under /tmp, which the sandbox
    replaces), the `readable` files (read-only, at their resolved paths; e.g. a sample
    submission kept beside the hidden answers), the public folder and the workspace.
    `hidden` paths (the daemon's state, key files, the API socket) are covered: a directory
    by an empty tmpfs, anything else by /dev/null. The workspace, public folder and
    `readable` files are bound after them, so they stay visible even when they lie inside a
    hidden directory; a hidden path inside the workspace or public folder is covered again."""
    ws = workspace.resolve()
    system = [root / name for name in SYSTEM_DIRS if (root / name).exists()]
    args = [bwrap, "--die-with-parent", "--unshare-pid", "--unshare-net", "--unshare-ipc",
            "--cap-drop", "ALL", *system_view(root), "--dev", "/dev"]
    if gpu:
        for node in gpu_device_nodes(dev):
            args += ["--dev-bind", str(node), str(node)]
    args += ["--proc", "/proc", "--tmpfs", "/tmp"]
    for path in keep:
        real = path.resolve()
        if _inside(real, system):
            continue
        args += ["--ro-bind", str(real), str(real)]
        if path != real and not _inside(path, system):
            # The job names the interpreter by this path: make the link it goes through.
            args += ["--symlink", str(real), str(path)]
    for path in hidden:
        args += _cover(path)
    for path in readable:
        args += ["--ro-bind", str(path.resolve()), str(path.resolve())]
    args += ["--bind", str(ws), str(ws)]
    shown = [ws]
    if public_dir is not None:
        public = public_dir.resolve()
        args += ["--ro-bind", str(public), str(public)]
        shown.append(public)
        link = ws / "input"
        if link.is_dir() and not link.is_symlink():
            args += ["--ro-bind", str(public), str(link)]
    for path in hidden:
        real = path.resolve()
        if real not in shown and _inside(real, shown):
            args += _cover(path)
    return [*args, "--remount-ro", "/", "--chdir", str(ws), "--"]
