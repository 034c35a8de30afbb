"""The checks of a chaos run: finished nodes kept unchanged, no script run twice, a search tree
that matches the node rows, and a valid best submission."""

from __future__ import annotations

import csv
import json
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mlmaster_daemon.models import NodeState
from mlmaster_daemon.search.tree import ROOT, Outcome, TreeNode
from mlmaster_daemon.tasks.selection import Candidate, Rule, choose
from tools.chaos.database import NodeKey, NodeRow

# What a run leaves in a node's workspace; written again only if the script runs again.
RUN_ARTIFACTS = ("solution.py", "stdout.log", "stderr.log", "metrics.json",
                 "submission/submission.csv")
# The node states whose outcome the search tree records (a failed node has none there).
TREE_OUTCOMES = {NodeState.DONE: Outcome.GOOD, NodeState.BUGGY: Outcome.BUGGY}


class Ledger:
    """Every finished node's outcome as first seen; each later snapshot must still show it,
    unchanged. A node that went missing or changed is lost (the first reason is kept)."""

    def __init__(self) -> None:
        self.first: dict[NodeKey, NodeRow] = {}
        self.lost: dict[NodeKey, str] = {}

    def observe(self, rows: Mapping[NodeKey, NodeRow], when: str) -> None:
        for key, seen in self.first.items():
            now = rows.get(key)
            if now is None:
                self.lost.setdefault(key, f"missing {when}")
            elif now != seen:
                self.lost.setdefault(key, f"{', '.join(seen.differences(now))} changed {when}")
        for key, row in rows.items():
            if row.finished and key not in self.first:
                self.first[key] = row


def reruns_after_finish(state_dir: Path, rows: Mapping[NodeKey, NodeRow]) -> list[str]:
    """Finished nodes whose workspace was written after they finished: their script ran
    again (a duplicated run). The run writes its artifacts before the outcome is recorded."""
    found = []
    for (task_id, node_id), row in rows.items():
        finished_at = dict(row.outcome)["finished_at"]
        if not row.finished or finished_at is None:
            continue
        ws = state_dir / "tasks" / task_id / "nodes" / str(node_id)
        for name in RUN_ARTIFACTS:
            try:
                mtime = (ws / name).stat().st_mtime
            except OSError:
                continue
            if mtime > finished_at + 0.01:
                found.append(f"task {task_id} node {node_id}: {name} written "
                             f"{mtime - finished_at:.2f} s after the node finished")
    return found


def check_tree(task: Mapping[str, Any], rows: Mapping[NodeKey, NodeRow],
               ) -> tuple[list[str], list[str]]:
    """(duplicates, mismatches) between the task's saved search tree and its node rows.

    A duplicate is a node listed twice among the tree's children (one node in two search
    slots). A mismatch is a done/buggy node the tree lacks or records with another parent or
    outcome, or a node the tree has as finished that the database does not."""
    if not task["search_state"]:
        return [], [f"task {task['id']} has no saved search state"]
    saved = json.loads(task["search_state"])["policy"]["tree"]
    raws = saved.get("nodes") or [json.loads(row) for row in task.get("tree_rows", [])]
    tree = [TreeNode.from_state(raw) for raw in raws]
    by_id = {node.id: node for node in tree}
    listed = Counter(child for node in tree for child in node.children)
    duplicates = [f"task {task['id']} node {n} is listed {k} times in the search tree"
                  for n, k in sorted(listed.items()) if k > 1]
    mismatches = []
    mine = {n: r for (t, n), r in rows.items() if t == task["id"]}
    for node_id, row in sorted(mine.items()):
        outcome = TREE_OUTCOMES.get(NodeState(row.state))
        if outcome is None:
            continue
        node = by_id.get(node_id)
        parent = dict(row.outcome)["parent_id"] or ROOT
        if node is None:
            mismatches.append(f"task {task['id']} node {node_id} ({row.state}) is not in the tree")
        elif node.parent_id != parent or node.outcome != outcome:
            mismatches.append(f"task {task['id']} node {node_id}: tree says parent "
                              f"{node.parent_id} {node.outcome}, database parent {parent} "
                              f"{row.state}")
    for node_id, node in by_id.items():
        if node_id != ROOT and node.outcome is not Outcome.PENDING and (
                node_id not in mine or NodeState(mine[node_id].state) not in TREE_OUTCOMES):
            mismatches.append(f"task {task['id']} node {node_id} is {node.outcome} in the tree "
                              "but not finished in the database")
    return duplicates, mismatches


