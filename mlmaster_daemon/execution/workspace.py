"""A node's workspace: `input/` (the task's public data), `working/`, `submission/`.

`input` is a symlink to the public folder; making it truly read-only for the child is the
sandbox's job (bubblewrap's read-only bind), which the execution-supervisor issue adds.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

SCRIPT_NAME = "solution.py"


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
            (root / sub).mkdir(exist_ok=True)
        for stale in (ws.submission, ws.metrics, ws.stdout, ws.stderr):
            stale.unlink(missing_ok=True)
        link = root / "input"
        if link.is_symlink() or link.exists():
            link.unlink()
        os.symlink(public_dir.resolve(), link, target_is_directory=True)
        tmp = ws.script.with_suffix(".py.tmp")
        tmp.write_text(code)
        os.replace(tmp, ws.script)
        return ws

    def output_tail(self, limit: int) -> str:
        """stdout then stderr, trimmed to `limit` characters keeping head and tail."""
        parts = []
        for label, path in (("stdout", self.stdout), ("stderr", self.stderr)):
            text = path.read_text(errors="replace") if path.exists() else ""
            if text.strip():
                parts.append(f"--- {label} ---\n{text}")
        return trim(("\n".join(parts)), limit)


def trim(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    half = (limit - 40) // 2
    return f"{text[:half]}\n... [{len(text) - 2 * half} characters cut] ...\n{text[-half:]}"
