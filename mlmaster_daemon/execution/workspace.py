"""A node's workspace: `input/` (the task's public data), `working/`, `submission/`.

`input` is a symlink to the public folder, bound read-only in the sandbox. Everything else in
the workspace is the job's to change: the daemon reads it back only through `untrusted`
(bounded, no links followed) and, when it lays the workspace out again for a re-run, removes
whatever links the last run planted instead of writing through them.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from mlmaster_daemon import untrusted

SCRIPT_NAME = "solution.py"
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
        """Lay out a fresh workspace for one run of `code` (an old one is replaced)."""
        ws = cls(root)
        root.mkdir(parents=True, exist_ok=True)
        for sub in ("working", "submission"):
            _real_folder(root / sub)
        for stale in (ws.submission, ws.metrics, ws.stdout, ws.stderr, ws.script):
            # Unlinks a link itself, never what it points to.
            stale.unlink(missing_ok=True)
        link = root / "input"
        if link.is_symlink() or link.exists():
            link.unlink()
        os.symlink(public_dir.resolve(), link, target_is_directory=True)
        tmp = ws.script.with_suffix(".py.tmp")
        tmp.unlink(missing_ok=True)
        with ws.create_file(tmp.name) as handle:
            handle.write(code.encode())
        os.replace(tmp, ws.script)
        return ws

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
    """Make `path` a real folder: a link or file a job left in its place is removed first."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        path.mkdir()
        return
    if not stat.S_ISDIR(info.st_mode):
        path.unlink()
        path.mkdir()
