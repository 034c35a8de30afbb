"""A task's search written for machines: a journal AIDE users can read, and step-wise
trajectories for training agents. Both hold the task's finished nodes (done, buggy or failed;
not those a daemon stop interrupted before they had code), in node id order; a task still
running exports what has finished so far.

`journal` is AIDE's `journal.json` (version 2, as `aide.utils.serialize.dump_json` writes it):
`nodes` with code, plan, step, id, ctime, `_term_out`, exec_time, exc_type, exc_info,
exc_stack, analysis, metric {value, maximize}, is_buggy, and the tree in `node2parent`; AIDE's
own `parent`/`children` stay null/empty there (its loader rebuilds them from `node2parent`), and
each node also says `parent_id`, `children_ids` and `mlmaster` (operator, status, error) for
readers without AIDE.

`trajectories` is JSON lines, one record per finished node, in ML-Agent's step-wise style:
`state` (what the coder saw: the task, the node's memory section, and for LLM-coded nodes the
prompt sent), `action` (plan and code), `outcome` (status, kind, metric, error, buggy,
valid_submission, output tail, run seconds), `reward` with its parts, and `sft`: the
(prompt, completion) pair for LLM-coded nodes (null otherwise).

The step reward, per node:
- a valid step (metric measured, submission accepted) earns (1 + gain) / 2, in [0, 1]. gain is
  the metric's improvement over a reference, in the metric's direction, divided by the spread
  of the task's valid metrics (best minus worst; 1 when they are all equal) and clipped to
  [-1, 1]. The reference is the best metric among the node's valid parents; for a draft, or a
  debug of a buggy parent, the best valid metric of the nodes that finished before it; the
  first valid node has none, and a gain of 0.
- a bug (the script failed, timed out, hit a limit, or the judge called it buggy): -0.5
- an invalid submission (missing, or refused by the task's format check): -0.75
- a format error (the model answered without code, or metrics.json broke the contract): -1.0
- failed (stopped by the daemon or its surroundings, not by the code: a crash, a model that
  refused the request): 0.0
`score` places a valid metric within the task: 0 for the worst, 1 for the best.

Every text comes from the store (redacted when written) or from the node's folder (read
bounded, never through a link, redacted); the records are redacted once more as a whole.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from mlmaster_daemon import untrusted
from mlmaster_daemon.artefacts import node_dir
from mlmaster_daemon.execution.workspace import Workspace
from mlmaster_daemon.models import NodeState
from mlmaster_daemon.redact import redact_value
from mlmaster_daemon.store import Store, TaskRecord
from mlmaster_daemon.store.records import NodeRecord, PromptedCall

# What is read of a node's memory.md (the memory section of its prompt) for an export.
MAX_MEMORY_CHARS = 64 * 1024
AIDE_JOURNAL_VERSION = "2"
BUG_PENALTY = -0.5
INVALID_SUBMISSION_PENALTY = -0.75
FORMAT_ERROR_PENALTY = -1.0
FAILED_REWARD = 0.0
# The role of the endpoint that writes code (coders.choice); its calls make the SFT pairs.
CODE_ROLE = "code"
# The beginnings of the errors evaluation.py and the coder give; see OutcomeKind.
_INVALID_SUBMISSION = ("submission invalid", "submission.csv must be")
_FORMAT = ("metrics.json", "validation_metric")
_NO_CODE = "without a python code block"
_EXCEPTION = re.compile(r"\b([A-Z][A-Za-z0-9_]*(?:Error|Exception|Exit|Interrupt))\b")


class ExportFormat(StrEnum):
    JOURNAL = "journal"
    TRAJECTORIES = "trajectories"

    @property
    def media_type(self) -> str:
        return "application/json" if self is ExportFormat.JOURNAL else "application/x-ndjson"

    def file_name(self, task_id: str) -> str:
        """The file the CLI writes by default."""
        suffix = "json" if self is ExportFormat.JOURNAL else "jsonl"
        return f"{task_id}-{self.value}.{suffix}"


class OutcomeKind(StrEnum):
    """What a finished node's step came to (the module docstring gives each its reward)."""

    VALID = "valid"
    BUG = "bug"
    INVALID_SUBMISSION = "invalid_submission"
    FORMAT_ERROR = "format_error"
    FAILED = "failed"


PENALTIES: Mapping[OutcomeKind, float] = {
    OutcomeKind.BUG: BUG_PENALTY,
    OutcomeKind.INVALID_SUBMISSION: INVALID_SUBMISSION_PENALTY,
    OutcomeKind.FORMAT_ERROR: FORMAT_ERROR_PENALTY,
    OutcomeKind.FAILED: FAILED_REWARD,
}


