"""Running an offline-coder script as the daemon would: in a fresh workspace with `input/`
linked to the task's public folder, in a real Python subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from mlmaster_daemon.coders.protocol import CodeResponse
from mlmaster_daemon.tasks.spec import TaskSpec

RUN_TIMEOUT_S = 120


@dataclass(frozen=True)
class Run:
    task: TaskSpec
    response: CodeResponse
    workspace: Path
    returncode: int
    output: str

    @property
    def code(self) -> str:
        return self.response.code

    def feature_names(self) -> list[str]:
        """The first member's feature names, as the script saved them."""
        names: list[str] = json.loads((self.workspace / "working" / "features_1.json")
                                      .read_text())
        return names

    def written(self) -> dict[str, object]:
        """The script's metrics.json."""
        loaded: dict[str, object] = json.loads((self.workspace / "metrics.json").read_text())
        return loaded


def run_script(task: TaskSpec, response: CodeResponse | str, workspace: Path) -> Run:
    """Run `response`'s script (or bare code) in `workspace`, which must not exist yet."""
    if isinstance(response, str):
        response = CodeResponse(plan="", code=response, summary="")
    workspace.mkdir()
    (workspace / "input").symlink_to(task.public_dir, target_is_directory=True)
    (workspace / "solution.py").write_text(response.code)
    done = subprocess.run([sys.executable, "solution.py"], cwd=workspace, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          timeout=RUN_TIMEOUT_S, check=False)
    return Run(task, response, workspace, done.returncode, done.stdout)