def check_submission(state_dir: Path, task: Mapping[str, Any]) -> str | None:
    """Why the task's best submission is not valid (None when it is): it must exist and have
    the sample submission's columns, row count and ids."""
    spec = json.loads(task["spec"])
    sample = Path(spec["public_dir"]) / spec["sample_submission_file"]
    best = state_dir / "tasks" / task["id"] / "best" / "submission.csv"
    if task["best_node_id"] is None or not best.exists():
        return f"task {task['id']} has no best submission ({task['error']})"
    want, got = _read_csv(sample), _read_csv(best)
    if got[0] != want[0]:
        return f"task {task['id']}: columns {got[0]} instead of {want[0]}"
    if len(got[1]) != len(want[1]):
        return f"task {task['id']}: {len(got[1])} rows instead of {len(want[1])}"
    key = want[0].index(spec["id_column"]) if spec["id_column"] in want[0] else 0
    if sorted(r[key] for r in got[1]) != sorted(r[key] for r in want[1]):
        return f"task {task['id']}: the ids differ from the sample submission's"
    if any(not value.strip() for r in got[1] for value in r):
        return f"task {task['id']}: empty values in the submission"
    return None


def check_best(state_dir: Path, task: Mapping[str, Any], rows: Mapping[NodeKey, NodeRow],
               ) -> str | None:
    """Why the task's recorded best is not the done node its selection rule picks (None when
    it is): by validation metric, or once the task chose its final submission, by the rule it
    recorded (the hidden holdout's scores). `best/` must hold that node's files, or the
    ensemble the task says it kept."""
    spec = json.loads(task["spec"])
    outcomes = {n: dict(r.outcome) for (t, n), r in rows.items()
                if t == task["id"] and r.state == NodeState.DONE
                and dict(r.outcome)["metric"] is not None}
    if not outcomes:
        return None
    selection = json.loads(task["selection"]) if task.get("selection") else None
    rule = Rule(selection["rule"]) if selection else Rule.VALIDATION
    if selection is None and any(o["holdout_metric"] is not None for o in outcomes.values()):
        # While it runs, best/ follows the rule too; only its end says which rule it was.
        return None if task["best_node_id"] in outcomes else (
            f"task {task['id']}: best recorded is node {task['best_node_id']}, not a done node")
    choice = choose([Candidate(n, o["metric"], o["holdout_metric"])
                     for n, o in outcomes.items()], rule, spec["lower_is_better"])
    assert choice is not None
    best_id = choice.node_id
    if task["best_node_id"] != best_id or task["best_metric"] != outcomes[best_id]["metric"]:
        return (f"task {task['id']}: best recorded is node {task['best_node_id']} "
                f"({task['best_metric']}), the best done node by {rule.value} is {best_id} "
                f"({outcomes[best_id]['metric']})")
    best = state_dir / "tasks" / task["id"] / "best"
    kept = bool(selection and (selection.get("ensemble") or {}).get("kept"))
    try:
        copied = json.loads((best / "node.json").read_text())["node_id"]
        same = (best / "submission.csv").read_bytes() == (
            state_dir / "tasks" / task["id"] / "nodes" / str(copied) / "submission"
            / "submission.csv").read_bytes()
        if kept:
            same = json.loads((best / "ensemble.json").read_text())["members"] == (
                selection or {})["ensemble"]["members"]
    except (OSError, ValueError, KeyError) as exc:
        return f"task {task['id']}: best/ is unreadable ({exc})"
    if copied != task["best_node_id"] or not same:
        return (f"task {task['id']}: best/ holds node {copied}'s files, the task records node "
                f"{task['best_node_id']}")
    return None


def _read_csv(path: Path) -> tuple[list[str], list[list[str]]]:
    with path.open(newline="") as handle:
        rows = list(csv.reader(handle))
    return (rows[0], rows[1:]) if rows else ([], [])
