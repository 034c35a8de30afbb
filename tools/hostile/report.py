"""`HostileReport`: the figures a hostile run prints and the verdict, PASS or FAIL."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from tools.chaos import NodeKey
from tools.hostile.settings import RSS_LIMIT_MB


@dataclass
class AttackOutcome:
    """How the nodes that ran one attack ended."""

    nodes: list[str] = field(default_factory=list)


@dataclass
class HostileReport:
    """The figures a hostile run prints; `passed` when every one holds.

    - daemon deaths: the daemon exiting by itself (not killed or stopped by the run), or not
      getting ready again after a fault; each death is followed by a restart.
    - finished nodes lost: nodes seen done, buggy or failed that a later snapshot shows
      missing or changed (tools/chaos's `Ledger`).
    - nodes unfinished: nodes not done, buggy or failed when the tasks ended.
    - errors missing: buggy or failed nodes without a non-empty error saying why.
    - nodes timed out: nodes whose error names the time limit, but for the attacks that are
      meant to meet it (`Attack.may_time_out`): every other script ends well within it, so
      one is a job that exited while the daemon was stopped, called timed out.
    - victim task, tasks submitted by jobs: the victim must end `finished`, and the daemon
      must list only the tasks the run submitted.
    - API errors: an answer of the API about the run's tasks and nodes that is an error.
    - answers unaccounted: a task records fewer model calls than the answers it was served
      (or more), beyond those lost with a kill or a full disk (`unaccounted_answers`).
    - internal errors: unexpected exceptions the daemon logged with their traceback (what a
      job or a model wrote reached code that did not expect it), `logged_exceptions`.
    - leaks: the API key or a hidden-answers marker (as text, hex or base64) in a prompt the
      model received, an API answer, the database, the daemon's log or a node's output tail.
    - orphan processes: processes of the state dir the daemon did not start, after each
      restart; after the final SIGTERM, any.
    - late writes: a file in a finished node's workspace written after it finished.
    - files changed outside: the key file or a file of either task folder changed.
    - peak daemon RSS: the most resident memory of any daemon process of the run (its
      high-water mark, read every 0.2 s), against `RSS_LIMIT_MB`.
    - tasks finished, valid best submission: as in tools/chaos (`check_submission`,
      `check_best`).
    - faults: each fault exercised and its check held ("skipped" ones, that the machine does
      not allow, do not fail the run; "not exercised" ones do)."""

    deaths: list[str] = field(default_factory=list)
    lost: dict[NodeKey, str] = field(default_factory=dict)
    unfinished: list[str] = field(default_factory=list)
    unexplained: list[str] = field(default_factory=list)
    timed_out: list[str] = field(default_factory=list)
    victim_state: str = "unknown"
    foreign_tasks: list[str] = field(default_factory=list)
    api_errors: list[str] = field(default_factory=list)
    unaccounted: list[str] = field(default_factory=list)
    internal_errors: list[str] = field(default_factory=list)
    leaks: list[str] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)
    late: list[str] = field(default_factory=list)
    outside: list[str] = field(default_factory=list)
    peak_rss_mb: float = 0.0
    rss_limit_mb: int = RSS_LIMIT_MB
    tasks: dict[str, str] = field(default_factory=dict)
    bad_submissions: list[str] = field(default_factory=list)
    faults: dict[str, str] = field(default_factory=dict)
    fault_failures: list[str] = field(default_factory=list)
    attacks: dict[str, AttackOutcome] = field(default_factory=dict)
    node_states: Counter[str] = field(default_factory=Counter)
    notes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    wall_s: float = 0.0

    @property
    def finished(self) -> bool:
        return bool(self.tasks) and all(s == "finished" for s in self.tasks.values())

    @property
    def passed(self) -> bool:
        return (not self.deaths and not self.lost and not self.unfinished
                and not self.unexplained and not self.timed_out
                and self.victim_state == "finished" and not self.foreign_tasks
                and not self.api_errors and not self.unaccounted and not self.internal_errors
                and not self.leaks and not self.orphans and not self.late
                and not self.outside
                and 0 < self.peak_rss_mb <= self.rss_limit_mb and self.finished
                and not self.bad_submissions and not self.fault_failures
                and not self.problems)

    def lines(self) -> list[str]:
        states = ", ".join(f"{n} {s}" for s, n in sorted(self.node_states.items()))
        finished = sum(1 for s in self.tasks.values() if s == "finished")
        rows = [
            ("daemon deaths", str(len(self.deaths))),
            ("finished nodes lost", str(len(self.lost))),
            ("nodes unfinished", str(len(self.unfinished))),
            ("errors missing", str(len(self.unexplained))),
            ("nodes timed out", str(len(self.timed_out))),
            ("victim task", self.victim_state),
            ("tasks submitted by jobs", str(len(self.foreign_tasks))),
            ("API errors", str(len(self.api_errors))),
            ("answers unaccounted", str(len(self.unaccounted))),
            ("internal errors", str(len(self.internal_errors))),
            ("leaks", str(len(self.leaks))),
            ("orphan processes", str(len(self.orphans))),
            ("late writes", str(len(self.late))),
            ("files changed outside", str(len(self.outside))),
            ("peak daemon RSS", f"{self.peak_rss_mb:.0f} MiB (limit {self.rss_limit_mb} MiB)"),
            ("tasks finished", f"{finished}/{len(self.tasks)}"),
            ("valid best submission", "yes" if self.finished and not self.bad_submissions
             else "no"),
            ("faults", ", ".join(f"{k} {v.split(':')[0]}" for k, v in self.faults.items())
             or "none"),
            ("nodes", f"{sum(self.node_states.values())} ({states or 'none'})"),
            ("wall time", f"{self.wall_s:.1f} s"),
        ]
        out = [f"{name:<24}{value}" for name, value in rows]
        out += [f"fault {name}: {what}" for name, what in self.faults.items()]
        for name, outcome in self.attacks.items():
            for node in outcome.nodes or ["never ran"]:
                out.append(f"attack {name:<16}{node}")
        out += [f"note: {n}" for n in self.notes]
        problems = ([f"death: {d}" for d in self.deaths]
                    + [f"lost: task {t} node {n}: {why}" for (t, n), why in self.lost.items()]
                    + [f"unfinished: {u}" for u in self.unfinished]
                    + [f"no error: {u}" for u in self.unexplained]
                    + [f"timed out: {t}" for t in self.timed_out]
                    + [f"foreign task: {t}" for t in self.foreign_tasks]
                    + [f"API error: {e}" for e in self.api_errors]
                    + [f"unaccounted: {u}" for u in self.unaccounted]
                    + [f"internal error: {e}" for e in self.internal_errors]
                    + [f"leak: {leak}" for leak in self.leaks]
                    + [f"orphan: {o}" for o in self.orphans]
                    + [f"late write: {w}" for w in self.late]
                    + [f"changed outside: {o}" for o in self.outside]
                    + [f"submission: {s}" for s in self.bad_submissions]
                    + [f"fault: {f}" for f in self.fault_failures]
                    + [f"problem: {p}" for p in self.problems])
        if self.peak_rss_mb > self.rss_limit_mb:
            problems.append(f"rss: the daemon's peak RSS {self.peak_rss_mb:.0f} MiB is over "
                            f"{self.rss_limit_mb} MiB")
        return out + problems + [f"hostile: {'PASS' if self.passed else 'FAIL'}"]
