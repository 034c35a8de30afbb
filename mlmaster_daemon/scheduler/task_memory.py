"""One task's memory, held in one place: what each attempt taught (for sibling-aware coders)
and the hierarchical cache behind the prompts' memory section (L1 traces, L2 phase summaries,
L3 lessons from earlier tasks)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Mapping, Sequence
from typing import Any

from mlmaster_daemon.coders.protocol import Reviewer
from mlmaster_daemon.config import Settings
from mlmaster_daemon.logs import get_logger
from mlmaster_daemon.models import CallRecord, NodeState, Operator
from mlmaster_daemon.scheduler.storage import SearchStore
from mlmaster_daemon.search.hcc import (
    HierarchicalCache,
    L2Summary,
    Lesson,
    StagnationDetector,
    TaskProfile,
)
from mlmaster_daemon.search.memory import MemoryEntry, MemoryItem
from mlmaster_daemon.search.policy import Pick
from mlmaster_daemon.search.tokens import TokenCounter
from mlmaster_daemon.search.tree import Tree
from mlmaster_daemon.store.records import NodeRecord
from mlmaster_daemon.tasks.spec import TaskSpec

log = get_logger("mlmaster.scheduler")
# Nodes a restore goes through between two turns of the event loop.
RESTORE_SLICE = 1000


class TaskMemory:
    """`settings` is the daemon's live config: the prompt budget and lessons_k follow a reload."""

    def __init__(self, settings: Settings, counter: TokenCounter) -> None:
        self.settings = settings
        self.counter = counter
        config = settings.config.memory
        self.cache = HierarchicalCache(
            detector=StagnationDetector(config.stagnation_window, config.stagnation_min_gain,
                                        config.stagnation_relative),
            l1_cap=config.l1_cap,
        )
        # Every attempt with code, finished or not: siblings generated later see it.
        self.attempts: dict[int, MemoryItem] = {}

    async def restore(self, saved: Mapping[str, Any] | None,
                      nodes: Sequence[NodeRecord]) -> None:
        """The cache as it was saved with the last outcome, and the finished attempts (in
        slices, letting the event loop serve between them: a big tree has many)."""
        if saved is not None:
            self.cache = HierarchicalCache.from_state(saved)
        finished = (NodeState.DONE, NodeState.BUGGY)
        for start in range(0, len(nodes), RESTORE_SLICE):
            for node in nodes[start:start + RESTORE_SLICE]:
                if node.state in finished:
                    self.attempts[node.id] = MemoryItem(
                        node.id, node.operator, node.summary or "", node.metric,
                        node.state is NodeState.BUGGY)
            await asyncio.sleep(0)

    def to_state(self) -> dict[str, Any]:
        return self.cache.to_state()

    def attempted(self, node_id: int, operator: Operator, summary: str) -> None:
        """An attempt about to run: siblings generated from now on see it."""
        self.attempts[node_id] = MemoryItem(node_id, operator, summary, None, False)

    def record(self, node_id: int, pick: Pick, summary: str, metric: float | None,
               buggy: bool, error: str | None, parent_metric: float | None,
               lower_is_better: bool) -> L2Summary | None:
        """An attempt's outcome; the phase it closed on stagnation, if it closed one."""
        self.attempts[node_id] = MemoryItem(node_id, pick.operator, summary, metric, buggy)
        return self.cache.record(
            MemoryEntry(node_id, pick.operator, pick.parent_ids, summary, metric, buggy, error,
                        created=node_id),
            parent_metric, lower_is_better,
        )

    def siblings(self, tree: Tree, parent_id: int) -> tuple[MemoryItem, ...]:
        """The attempts under `parent_id`, as the coder sees them."""
        return tuple(self.attempts[c] for c in tree[parent_id].children if c in self.attempts)

    def context(self, operator: Operator, parent_ids: Sequence[int], tree: Tree) -> str:
        """The memory section of one prompt, within `budget_tokens`."""
        budget = self.settings.config.memory.budget_tokens
        return self.cache.context(operator, parent_ids, tree, budget, self.counter)

    async def summarise_phase(self, phase: L2Summary, reviewer: Reviewer | None,
                              spec: TaskSpec) -> Sequence[CallRecord]:
        """A phase closed on stagnation: a reviewer rewrites its deterministic summary (kept
        when it cannot answer). Returns the reviewer's calls, for accounting."""
        log.info("phase closed on stagnation", phase=phase.phase, best=phase.best_metric)
        if reviewer is None:
            return ()
        text, calls = await reviewer.summarise(phase.text, spec)
        if text and self.cache.l2 and self.cache.l2[-1] is phase:
            self.cache.l2[-1] = dataclasses.replace(phase, text=text)
        return calls

    async def prefetch_lessons(self, store: SearchStore, profile: TaskProfile,
                               task_id: str) -> None:
        """L3: lessons from earlier tasks, the most similar first, join this task's memory."""
        k = self.settings.config.memory.lessons_k
        if k == 0:
            return
        rows = await store.list_lessons()
        lessons = [Lesson(text, TaskProfile.from_state(json.loads(raw)), score)
                   for text, raw, score in rows]
        self.cache.prefetch(lessons, profile, k)
        log.info("lessons prefetched", task_id=task_id, available=len(lessons),
                 used=len(self.cache.lessons))

    async def promote_lessons(self, store: SearchStore, profile: TaskProfile, task_id: str,
                              now: float) -> None:
        """At the end of a task its phase summaries become lessons for later tasks."""
        lessons = self.cache.promote_task(profile)
        await store.add_lessons(
            task_id, [(x.text, json.dumps(x.profile.to_state()), x.score) for x in lessons], now)
