"""ML-Master 2.0's hierarchical cognitive caching, as pure logic (no I/O, no clock, no model).

L1 holds the current phase's raw traces, L2 the summaries of closed phases, L3 lessons carried
across tasks. A phase closes when the best metric stagnates: L1 is summarised into L2 (the
"tactical plan revision") and emptied. At task end L2 is distilled into L3 lessons, which the
caller stores and hands to the next similar task through `prefetch`.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol, Self

from mlmaster_daemon.models import Operator
from mlmaster_daemon.search.memory import (
    MemoryEntry,
    best_first,
    format_entry,
    improved,
    normalise,
    one_line,
    render_sections,
    scope,
)
from mlmaster_daemon.search.tokens import TokenCounter
from mlmaster_daemon.search.tree import Tree

# Closed phases whose summaries L2 keeps whole; older ones are rolled up into one, so the saved
# memory stays the same size however long a task runs.
L2_KEEP = 8
# The most of a rolled-up phase's own text a roll-up keeps.
ROLLED_TEXT_CHARS = 800


class StagnationDetector:
    """Says when the best metric has stopped improving.

    `observe` is called once per completed node. It fires when `window` nodes have completed
    since the reference point and the best metric has not improved on the reference by more
    than `min_gain`. The reference is the best metric `window` observations ago (None before
    any working node; a first working node counts as progress, and a window with no working
    node at all is stagnation). With `relative`, the gain is divided by |reference| (floored
    at 1e-12); otherwise it is in metric units. After firing, the reference resets to the
    current best, so it cannot fire again until `window` more nodes complete.
    """

    def __init__(self, window: int = 6, min_gain: float = 1e-3, relative: bool = True) -> None:
        if window < 1:
            raise ValueError("window must be at least 1")
        self.window = window
        self.min_gain = min_gain
        self.relative = relative
        self._history: list[float | None] = [None]
        # Only for reporting: the steps of the last observation and the last improvement.
        self.last_step: int | None = None
        self.last_improved_step: int | None = None

    def progressed(self, reference: float | None, best: float | None,
                   lower_is_better: bool) -> bool:
        """Whether `best` improves on `reference` by more than `min_gain`."""
        if best is None:
            return False
        if reference is None:
            return True
        gain = improved(best, reference, lower_is_better)
        if self.relative:
            gain /= max(abs(reference), 1e-12)
        return gain > self.min_gain

    def observe(self, step: int, best_metric: float | None, lower_is_better: bool) -> bool:
        """Record the best metric after completed node `step`; True when the phase should end."""
        previous = self._history[-1]
        if best_metric is not None and (
                previous is None or improved(best_metric, previous, lower_is_better) > 0):
            self.last_improved_step = step
        self.last_step = step
        self._history = [*self._history, best_metric][-(self.window + 1):]
        if len(self._history) <= self.window:
            return False
        if self.progressed(self._history[0], best_metric, lower_is_better):
            return False
        self._history = [best_metric]
        return True

    def to_state(self) -> dict[str, Any]:
        return {"window": self.window, "min_gain": self.min_gain, "relative": self.relative,
                "history": self._history, "last_step": self.last_step,
                "last_improved_step": self.last_improved_step}

    @classmethod
    def from_state(cls, raw: Mapping[str, Any]) -> StagnationDetector:
        detector = cls(int(raw["window"]), float(raw["min_gain"]), bool(raw["relative"]))
        detector._history = list(raw["history"])
        detector.last_step = raw["last_step"]
        detector.last_improved_step = raw["last_improved_step"]
        return detector


class _FlatState:
    """Saving and restoring for a dataclass whose fields are all JSON values: a dict by name."""

    def to_state(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_state(cls, raw: Mapping[str, Any]) -> Self:
        return cls(**raw)


@dataclass(frozen=True)
class L2Summary(_FlatState):
    """One closed phase: its summary text and what its nodes achieved."""

    phase: int
    text: str
    best_metric: float | None
    best_node_id: int | None
    n_nodes: int
    n_worked: int
    n_failed: int
    # Set on a summary that rolls up phases `first_phase` to `phase` (see `roll_up`).
    first_phase: int | None = None

    @property
    def label(self) -> str:
        if self.first_phase is None:
            return f"Phase {self.phase}"
        return f"Phases {self.first_phase}-{self.phase}"

    def body(self) -> str:
        """The summary's text without a roll-up's own first line."""
        if self.first_phase is None:
            return self.text
        return self.text.partition("\n")[2]


def roll_up(older: L2Summary, newer: L2Summary, lower_is_better: bool) -> L2Summary:
    """One summary of two consecutive ones (`older` possibly a roll-up already): the counts
    added, the better best kept, and of the texts only the one of the phase that held it,
    cut to `ROLLED_TEXT_CHARS`, so a roll-up stays the same size however many it holds."""
    better = newer
    if older.best_metric is not None and (
            newer.best_metric is None
            or improved(older.best_metric, newer.best_metric, lower_is_better) > 0):
        better = older
    first = older.phase if older.first_phase is None else older.first_phase
    nodes, worked = older.n_nodes + newer.n_nodes, older.n_worked + newer.n_worked
    failed = older.n_failed + newer.n_failed
    best = ("no working node" if better.best_metric is None
            else f"best {better.best_metric:.6g} (node {better.best_node_id}, {better.label})")
    head = (f"Rolled up: {nodes} nodes, {worked} worked, {failed} failed; {best}.")
    body = better.body().strip()[:ROLLED_TEXT_CHARS]
    return L2Summary(newer.phase, f"{head}\n{body}", better.best_metric, better.best_node_id,
                     nodes, worked, failed, first)


@dataclass(frozen=True)
class TaskProfile(_FlatState):
    """What a task looks like, for matching lessons across tasks."""

    modality: str
    metric: str
    is_classification: bool
    n_rows: int = 0
    n_features: int = 0

    @classmethod
    def build(cls, modality: str, metric: str, is_classification: bool, n_rows: int = 0,
              n_features: int = 0) -> TaskProfile:
        """A profile with names lower-cased and trimmed and counts clamped at 0."""
        return cls(modality.strip().lower(), metric.strip().lower(), is_classification,
                   max(0, n_rows), max(0, n_features))


@dataclass(frozen=True)
class Lesson:
    """A cross-task heuristic, the profile of the task that taught it, and its score in [0, 1]."""

    text: str
    profile: TaskProfile
    score: float

    def to_state(self) -> dict[str, Any]:
        return {"text": self.text, "profile": self.profile.to_state(), "score": self.score}

    @classmethod
    def from_state(cls, raw: Mapping[str, Any]) -> Lesson:
        return cls(str(raw["text"]), TaskProfile.from_state(raw["profile"]), float(raw["score"]))


def _closeness(a: int, b: int) -> float:
    """1 for equal counts, falling linearly to 0 at three orders of magnitude apart."""
    return max(0.0, 1.0 - abs(math.log10(1 + a) - math.log10(1 + b)) / 3.0)


def similarity(a: TaskProfile, b: TaskProfile) -> float:
    """How alike two tasks are, in [0, 1]; 1 for identical profiles.

    Weighted sum: same modality 0.35, same task type (classification or not) 0.2, same metric
    0.2, row-count closeness 0.15 and feature-count closeness 0.1 (closeness is 1 for equal
    counts and falls linearly to 0 at 1000x apart, on a log scale).
    """
    score = 0.35 * (a.modality == b.modality) + 0.2 * (a.is_classification == b.is_classification)
    score += 0.2 * (a.metric == b.metric)
    score += 0.15 * _closeness(a.n_rows, b.n_rows) + 0.1 * _closeness(a.n_features, b.n_features)
    return min(1.0, max(0.0, score))


def retrieve(lessons: Sequence[Lesson], profile: TaskProfile, k: int) -> list[Lesson]:
    """The `k` lessons best suited to `profile`: by similarity, then score (both descending).

    Lessons whose normalised text repeats a better-ranked one are left out.
    """
    ranked = sorted(lessons, key=lambda le: (-similarity(le.profile, profile), -le.score, le.text))
    chosen: dict[str, Lesson] = {}
    for lesson in ranked:
        chosen.setdefault(normalise(lesson.text), lesson)
    return list(chosen.values())[:max(0, k)]


class Summariser(Protocol):
    """Writes phase summaries (L1 to L2) and cross-task lessons (L2 to L3)."""

    def summarise_phase(self, entries: Sequence[MemoryEntry], lower_is_better: bool) -> str:
        """What this phase's attempts showed, ending with the plan for the next phase."""
        ...

    def distil_lessons(self, summaries: Sequence[L2Summary],
                       task_profile: TaskProfile) -> list[str]:
        """Reusable lessons from a task's phase summaries, most important first."""
        ...


