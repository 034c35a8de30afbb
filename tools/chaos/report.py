"""The figures a chaos run prints, and whether it passed."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from mlmaster_daemon.models import TaskState
from tools.chaos.database import NodeKey
from tools.chaos.settings import MOMENTS


@dataclass
class Report:
    """The figures a chaos run prints; `passed` when every one holds.

    - kills survived: kills after which the daemon came back ready (a kill during a start-up
      counts once the start-up after it is ready).
    - finished nodes lost: nodes seen done, buggy or failed in any snapshot that a later one
      shows missing or with another outcome (`OUTCOME_COLUMNS`).
    - duplicated nodes: node ids are a primary key, so a duplicate is never a second row but
      one search outcome produced twice: a finished node whose workspace was written after it
      finished (its script ran again), a node listed twice among the search tree's children
      (one node in two search slots), or a task counting more steps (nodes not interrupted
      before their code) than its budget (a step paid twice). A node whose run a kill cut
      short, even in evaluation, and that runs again is no duplicate: it had no outcome yet.
    - orphan processes: right after each restart is ready, processes of the state dir that
      the current daemon did not start; after the final SIGTERM, any process of it.
    - search tree mismatches: the saved search tree and the node rows disagree (`check_tree`).
    - daemon crashes: the daemon exiting by itself, not getting ready, or failing its SIGTERM.
    - tasks finished, valid best submission: every task ended `finished`, with a best
      submission shaped like the sample submission that is its best done node's."""

    kills: int = 0
    survived: int = 0
    lost: dict[NodeKey, str] = field(default_factory=dict)
    duplicates: list[str] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)
    tree_mismatches: list[str] = field(default_factory=list)
    crashes: list[str] = field(default_factory=list)
    tasks: dict[str, str] = field(default_factory=dict)
    bad_submissions: list[str] = field(default_factory=list)
    moments: Counter[str] = field(default_factory=Counter)
    node_states: Counter[str] = field(default_factory=Counter)
    interrupted: int = 0
    wall_s: float = 0.0

    @property
    def finished(self) -> bool:
        return bool(self.tasks) and all(s == TaskState.FINISHED for s in self.tasks.values())

    @property
    def passed(self) -> bool:
        return (self.survived == self.kills and not self.lost and not self.duplicates
                and not self.orphans and not self.tree_mismatches and not self.crashes
                and self.finished and not self.bad_submissions)

    def lines(self) -> list[str]:
        states = ", ".join(f"{n} {s}" for s, n in sorted(self.node_states.items()))
        moments = ", ".join(f"{m} {self.moments[m]}" for m in MOMENTS if self.moments[m])
        finished = sum(1 for s in self.tasks.values() if s == TaskState.FINISHED)
        rows = [
            ("kills survived", f"{self.survived}/{self.kills}"),
            ("finished nodes lost", str(len(self.lost))),
            ("duplicated nodes", str(len(self.duplicates))),
            ("orphan processes", str(len(self.orphans))),
            ("search tree mismatches", str(len(self.tree_mismatches))),
            ("daemon crashes", str(len(self.crashes))),
            ("tasks finished", f"{finished}/{len(self.tasks)}"),
            ("valid best submission", "yes" if self.finished and not self.bad_submissions
             else "no"),
            ("nodes", f"{sum(self.node_states.values())} ({states or 'none'}; "
                      f"{self.interrupted} interrupted before code)"),
            ("kill moments", moments or "none"),
            ("wall time", f"{self.wall_s:.1f} s"),
        ]
        out = [f"{name:<24}{value}" for name, value in rows]
        problems = ([f"lost: task {t} node {n}: {why}" for (t, n), why in self.lost.items()]
                    + [f"duplicated: {d}" for d in self.duplicates]
                    + [f"orphan: {o}" for o in self.orphans]
                    + [f"tree: {m}" for m in self.tree_mismatches]
                    + [f"crash: {c}" for c in self.crashes]
                    + [f"submission: {s}" for s in self.bad_submissions])
        return out + problems + [f"chaos: {'PASS' if self.passed else 'FAIL'}"]