@dataclass(frozen=True)
class StepReward:
    kind: OutcomeKind
    reward: float
    # Valid steps only: the normalised improvement, what it was measured against, and the
    # metric's place among the task's valid metrics.
    gain: float | None = None
    reference: float | None = None
    score: float | None = None

    def public(self) -> dict[str, Any]:
        return {"reward": self.reward, "kind": self.kind.value, "gain": self.gain,
                "reference": self.reference, "score": self.score}


def outcome_kind(node: NodeRecord) -> OutcomeKind:
    """The kind of a finished node's outcome, from its state and the error it was given."""
    error = node.error or ""
    if node.state is NodeState.DONE and node.metric is not None:
        return OutcomeKind.VALID
    if _NO_CODE in error or error.startswith(_FORMAT):
        return OutcomeKind.FORMAT_ERROR
    if node.state is NodeState.FAILED:
        return OutcomeKind.FAILED
    if error.startswith(_INVALID_SUBMISSION):
        return OutcomeKind.INVALID_SUBMISSION
    return OutcomeKind.BUG


def finished_nodes(nodes: Sequence[NodeRecord]) -> list[NodeRecord]:
    """The nodes an export holds: those with an outcome, less interrupted ones, by id."""
    return sorted((n for n in nodes if n.state.terminal and not n.interrupted),
                  key=lambda n: n.id)


def step_rewards(nodes: Sequence[NodeRecord], lower_is_better: bool) -> dict[int, StepReward]:
    """Each finished node's reward, as the module docstring defines it."""
    sign = -1.0 if lower_is_better else 1.0
    valid = {n.id: n.metric for n in nodes if outcome_kind(n) is OutcomeKind.VALID
             and n.metric is not None}
    values = list(valid.values())
    spread = (max(values) - min(values)) if values else 0.0
    scale = spread if spread > 0 else 1.0
    worst = (max(values) if lower_is_better else min(values)) if values else 0.0

    def best(metrics: Sequence[float]) -> float | None:
        if not metrics:
            return None
        return min(metrics) if lower_is_better else max(metrics)

    by_finish = sorted(nodes, key=lambda n: (n.finished_at or 0.0, n.id))
    rewards: dict[int, StepReward] = {}
    seen: list[float] = []
    for node in by_finish:
        kind = outcome_kind(node)
        metric = valid.get(node.id)
        if metric is None:
            rewards[node.id] = StepReward(kind, PENALTIES[kind])
            continue
        parents = [valid[p] for p in node.parent_ids if p in valid]
        reference = best(parents) if parents else best(seen)
        gain = 0.0 if reference is None else sign * (metric - reference) / scale
        gain = round(max(-1.0, min(1.0, gain)), 6)
        score = round(sign * (metric - worst) / spread, 6) if spread > 0 else 1.0
        rewards[node.id] = StepReward(kind, round((1.0 + gain) / 2.0, 6), gain, reference,
                                      score)
        seen.append(metric)
    return rewards


@dataclass(frozen=True)
class NodeFiles:
    """What an export reads of a node's folder (bounded, never through a link, redacted)."""

    memory: str
    output: str


def read_node_files(folder: Path, output_chars: int) -> NodeFiles:
    """Blocking reads: async callers use asyncio.to_thread."""
    return NodeFiles(untrusted.text_excerpt(folder, "memory.md", MAX_MEMORY_CHARS),
                     Workspace(folder).output_tail(output_chars))


def _exec_time(node: NodeRecord) -> float | None:
    if node.started_at is None or node.finished_at is None:
        return None
    return round(max(node.finished_at - node.started_at, 0.0), 3)


def _exc_type(node: NodeRecord, kind: OutcomeKind) -> str | None:
    """AIDE's exc_type: the exception the error names, else the outcome's kind (None when
    valid; AIDE reads any exc_type as a bug)."""
    if kind is OutcomeKind.VALID:
        return None
    found = _EXCEPTION.findall(node.error or "")
    return str(found[-1]) if found else kind.value