WORKED = "Worked: "
RECURRING = "Recurring failure"
FAILURE = "Failure: "
NO_GAIN = "Did not help: "
NEXT = "Next: "


class DeterministicSummariser:
    """A model-free Summariser: used by the offline coder and as the LLM summariser's fallback.

    A phase summary lists the best `max_items` working attempts with metrics, failure causes
    by frequency (recurring ones marked with their count), changes that did not beat their
    parent, and a "Next:" line (build on the best, avoid the top failure cause).
    """

    def __init__(self, max_items: int = 3, max_chars: int = 200) -> None:
        self.max_items = max_items
        self.max_chars = max_chars

    def _clip(self, text: str) -> str:
        text = one_line(text)
        return text if len(text) <= self.max_chars else text[:self.max_chars - 1] + "…"

    def summarise_phase(self, entries: Sequence[MemoryEntry], lower_is_better: bool) -> str:
        worked = sorted((e for e in entries if e.worked),
                        key=lambda e: best_first(e, lower_is_better))
        failed = [e for e in entries if not e.worked]
        head = f"{len(entries)} nodes: {len(worked)} worked, {len(failed)} failed"
        if worked:
            head += f"; best {worked[0].metric:.6g} (node {worked[0].node_id})"
        lines = [head + "."]
        lines += [f"{WORKED}{self._clip(e.summary)} -> {e.metric:.6g}"
                  for e in worked[:self.max_items]]
        first_text: dict[str, str] = {}
        causes: Counter[str] = Counter()
        for entry in failed:
            if entry.error and (key := normalise(entry.error)):
                first_text.setdefault(key, self._clip(entry.error))
                causes[key] += 1
        for key, n in causes.most_common(self.max_items):
            lines.append(f"{RECURRING} (x{n}): {first_text[key]}" if n > 1
                         else f"{FAILURE}{first_text[key]}")
        no_gain = [e for e in worked if e.parent_metric is not None and e.metric is not None
                   and improved(e.metric, e.parent_metric, lower_is_better) <= 0]
        lines += [f"{NO_GAIN}{self._clip(e.summary)} -> {e.metric:.6g} vs parent "
                  f"{e.parent_metric:.6g}" for e in no_gain[:self.max_items]]
        plan = [f"build on node {worked[0].node_id} ({self._clip(worked[0].summary)})"
                if worked else "try a simpler, different approach"]
        if causes:
            plan.append(f"avoid: {first_text[causes.most_common(1)[0][0]]}")
        lines.append(NEXT + "; ".join(plan) + ".")
        return "\n".join(lines)

    def distil_lessons(self, summaries: Sequence[L2Summary],
                       task_profile: TaskProfile) -> list[str]:
        """Worked lines from the latest phases first, then recurring failures as "Avoid: ".

        Summaries written by another summariser with none of these lines give their first
        lines instead (latest phase first).
        """
        latest_first = sorted(summaries, key=lambda s: -s.phase)
        worked: list[str] = []
        avoid: list[str] = []
        for summary in latest_first:
            for line in (one_line(raw) for raw in summary.text.splitlines()):
                if line.startswith(WORKED):
                    worked.append(f"Worked on {task_profile.metric}: {line[len(WORKED):]}")
                elif line.startswith(RECURRING):
                    avoid.append("Avoid: " + line.split(": ", 1)[-1])
        lessons: dict[str, str] = {}
        for text in worked[:self.max_items] + avoid[:self.max_items]:
            lessons.setdefault(normalise(text), text)
        if not lessons:
            return [self._clip(s.text.strip().splitlines()[0]) for s in latest_first
                    if s.text.strip()][:self.max_items]
        return list(lessons.values())


