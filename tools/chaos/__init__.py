"""Chaos run: SIGKILL the daemon at chosen moments while it searches, restart it each time, and
check that nothing was lost, duplicated or left running.

`python -m tools.chaos` from the repository root (or `scripts/chaos`) builds an example
competition, runs `mlmaster daemon` as a subprocess (offline coder, private state dir and
socket), submits the task and kills the daemon `--kills` times. Each kill waits for one of
these moments, in an order shuffled by `--seed`, with random delays from the same seed:

- `start-up`: during the daemon's start-up (recovery), before its socket answers;
- `after-ready`: 0-0.2 s after it answers;
- `random`: 0.2-4 s after it answers;
- `generating`, `running`, `evaluating`: as soon as the database shows a node in that state
  (a running node gets another 0-1.5 s), or after 8 s if none shows up;
- `spawning`: as soon as the daemon has a child process for a node the database still shows
  as ready (started, its pid not yet committed), or after 8 s;
- `finished`: as soon as a node is newly done or buggy (its outcome just committed, the best
  submission maybe being copied), or after 8 s.

Between kills the database is read directly (read-only) and every finished node's outcome is
kept; when the task finishes before the kills are spent another is submitted. At the end the
daemon stops with SIGTERM and the run prints, and checks, the figures of `Report`.

Modules: `settings` (what to run), `database` (the read-only reads), `processes` (strays),
`checks` (what must hold), `daemon` (the subprocess), `run` (one run), `report` (its figures),
`cli` (the command line).
"""

from tools.chaos.checks import (
    Ledger,
    check_best,
    check_submission,
    check_tree,
    reruns_after_finish,
)
from tools.chaos.daemon import DaemonProcess
from tools.chaos.database import (
    FINISHED,
    TERMINAL_TASK,
    NodeKey,
    NodeRow,
    read_nodes,
    read_states,
    read_tasks,
)
from tools.chaos.processes import stray_processes
from tools.chaos.report import Report
from tools.chaos.settings import MOMENTS, ChaosSettings

__all__ = [
    "FINISHED",
    "MOMENTS",
    "TERMINAL_TASK",
    "ChaosSettings",
    "DaemonProcess",
    "Ledger",
    "NodeKey",
    "NodeRow",
    "Report",
    "check_best",
    "check_submission",
    "check_tree",
    "read_nodes",
    "read_states",
    "read_tasks",
    "reruns_after_finish",
    "stray_processes",
]
