"""A node's workspace: `input/` (the task's public data), `working/`, `submission/`.

`input` is a symlink to the public folder, bound read-only in the sandbox. Everything else in
the workspace is the job's to change: the daemon reads it back only through `untrusted`
(bounded, no links followed). When it lays the workspace out again for a re-run, the last
run's scratch stays (a script may pick up its own checkpoints), but every name the daemon
writes or reads is made anew: a link planted there is removed, never followed, a folder or a
FIFO in a file's place removed, and folders the job locked with mode 000 opened up again.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from mlmaster_daemon import untrusted

SCRIPT_NAME = "solution.py"
# What the daemon writes into a node's folder before its run: kept when it is laid out again.
DAEMON_FILES = frozenset({"memory.md"})
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True)
class Workspace:
    root: Path

    @property
    def script(self) -> Path:
        return self.root / SCRIPT_NAME

    @property
    def stdout(self) -> Path:
        return self.root / "stdout.log"

    @property
    def stderr(self) -> Path:
        return self.root / "stderr.log"

    @property
    def submission(self) -> Path:
        return self.root / "submission" / "submission.csv"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.json"

    @classmethod
    def create(cls, root: Path, public_dir: Path, code: str) -> Workspace:
        """Lay out the workspace for one run of `code`; an earlier run's outputs go, its
        scratch stays, and nothing it planted is written through."""
        ws = cls(root)
        root.mkdir(parents=True, exist_ok=True)
        os.chmod(root, 0o755)  # the daemon owns it; a job may have locked it
        for sub in ("working", "submission"):
            _real_folder(root / sub)
        for stale in (ws.submission, ws.metrics, ws.stdout, ws.stderr, ws.script,
                      root / "input", root / f"{SCRIPT_NAME}.tmp"):
            remove_tree(stale)  # a link itself, never what it points to
        os.symlink(public_dir.resolve(), root / "input", target_is_directory=True)
        tmp = ws.script.with_suffix(".py.tmp")
        tmp.unlink(missing_ok=True)
        with ws.create_file(tmp.name) as handle:
            handle.write(code.encode())
        os.replace(tmp, ws.script)
        return ws

    def clear(self, keep: frozenset[str] = DAEMON_FILES) -> None:
        """Remove everything a run left in the workspace but the `keep` names (what the daemon
        wrote itself): links are removed, never followed; folders a job made unreadable are
        opened up first (the daemon owns them). Blocking; may take a while for many files."""
        os.chmod(self.root, 0o755)
        with os.scandir(self.root) as entries:
            names = [entry.name for entry in entries if entry.name not in keep]
        for name in names:
            remove_tree(self.root / name)

    def create_file(self, name: str) -> BinaryIO:
        """A new, empty file `name` at the workspace's top, for the daemon to write: never
        through a link a job left there."""
        (self.root / name).unlink(missing_ok=True)
        return os.fdopen(os.open(self.root / name, _CREATE_FLAGS, 0o644), "wb")

    def output_tail(self, limit: int) -> str:
        """stdout then stderr, trimmed to `limit` characters keeping head and tail; each log is
        read bounded (its head and tail) and never through a link, known secrets redacted."""
        parts = []
        for label, path in (("stdout", self.stdout), ("stderr", self.stderr)):
            text = untrusted.text_excerpt(self.root, path.name, limit)
            if text.strip():
                parts.append(f"--- {label} ---\n{text}")
        return trim(("\n".join(parts)), limit)


def trim(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    half = (limit - 40) // 2
    return f"{text[:half]}\n... [{len(text) - 2 * half} characters cut] ...\n{text[-half:]}"


def _real_folder(path: Path) -> None:
    """Make `path` a real, open folder: a link or file a job left in its place is removed, a
    folder it locked is opened again."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        path.mkdir()
        return
    if stat.S_ISDIR(info.st_mode):
        os.chmod(path, 0o755)
        return
    path.unlink()
    path.mkdir()


def remove_tree(path: Path) -> None:
    """Remove `path` and all below it without following a link, making locked folders
    writable on the way; iterative, so a job's 10,000-deep folders cannot exhaust the stack."""
    pending: list[tuple[str, bool]] = [(str(path), False)]
    while pending:
        current, emptied = pending.pop()
        try:
            info = os.lstat(current)
        except FileNotFoundError:
            continue
        if not stat.S_ISDIR(info.st_mode):
            os.unlink(current)
        elif emptied:
            os.rmdir(current)
        else:
            os.chmod(current, 0o700)
            pending.append((current, True))
            with os.scandir(current) as entries:
                pending.extend((entry.path, False) for entry in entries)