class HierarchicalCache:
    """One task's three-tier memory: L1 raw traces, L2 phase summaries, L3 prefetched lessons.

    `l1_cap` bounds the current phase's traces (the oldest leave first); L2 keeps the newest
    `l2_keep` phase summaries whole and one roll-up of all older ones.
    """

    def __init__(self, summariser: Summariser | None = None,
                 detector: StagnationDetector | None = None, l1_cap: int = 64,
                 l2_keep: int = L2_KEEP) -> None:
        if l1_cap < 1:
            raise ValueError("l1_cap must be at least 1")
        if l2_keep < 1:
            raise ValueError("l2_keep must be at least 1")
        self.l2_keep = l2_keep
        self.summariser: Summariser = summariser or DeterministicSummariser()
        self.detector = detector or StagnationDetector()
        self.l1_cap = l1_cap
        self.phase = 0
        self._l1: dict[int, MemoryEntry] = {}
        self.l2: list[L2Summary] = []
        self.lessons: list[Lesson] = []
        self.best: float | None = None
        self.lower_is_better = False
        self.completed = 0

    @property
    def l1(self) -> list[MemoryEntry]:
        """The current phase's traces in completion order."""
        return list(self._l1.values())

    def prefetch(self, lessons: Sequence[Lesson], profile: TaskProfile | None = None,
                 k: int = 5) -> list[Lesson]:
        """Load L3 at task start: the `k` lessons that `retrieve` ranks best for `profile`
        (the first `k` as given when there is no profile). Returns what was loaded."""
        self.lessons = retrieve(lessons, profile, k) if profile else list(lessons)[:max(0, k)]
        return self.lessons

    def record(self, entry: MemoryEntry, parent_metric: float | None,
               lower_is_better: bool) -> L2Summary | None:
        """Add a finished node to L1 (stamped with the current phase and `parent_metric`).

        Feeds the stagnation detector with the task's best metric; when it fires the phase
        closes and its L2 summary is returned. A node already in L1 is ignored (None).
        """
        if entry.node_id in self._l1:
            return None
        self.lower_is_better = lower_is_better
        entry = replace(entry, phase=self.phase, parent_metric=parent_metric)
        self._l1[entry.node_id] = entry
        while len(self._l1) > self.l1_cap:
            del self._l1[next(iter(self._l1))]
        if entry.worked and entry.metric is not None and (
                self.best is None or improved(entry.metric, self.best, lower_is_better) > 0):
            self.best = entry.metric
        self.completed += 1
        if self.detector.observe(self.completed, self.best, lower_is_better):
            return self.close_phase()
        return None

    def close_phase(self) -> L2Summary | None:
        """Summarise L1 into L2, empty L1 and start the next phase (None when L1 is empty)."""
        entries = self.l1
        if not entries:
            return None
        worked = [e for e in entries if e.worked]
        best = min(worked, key=lambda e: best_first(e, self.lower_is_better), default=None)
        text = self.summariser.summarise_phase(entries, self.lower_is_better)
        summary = L2Summary(self.phase, text, best.metric if best else None,
                            best.node_id if best else None, len(entries), len(worked),
                            len(entries) - len(worked))
        self.l2.append(summary)
        if len(self.l2) > self.l2_keep + 1:
            self.l2[:2] = [roll_up(self.l2[0], self.l2[1], self.lower_is_better)]
        self._l1.clear()
        self.phase += 1
        return summary

    def context(self, operator: Operator, parent_ids: Sequence[int], tree: Tree,
                budget_tokens: int, counter: TokenCounter) -> str:
        """The memory section for one prompt, never over `budget_tokens` by `counter`.

        In priority (and display) order: L1 entries scoped for `operator` as in memory.scope,
        then L2 summaries of earlier phases (latest first), then L3 lessons; whatever does not
        fit is dropped from the end as memory.render_sections describes. "" when nothing fits.
        """
        if budget_tokens <= 0:
            return ""
        l1 = [format_entry(e) for e in scope(self._l1, operator, parent_ids, tree)]
        l2 = [f"{s.label}:\n{s.text.strip()}" for s in reversed(self.l2)]
        l3 = [f"- {one_line(le.text)}" for le in self.lessons]
        return render_sections([("## Recent attempts (this phase)", l1),
                                ("## Earlier phases", l2),
                                ("## Lessons from similar tasks", l3)],
                               budget_tokens, counter)

    def promote_task(self, profile: TaskProfile) -> list[Lesson]:
        """At task end: close the open phase, then distil L2 into L3 lessons for `profile`.

        Scores fall from 1 by rank (the summariser's first lesson is the most important).
        """
        self.close_phase()
        texts = self.summariser.distil_lessons(self.l2, profile)
        return [Lesson(t, profile, 1.0 - i / len(texts)) for i, t in enumerate(texts)]

    def to_state(self) -> dict[str, Any]:
        return {"phase": self.phase, "l1_cap": self.l1_cap, "l2_keep": self.l2_keep,
                "best": self.best,
                "lower_is_better": self.lower_is_better, "completed": self.completed,
                "l1": [e.to_state() for e in self._l1.values()],
                "l2": [s.to_state() for s in self.l2],
                "lessons": [le.to_state() for le in self.lessons],
                "detector": self.detector.to_state()}

    @classmethod
    def from_state(cls, raw: Mapping[str, Any],
                   summariser: Summariser | None = None) -> HierarchicalCache:
        cache = cls(summariser, StagnationDetector.from_state(raw["detector"]), int(raw["l1_cap"]),
                    int(raw.get("l2_keep", L2_KEEP)))
        cache.phase, cache.best = int(raw["phase"]), raw["best"]
        cache.lower_is_better, cache.completed = bool(raw["lower_is_better"]), int(raw["completed"])
        cache._l1 = {e.node_id: e for e in map(MemoryEntry.from_state, raw["l1"])}
        cache.l2 = [L2Summary.from_state(s) for s in raw["l2"]]
        # A state saved before L2 was bounded may hold more than it keeps.
        while len(cache.l2) > cache.l2_keep + 1:
            cache.l2[:2] = [roll_up(cache.l2[0], cache.l2[1], cache.lower_is_better)]
        cache.lessons = [Lesson.from_state(le) for le in raw["lessons"]]
        return cache
