"""Selectively scoped memory: per-operator scoping, rendering within a token budget."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from mlmaster_daemon.models import Operator
from mlmaster_daemon.search.memory import (
    ELLIPSIS,
    MIN_FRAGMENT_TOKENS,
    MemoryEntry,
    _render_exact,
    format_entry,
    normalise,
    render_sections,
    scope,
)
from mlmaster_daemon.search.tokens import TokenCounter
from mlmaster_daemon.search.tree import ROOT, Tree
from mlmaster_daemon.tokenizer import TiktokenCounter

COUNTER = TiktokenCounter()
DRAFT, IMPROVE, DEBUG, CROSS = Operator.DRAFT, Operator.IMPROVE, Operator.DEBUG, Operator.CROSSOVER


def entry(node_id: int, operator: Operator = DRAFT, metric: float | None = 0.5,
          summary: str | None = None, error: str | None = None,
          parents: tuple[int, ...] = (ROOT,)) -> MemoryEntry:
    text = summary or f"plan {chr(96 + node_id % 26)}"  # letters: digits normalise away
    return MemoryEntry(node_id, operator, parents, text, metric, metric is None, error, 0, node_id)


def sample() -> tuple[Tree, dict[int, MemoryEntry]]:
    """Drafts 1 (0.70), 2 (buggy), 3 (0.80); improves 4, 5 of 3; debugs 6 of 2 and 7 of 6;
    a crossover 8 of 3 and 1; node 9 improves 4. Every finished node has an entry, which holds
    its first parent's metric."""
    tree, memory = Tree(), dict[int, MemoryEntry]()
    shape = [(1, DRAFT, (ROOT,), 0.70, None), (2, DRAFT, (ROOT,), None, "KeyError: 'a'"),
             (3, DRAFT, (ROOT,), 0.80, None), (4, IMPROVE, (3,), 0.85, None),
             (5, IMPROVE, (3,), 0.75, None), (6, DEBUG, (2,), None, "ValueError: shapes"),
             (7, DEBUG, (6,), None, "MemoryError"), (8, CROSS, (3, 1), 0.82, None),
             (9, IMPROVE, (4,), 0.90, None)]
    for node_id, op, parents, metric, error in shape:
        tree.add(node_id, op, parents)
        tree.finish(node_id, metric)
        parent = tree[parents[0]].metric if parents[0] != ROOT else None
        memory[node_id] = replace(entry(node_id, op, metric, error=error, parents=parents),
                                  parent_metric=parent)
    return tree, memory


def ids(entries: list[MemoryEntry]) -> list[int]:
    return [e.node_id for e in entries]


def render(entries: list[MemoryEntry], budget_tokens: int, counter: TokenCounter,
           header: str = "## Memory: what earlier attempts taught") -> str:
    """One headed section of the entries in the given order, as the cache renders its own."""
    return render_sections([(header, [format_entry(e) for e in entries])], budget_tokens,
                           counter)


def test_draft_sees_the_sibling_drafts_working_first_then_newest() -> None:
    tree, memory = sample()
    assert ids(scope(memory, DRAFT, (ROOT,), tree)) == [3, 1, 2]


def test_improve_sees_the_parent_then_its_other_children() -> None:
    tree, memory = sample()
    assert ids(scope(memory, IMPROVE, (3,), tree)) == [3, 8, 5, 4]


def test_debug_sees_the_debug_chain_back_to_the_node_that_started_it() -> None:
    tree, memory = sample()
    assert ids(scope(memory, DEBUG, (7,), tree)) == [7, 6, 2]


def test_debug_of_a_non_debug_node_sees_only_that_node() -> None:
    tree, memory = sample()
    assert ids(scope(memory, DEBUG, (2,), tree)) == [2]


def test_crossover_sees_both_parents() -> None:
    tree, memory = sample()
    assert ids(scope(memory, CROSS, (9, 1), tree)) == [9, 1]


def test_scoping_skips_nodes_that_memory_does_not_hold() -> None:
    tree, _ = sample()
    fresh = {4: entry(4, IMPROVE, 0.85, parents=(3,))}
    assert ids(scope(fresh, IMPROVE, (3,), tree)) == [4]


