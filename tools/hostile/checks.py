"""The hostile run's checks of what a job may have done or the daemon may have got wrong:
files written after their node finished or outside the workspace, model answers the daemon
did not count, and exceptions it logged."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from tools.chaos import FINISHED, NodeKey, NodeRow
from tools.hostile.model import Served


def late_writes(state_dir: Path, rows: Mapping[NodeKey, NodeRow], slack_s: float = 1.0,
                max_entries: int = 100_000) -> list[str]:
    """Finished nodes with a file in their workspace written more than `slack_s` after they
    finished: some process of theirs outlived them."""
    found = []
    for (task_id, node_id), row in sorted(rows.items()):
        finished_at = dict(row.outcome)["finished_at"]
        if row.state not in FINISHED or finished_at is None:
            continue
        root = state_dir / "tasks" / task_id / "nodes" / str(node_id)
        seen = 0
        for folder, dirs, files in os.walk(root):
            for name in files:
                seen += 1
                try:
                    mtime = os.lstat(os.path.join(folder, name)).st_mtime
                except OSError:
                    continue
                if mtime > finished_at + slack_s:
                    rel = os.path.relpath(os.path.join(folder, name), root)
                    found.append(f"task {task_id} node {node_id}: {rel} written "
                                 f"{mtime - finished_at:.1f} s after the node finished")
                    break
            if seen > max_entries or (found and found[-1].startswith(
                    f"task {task_id} node {node_id}:")):
                dirs.clear()
                break
    return found


def unaccounted_answers(served: Sequence[Served], task: str, recorded: int,
                        windows: Sequence[tuple[float, float]], slack_s: float = 5.0,
                        ) -> str | None:
    """Why the daemon's count of `task`'s model calls (`recorded`) does not match the answers
    it was served (None when it does). An answer that overlaps a window where the daemon
    was killed or could not write (widened by `slack_s` before it) may be lost with it."""
    mine = [a for a in served if a.task == task]
    excused = sum(1 for a in mine if any(a.started <= end and a.ended >= start - slack_s
                                         for start, end in windows))
    if len(mine) - excused <= recorded <= len(mine):
        return None
    return (f"the {task} was served {len(mine)} answers ({excused} about the time of a kill "
            f"or a full disk) and records {recorded} calls")


def file_digests(paths: Iterable[Path]) -> dict[str, str]:
    """The SHA-256 of every file at or under `paths`, by path."""
    found = {}
    for path in paths:
        for file in [path] if path.is_file() else sorted(path.rglob("*")):
            if file.is_file():
                found[str(file)] = hashlib.sha256(file.read_bytes()).hexdigest()
    return found


def changed_files(before: Mapping[str, str], after: Mapping[str, str]) -> list[str]:
    """Files of `before` that are gone or different in `after`, and files new in `after`."""
    changed = [f"{p} {'changed' if p in after else 'removed'}" for p, digest in before.items()
               if after.get(p) != digest]
    return changed + [f"{p} added" for p in after if p not in before]


def logged_exceptions(log: bytes) -> list[str]:
    """The unexpected exceptions a daemon log shows: its JSON lines that carry a traceback
    (`log.exception`), as "event: Type: message"."""
    found = []
    for raw in log.splitlines():
        if b'"exception"' not in raw:
            continue
        try:
            entry = json.loads(raw)
        except ValueError:
            continue
        if not isinstance(entry, dict) or not entry.get("exception"):
            continue
        first = entry["exception"][0] if isinstance(entry["exception"], list) else {}
        what = (f"{first.get('exc_type', '?')}: {str(first.get('exc_value', ''))[:120]}"
                if isinstance(first, dict) else str(entry["exception"])[:120])
        where = ", ".join(f"{k} {entry[k]}" for k in ("task_id", "node_id", "path")
                          if k in entry)
        found.append(f"{entry.get('event', '?')} ({where}): {what}")
    return found
