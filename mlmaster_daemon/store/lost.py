"""A database that lost committed work (its `-wal` lost or cut short after a crash, an older
copy restored) is refused at start, before recovery writes anything, with the way back: the
backup to restore, or `--accept-lost-work`, which starts anyway after moving what the database
does not know into `<state_dir>/lost/<time>/`. Nothing is deleted, and the next check passes."""

from __future__ import annotations

import os
import shutil
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from mlmaster_daemon.errors import StoreError
from mlmaster_daemon.store.backup import BackupChoice, choose_backup
from mlmaster_daemon.store.evidence import Gap, GapKind, find_gaps, read_disk

ACCEPT_FLAG = "--accept-lost-work"
LOST_DIR = "lost"


class LostWork(StoreError):
    """The task folders prove commits the database no longer holds."""

    code = "lost_work"


@dataclass(frozen=True)
class SetAside:
    """What `--accept-lost-work` moved, and where to."""

    folder: Path
    moved: tuple[Path, ...]
    gaps: tuple[Gap, ...]


def guard_committed_work(state_dir: Path, db: Path, accept: bool,
                         now: float) -> SetAside | None:
    """Raise `LostWork` when the files under `state_dir/tasks` prove commits `db` lacks; with
    `accept`, move those files aside instead. None when nothing is missing."""
    tasks = read_disk(state_dir)
    if not tasks:
        return None
    gaps = find_gaps(tasks, db)
    if not gaps:
        return None
    message = lost_work_message(state_dir, db, gaps, choose_backup(db, tasks))
    if not accept:
        raise LostWork(message)
    return set_aside(state_dir, gaps, now, message)


def lost_work_message(state_dir: Path, db: Path, gaps: list[Gap],
                      choice: BackupChoice | None) -> str:
    """One line: what is missing, why, the backup to restore and the way to go on without."""
    example = next((g for g in gaps if g.kind is GapKind.OUTCOME), gaps[0]).description
    if choice is None:
        restore = "no backup exists to restore"
    elif choice.gaps >= len(gaps):
        restore = f"no backup holds more of it (the newest good one is {choice.path})"
    else:
        restore = (f"to restore the newest good backup, stop every daemon on {state_dir}, move "
                   f"{db.name}, {db.name}-wal and {db.name}-shm out of it, "
                   f"`cp {choice.path} {db}` and start again")
        if choice.gaps:
            restore += (f" (that backup still lacks {choice.gaps} of them, which "
                        f"{ACCEPT_FLAG} then sets aside)")
    return (f"database {db} has lost committed work: the folders in {state_dir / 'tasks'} "
            f"prove {_summary(gaps)} it does not hold (e.g. {example}), so its write-ahead "
            f"log {db.name}-wal was lost or cut short (a crash, a copy or restore without it, "
            f"a full disk); {restore}. Or start anyway with `mlmaster daemon {ACCEPT_FLAG}` "
            "(same --config or --state-dir): what the database does not know is moved to "
            f"{state_dir / LOST_DIR}/<time>/, nothing is deleted, and the tasks go on from "
            "what the database holds")


def set_aside(state_dir: Path, gaps: list[Gap], now: float, message: str) -> SetAside:
    """Move every file the gaps name to `state_dir/lost/<time>/`, keeping its path below the
    state dir, with a README.txt saying why."""
    folder = _new_folder(state_dir / LOST_DIR, now)
    paths = sorted({p for g in gaps for p in g.set_aside}, key=lambda p: len(p.parts))
    (folder / "README.txt").write_text(
        f"Moved here by `mlmaster daemon {ACCEPT_FLAG}` at "
        f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(now))}, because:\n{message}\n\n"
        "What the files proved and the database did not hold:\n"
        + "".join(f"- {g.description}\n" for g in gaps))
    moved: list[Path] = []
    for path in paths:
        if any(path.is_relative_to(done) for done in moved) or not os.path.lexists(path):
            continue
        target = folder / path.relative_to(state_dir)
        target.parent.mkdir(parents=True, exist_ok=True)
        # A rename on one file system; across two (a linked tasks/), a copy, then the delete.
        shutil.move(path, target)
        moved.append(path)
    return SetAside(folder, tuple(moved), tuple(gaps))


def _summary(gaps: list[Gap]) -> str:
    counts = Counter(g.kind for g in gaps)
    names = {GapKind.TASK: "task", GapKind.NODE: "node", GapKind.OUTCOME: "node outcome"}
    parts = [f"{counts[k]} {names[k]}{'s' if counts[k] != 1 else ''}" for k in GapKind if counts[k]]
    return parts[0] if len(parts) == 1 else f"{', '.join(parts[:-1])} and {parts[-1]}"


def _new_folder(root: Path, now: float) -> Path:
    stamp = time.strftime("%Y%m%dT%H%M%S", time.localtime(now))
    for attempt in range(1, 1000):
        folder = root / (stamp if attempt == 1 else f"{stamp}-{attempt}")
        try:
            folder.mkdir(parents=True)
        except FileExistsError:
            continue
        return folder
    raise StoreError(f"could not make a new folder in {root}; empty it and start again")