def journal(task: TaskRecord, nodes: Sequence[NodeRecord],
            files: Mapping[int, NodeFiles]) -> dict[str, Any]:
    """AIDE's journal.json of the finished `nodes` (see the module docstring)."""
    kept = finished_nodes(nodes)
    ids = {n.id for n in kept}
    children: dict[int, list[int]] = {n.id: [] for n in kept}
    for node in kept:
        if node.parent_id in children:
            children[node.parent_id].append(node.id)
    maximize = not task.spec.lower_is_better
    entries = []
    for step, node in enumerate(kept):
        kind = outcome_kind(node)
        valid = kind is OutcomeKind.VALID
        output = files[node.id].output if node.id in files else ""
        entries.append({
            "code": node.code or "",
            "plan": node.plan or "",
            "step": step,
            "id": str(node.id),
            "ctime": node.created_at,
            "parent": None,
            "children": [],
            "_term_out": [output] if output else [],
            "exec_time": _exec_time(node),
            "exc_type": _exc_type(node, kind),
            "exc_info": None if node.error is None else {"error": node.error},
            "exc_stack": None,
            "analysis": node.analysis or (node.error if not valid else node.summary) or "",
            "metric": ({"value": node.metric, "maximize": maximize} if valid
                       else {"value": None, "maximize": None}),
            "is_buggy": not valid,
            "parent_id": str(node.parent_id) if node.parent_id in ids else None,
            "children_ids": [str(c) for c in children[node.id]],
            "mlmaster": {"operator": node.operator.value, "status": node.state.value,
                         "kind": kind.value, "error": node.error, "summary": node.summary},
        })
    document: dict[str, Any] = redact_value({
        "nodes": entries,
        "node2parent": {str(n.id): str(n.parent_id) for n in kept if n.parent_id in ids},
        "__version": AIDE_JOURNAL_VERSION,
        "task": _task_context(task),
    })
    return document


def _task_context(task: TaskRecord) -> dict[str, Any]:
    return {"id": task.id, "name": task.name, "metric": task.spec.metric.value,
            "lower_is_better": task.spec.lower_is_better, "state": task.state.value,
            "best_node_id": task.best_node_id, "best_metric": task.best_metric}


def _sft(calls: Sequence[PromptedCall]) -> dict[str, Any] | None:
    """The (prompt, completion) pair of the node's last code call: the answer whose code
    ran (or the last answer without code). None when no model wrote this node."""
    code_calls = [c for c in calls if c.role == CODE_ROLE]
    if not code_calls:
        return None
    last = code_calls[-1]
    pair: dict[str, Any] = {"prompt": last.messages(), "completion": last.content,
                            "model": last.model, "attempts": len(code_calls)}
    if last.reasoning:
        pair["reasoning"] = last.reasoning
    return pair


def trajectory_record(task: TaskRecord, node: NodeRecord, step: int, reward: StepReward,
                      files: NodeFiles, calls: Sequence[PromptedCall]) -> dict[str, Any]:
    """One step of the trajectory (see the module docstring)."""
    sft = _sft(calls)
    valid = reward.kind is OutcomeKind.VALID
    record: dict[str, Any] = redact_value({
        "task_id": task.id,
        "step": step,
        "node_id": node.id,
        "parent_id": node.parent_id,
        "parent_ids": list(node.parent_ids),
        "operator": node.operator.value,
        "picked_by": node.pick_reason,
        "coder": "llm" if sft is not None else "offline",
        "state": {"task": _task_context(task), "memory": files.memory,
                  "prompt": None if sft is None else sft["prompt"]},
        "action": {"plan": node.plan, "code": node.code},
        "outcome": {"status": node.state.value, "kind": reward.kind.value,
                    "metric": node.metric if valid else None, "error": node.error,
                    "buggy": not valid,
                    # The judge may call a run buggy after its submission passed the check.
                    "valid_submission": valid or (node.error or "").startswith("judged buggy"),
                    "output": files.output, "exec_time": _exec_time(node)},
        **reward.public(),
        "usage": {"calls": len(calls),
                  "prompt_tokens": sum(c.prompt_tokens for c in calls),
                  "completion_tokens": sum(c.completion_tokens for c in calls),
                  "cost": round(sum(c.cost for c in calls), 6)},
        "sft": sft,
    })
    return record


async def export_chunks(store: Store, state_dir: Path, task_id: str, fmt: ExportFormat,
                        output_chars: int) -> AsyncGenerator[bytes, None]:
    """The export of one task, in pieces to stream: the journal whole, trajectories a line at
    a time (a node's prompts are read only when its line is written). Raises TaskNotFound."""
    task = await store.get_task(task_id)
    nodes = finished_nodes(await store.list_nodes(task.id))

    async def files_of(node: NodeRecord) -> NodeFiles:
        return await asyncio.to_thread(read_node_files, node_dir(state_dir, task.id, node.id),
                                       output_chars)

    if fmt is ExportFormat.JOURNAL:
        files = {n.id: await files_of(n) for n in nodes}
        yield (json.dumps(journal(task, nodes, files)) + "\n").encode()
        return
    rewards = step_rewards(nodes, task.spec.lower_is_better)
    for step, node in enumerate(nodes):
        calls = await store.node_calls(task.id, node.id)
        record = trajectory_record(task, node, step, rewards[node.id], await files_of(node),
                                   calls)
        yield (json.dumps(record) + "\n").encode()
