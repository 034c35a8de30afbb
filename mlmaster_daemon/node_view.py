"""What `mlmaster show`, `logs` and `diff` print about a task's nodes: pure text from the API's
JSON, so it is tested without a terminal."""

from __future__ import annotations

import difflib
import textwrap
from typing import Any

from mlmaster_daemon.models import NodeState
from mlmaster_daemon.watch import format_metric
from mlmaster_daemon.watch_state import holdout_summary, number, selection_summary

WRAP = 100


def holdout_scores(node: dict[str, Any]) -> tuple[str, str] | None:
    """(holdout score, gap: validation - holdout, signed) of a node scored on the hidden
    holdout; None for one that was not (or comes from before the holdout existed)."""
    holdout = number(node.get("holdout_metric"))
    if holdout is None:
        return None
    metric = number(node.get("metric"))
    return format_metric(holdout), "-" if metric is None else f"{metric - holdout:+.5f}"


def node_line(node: dict[str, Any]) -> str:
    """One line per node: id, parent, operator, status, metric, and its holdout score and
    the gap between them when it has one."""
    parent = "root" if node["parent_id"] is None else node["parent_id"]
    scores = holdout_scores(node)
    return (f"  node {node['id']:<4} <- {parent!s:<5} {node['operator']:<8} "
            f"{node['status']:<10} metric={format_metric(node['metric'])}"
            + (f" holdout={scores[0]} gap={scores[1]}" if scores else ""))


def holdout_lines(task: dict[str, Any]) -> list[str]:
    """The task's hidden holdout and why its final submission was chosen, when it says."""
    held, chosen = holdout_summary(task.get("holdout")), selection_summary(task.get("selection"))
    return [*(wrapped(f"holdout: {held}", "") if held else []),
            *(wrapped(f"final: {chosen}", "") if chosen else [])]


def node_note(node: dict[str, Any]) -> str:
    """What to read about a node: its error when it is buggy or failed, else its summary."""
    failed = node["status"] in (NodeState.BUGGY, NodeState.FAILED)
    text = (node.get("error") if failed else None) or node.get("summary") or node.get("error")
    return str(text or "")


def wrapped(text: str, indent: str) -> list[str]:
    """`text` wrapped to WRAP columns, whole, each paragraph kept."""
    lines: list[str] = []
    for paragraph in text.splitlines():
        lines.extend(textwrap.wrap(paragraph, WRAP, initial_indent=indent,
                                   subsequent_indent=indent) or [indent.rstrip()])
    return lines


def path_from_root(nodes: list[dict[str, Any]], node_id: int) -> list[int]:
    """Node ids from the root down to `node_id`, following parent_id."""
    parents = {n["id"]: n["parent_id"] for n in nodes}
    path: list[int] = []
    current: int | None = node_id
    while current is not None and current not in path:
        path.append(current)
        current = parents.get(current)
    return path[::-1]


def task_lines(task: dict[str, Any], nodes: list[dict[str, Any]]) -> list[str]:
    """The node listing under `mlmaster show ID`, ending with the best node's path."""
    lines = holdout_lines(task)
    for node in nodes:
        lines.append(node_line(node))
        note = node_note(node)
        if note:
            failed = node["status"] in (NodeState.BUGGY, NodeState.FAILED) and node.get("error")
            lines.extend(wrapped(("error: " if failed else "") + note, "      "))
    best = task.get("best")
    if best:
        path = path_from_root(nodes, int(best["node_id"]))
        lines.append("best path: " + " -> ".join(f"node {n}" for n in path))
    return lines


def usage_line(usage: dict[str, Any]) -> str:
    if not usage.get("calls"):
        return "none (no model calls)"
    return (f"{usage['total_tokens']} ({usage['prompt_tokens']} prompt, "
            f"{usage['completion_tokens']} completion) in {usage['calls']} calls, "
            f"cost ${usage['cost']:.4f}")


def node_sections(node: dict[str, Any]) -> list[tuple[str, str]]:
    """`mlmaster show ID NODE` as (heading, body) pairs; the code body is printed apart so a
    terminal can highlight it."""
    parent = "root" if node["parent_id"] is None else f"node {node['parent_id']}"
    scores = holdout_scores(node)
    sections = [
        (f"node {node['id']} of task {node['task_id']}",
         f"{node['operator']} from {parent}, {node['status']}, "
         f"metric {format_metric(node['metric'])}"
         + (f", holdout {scores[0]}, gap {scores[1]}" if scores else "")),
        ("plan", "\n".join(wrapped(node.get("plan") or "(none)", ""))),
        ("code", node.get("code") or ""),
    ]
    if node.get("error"):
        sections.append(("error", str(node["error"])))
    sections.append(("output (tail of stdout and stderr)",
                     node.get("output_tail") or "(no output)"))
    if node.get("summary"):
        sections.append(("summary", "\n".join(wrapped(str(node["summary"]), ""))))
    sections.append(("memory", node.get("memory") or "(none)"))
    sections.append(("tokens", usage_line(node.get("usage") or {})))
    return sections


def code_diff(old: dict[str, Any], new: dict[str, Any]) -> str:
    """Unified diff of two nodes' code, `old` first."""
    lines = difflib.unified_diff(
        (old.get("code") or "").splitlines(keepends=True),
        (new.get("code") or "").splitlines(keepends=True),
        fromfile=f"node {old['id']}", tofile=f"node {new['id']}")
    return "".join(line if line.endswith("\n") else line + "\n" for line in lines)