def test_normalise_ignores_case_numbers_paths_and_spacing() -> None:
    assert normalise("Error at /a/b.py:12  took 3.5s") == normalise("error at /c.py:99 took 1s")


def test_render_lists_entries_in_the_given_order_under_the_header() -> None:
    _, memory = sample()
    text = render([memory[3], memory[2]], 4096, COUNTER, header="## Memory")
    assert text.startswith("## Memory\n\n- Node 3 (draft): metric 0.8.")
    assert text.index("Node 3") < text.index("Node 2")
    assert "buggy, cause: KeyError: 'a'" in text


def test_render_shows_the_parent_metric_of_a_change() -> None:
    _, memory = sample()
    assert "metric 0.85 (parent 0.8)" in render([memory[4]], 4096, COUNTER)


def test_render_gives_nothing_for_no_entries_or_no_room() -> None:
    assert render([], 4096, COUNTER) == ""
    assert render([entry(1)], 5, COUNTER) == ""


def test_render_cuts_the_last_entry_that_partly_fits() -> None:
    long = entry(1, summary="word " * 400)
    text = render([long, entry(2)], 60, COUNTER)
    assert text.endswith(ELLIPSIS)
    assert "Node 2" not in text
    assert COUNTER.count(text) <= 60


def test_render_cuts_an_entry_only_when_a_useful_fragment_fits() -> None:
    huge = [entry(1, summary="word " * 400)]
    least = COUNTER.count("## M\n\n" + ELLIPSIS) + MIN_FRAGMENT_TOKENS
    assert render(huge, least - 1, COUNTER, header="## M") == ""
    assert render(huge, least, COUNTER, header="## M").endswith(ELLIPSIS)


entries_strategy = st.lists(
    st.builds(entry, st.integers(1, 10_000), st.sampled_from(list(Operator)),
              st.one_of(st.none(), st.floats(-1e6, 1e6)),
              st.text(max_size=200), st.one_of(st.none(), st.text(max_size=80))),
    max_size=12)


@settings(max_examples=120, deadline=None)
@given(entries_strategy, st.integers(0, 500))
def test_render_never_exceeds_the_budget(entries: list[MemoryEntry], budget: int) -> None:
    assert COUNTER.count(render(entries, budget, COUNTER)) <= budget


class _Metered:
    """The real tokenizer, counting how many characters it was asked to encode."""

    def __init__(self) -> None:
        self.inner = TiktokenCounter()
        self.chars = 0

    def count(self, text: str) -> int:
        self.chars += len(text)
        return self.inner.count(text)

    def truncate(self, text: str, max_tokens: int) -> str:
        self.chars += len(text)
        return self.inner.truncate(text, max_tokens)


_WORDS = st.text(alphabet=st.sampled_from("ab c\n.-_0123456789é"), min_size=1, max_size=80)


@given(sections=st.lists(st.lists(_WORDS, max_size=12), min_size=1, max_size=3),
       budget=st.integers(0, 300))
@settings(max_examples=150, deadline=None)
def test_rendering_counts_each_item_once_and_decides_as_counting_the_whole_text(
        sections: list[list[str]], budget: int) -> None:
    headed = [(f"## Part {i}", items) for i, items in enumerate(sections)]
    text = render_sections(headed, budget, COUNTER)
    assert COUNTER.count(text) <= budget
    assert text == _render_exact(headed, budget, COUNTER)


def test_a_long_memory_renders_in_linear_time() -> None:
    items = [f"- Node {i} (improve): metric 0.{i:04d}. lightgbm, {i} leaves, lr 0.05, "
             "target encoding of the categoricals, 5-fold CV" for i in range(400)]
    metered = _Metered()
    text = render_sections([("## Recent attempts", items)], 6000, metered)
    assert 0 < COUNTER.count(text) <= 6000
    # Each item is encoded about once (plus the final check), not once per item after it:
    # counting the whole text at each item encoded about 200 times the text.
    assert metered.chars < 4 * sum(len(i) for i in items)
    assert text == _render_exact([("## Recent attempts", items)], 6000, COUNTER)
