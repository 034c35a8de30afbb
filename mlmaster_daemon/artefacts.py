"""What a task leaves on disk besides its nodes' workspaces: where its folders are, `best/` (the
best node's code, submission and node.json), `top/` (the k best, at the end), and
`committed.json` (the last outcome the database holds, which a start compares the database
with). Every file copied out of a workspace goes through `untrusted` (never a link).

Blocking file I/O: async callers use `asyncio.to_thread`.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from mlmaster_daemon import untrusted
from mlmaster_daemon.evaluation import SUBMISSION
from mlmaster_daemon.execution.workspace import Workspace
from mlmaster_daemon.logs import get_logger
from mlmaster_daemon.store.evidence import BEST_NAME, COMMITTED_NAME

log = get_logger("mlmaster.artefacts")
# A node's files kept in best/ and top/ passed evaluation; this bound only stops a file that
# grew after it (a job that outlived its run) from being copied without end.
MAX_KEPT_SUBMISSION_BYTES = 8 * 1024**3
# The submission's name in best/ and in each top/<rank>-node<id>/.
KEPT_SUBMISSION = "submission.csv"


def task_root(state_dir: Path, task_id: str) -> Path:
    return state_dir / "tasks" / task_id


def node_dir(state_dir: Path, task_id: str, node_id: int) -> Path:
    return task_root(state_dir, task_id) / "nodes" / str(node_id)


def best_dir(state_dir: Path, task_id: str) -> Path:
    return task_root(state_dir, task_id) / BEST_NAME


def best_submission(state_dir: Path, task_id: str) -> Path:
    """Where the task's best submission is (once it has one)."""
    return best_dir(state_dir, task_id) / KEPT_SUBMISSION


def best_node_id(target: Path) -> int | None:
    """The node whose files best/ holds, from its node.json."""
    try:
        return int(json.loads((target / "node.json").read_text())["node_id"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def clear_if_present(ws: Workspace) -> None:
    if ws.root.is_dir():
        ws.clear()


def has_submission(root: Path) -> bool:
    """Whether the workspace at `root` still holds its submission as a regular file."""
    try:
        untrusted.size_of(root, SUBMISSION)
    except (OSError, ValueError):
        return False
    return True


def write_committed(root: Path, record: dict[str, object]) -> None:
    """Replace `root/committed.json` with `record`, atomically (each writer its own temp)."""
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".committed-{record['node_id']}.tmp"
    tmp.write_text(json.dumps(record))
    os.replace(tmp, root / COMMITTED_NAME)


def _copy_submission(ws: Workspace, target: Path) -> None:
    """The node's submission, copied from the file checked at evaluation (never a link)."""
    untrusted.copy_out(ws.root, SUBMISSION, target, MAX_KEPT_SUBMISSION_BYTES)


def copy_best(ws: Workspace, target: Path, node_id: int, metric: float, code: str) -> None:
    """Replace `target` with the new best's files; the swap is a rename, so a reader sees either
    the old best or the new one, whole."""
    staging = target.with_name("best.new")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    (staging / "solution.py").write_text(code)
    _copy_submission(ws, staging / KEPT_SUBMISSION)
    (staging / "node.json").write_text(json.dumps({"node_id": node_id, "metric": metric}))
    old = target.with_name("best.old")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        target.rename(old)
    staging.rename(target)
    shutil.rmtree(old, ignore_errors=True)


@dataclass(frozen=True)
class KeptSubmission:
    """One of the k best nodes kept in top/ at the end of a task."""

    rank: int
    node_id: int
    submission: Path


def _top_name(rank: int, node_id: int) -> str:
    return f"{rank}-node{node_id}"


def top_submissions(root: Path) -> list[KeptSubmission]:
    """What top/ holds, best first (empty unless the task kept more than its best)."""
    top = root / "top"
    if not top.is_dir():
        return []
    kept = []
    for entry in top.iterdir():
        rank, sep, node = entry.name.partition("-node")
        if sep and rank.isdigit() and node.isdigit():
            kept.append(KeptSubmission(int(rank), int(node), entry / KEPT_SUBMISSION))
    return sorted(kept, key=lambda k: k.rank)


def copy_top(root: Path, nodes: list[tuple[int, str]]) -> None:
    """top/<rank>-node<id>/ with each (node id, code)'s submission and script, best first; a
    node whose submission is no longer a safe file is left out."""
    top = root / "top"
    shutil.rmtree(top, ignore_errors=True)
    rank = 0
    for node_id, code in nodes:
        ws = Workspace(root / "nodes" / str(node_id))
        target = top / _top_name(rank + 1, node_id)
        target.mkdir(parents=True)
        try:
            _copy_submission(ws, target / KEPT_SUBMISSION)
        except (FileNotFoundError, untrusted.UnsafeFile) as exc:
            log.warning("a top node's submission cannot be kept", node_id=node_id,
                        error=str(exc))
            shutil.rmtree(target)
            continue
        (target / "solution.py").write_text(code)
        rank += 1
