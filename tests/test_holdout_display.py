"""Where users read a task, they see its hidden holdout: the API's task view, `mlmaster watch`
and `mlmaster show` show each node's holdout score beside its own validation metric (and the
gap between them), the holdout's state, and why the final submission was chosen."""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from mlmaster_daemon.api.client import Client
from mlmaster_daemon.clock import ManualClock
from mlmaster_daemon.node_view import node_line, node_sections, task_lines
from mlmaster_daemon.watch import follow_live
from mlmaster_daemon.watch_state import (
    WatchState,
    apply_nodes,
    apply_task,
    holdout_summary,
    selection_summary,
)
from mlmaster_daemon.watch_view import progress_line, render

TASK = "t0123456789a"
HOLDOUT_ON = {"state": "on", "rows": 43, "fraction": 0.1, "group_column": None,
              "columns": ["target"]}
HOLDOUT_OFF = {"state": "off", "reason": "turned off by task.toml's [holdout] enabled = false"}
KEPT = {"rule": "holdout", "node_id": 2, "metric": 0.99, "holdout_metric": 0.988,
        "reason": "node 2 has the best holdout score, 0.988, of 3 working nodes",
        "ensemble": {"kept": True, "members": [2, 3, 4], "method": "rank-mean",
                     "holdout_metric": 0.993,
                     "best_single": {"node_id": 2, "holdout_metric": 0.988},
                     "reason": "the rank-mean of nodes 2, 3, 4 scored 0.993 on the holdout, "
                               "better than node 2 alone (0.988)"}}
REFUSED = {"rule": "holdout+cv", "node_id": 3, "metric": 0.98, "holdout_metric": 0.97,
           "reason": "node 3 has the best mean of validation and holdout",
           "ensemble": {"kept": False, "reason": "fewer than 2 nodes have a holdout score"}}


def _task(**fields: Any) -> dict[str, Any]:
    return {"id": TASK, "name": "breast", "state": "finished", "policy": "mcts",
            "metric": "roc_auc", "lower_is_better": False, "steps": 4, "nodes_done": 3,
            "best": {"node_id": 2, "metric": 0.99}, **fields}


def _node(nid: int, metric: float | None, holdout: float | None, **fields: Any
          ) -> dict[str, Any]:
    return {"id": nid, "parent_id": None, "parent_ids": [], "operator": "draft",
            "status": "done" if metric is not None else "buggy", "metric": metric,
            "holdout_metric": holdout, "summary": None, "error": None, **fields}


def _frame(task: dict[str, Any], nodes: list[dict[str, Any]]) -> str:
    state = WatchState(TASK)
    apply_task(state, task)
    apply_nodes(state, nodes)
    console = Console(record=True, width=250, file=io.StringIO())
    console.print(render(state, 0.0, 40, 250))
    return console.export_text()


# --- the words, alone -----------------------------------------------------------------------


@pytest.mark.parametrize(("holdout", "said"), [
    (HOLDOUT_ON, "43 rows (10%), never seen by the search"),
    ({**HOLDOUT_ON, "rows": 7, "fraction": 0.125, "warning": "only 7 rows\n2nd line"},
     "7 rows (12.5%), never seen by the search; warning: only 7 rows"),
    (HOLDOUT_OFF, "off (turned off by task.toml's [holdout] enabled = false)"),
    ({"state": "off"}, "off (no reason given)"),
    (None, None), ("on", None),
])
def test_the_holdout_is_said_in_words(holdout: object, said: str | None) -> None:
    assert holdout_summary(holdout) == said


def test_the_selection_names_the_rule_the_node_and_why() -> None:
    assert selection_summary(KEPT) == (
        "node 2 by the holdout rule: node 2 has the best holdout score, 0.988, of 3 working "
        "nodes; ensemble kept (the rank-mean of nodes 2, 3, 4): the rank-mean of nodes 2, 3, 4 "
        "scored 0.993 on the holdout, better than node 2 alone (0.988)")
    assert selection_summary(REFUSED) == (
        "node 3 by the holdout+cv rule: node 3 has the best mean of validation and holdout; "
        "no ensemble: fewer than 2 nodes have a holdout score")
    assert selection_summary({"rule": "validation", "node_id": 1}) == \
        "node 1 by the validation rule"
    assert selection_summary(None) is None and selection_summary({"node_id": "2"}) is None


# --- mlmaster watch ---------------------------------------------------------------------------


def test_watch_shows_each_nodes_holdout_score_beside_its_metric() -> None:
    text = _frame(_task(holdout=HOLDOUT_ON, selection=KEPT),
                  [_node(1, 0.9904, 0.9884), _node(2, 0.99, None), _node(3, None, None)])
    assert re.search(r"#1 draft\s+done\s+0\.99040 \| ho 0\.98840 ", text)
    row2 = next(line for line in text.splitlines() if "#2 draft" in line)
    assert "0.99000" in row2 and "ho" not in row2.split("#2", 1)[1].split("★")[0]
    assert "holdout: 43 rows (10%), never seen by the search" in text
    assert "final: node 2 by the holdout rule: node 2 has the best holdout score" in text


def test_watch_says_the_holdout_is_off_and_why() -> None:
    text = _frame(_task(holdout=HOLDOUT_OFF), [_node(1, 0.9, None)])
    assert "holdout: off (turned off by task.toml's [holdout] enabled = false)" in text
    assert "final:" not in text and "| ho" not in text


def test_watch_of_an_older_task_shows_no_holdout_line() -> None:
    text = _frame(_task(), [{k: v for k, v in _node(1, 0.9, None).items()
                             if k != "holdout_metric"}])
    assert "holdout" not in text and "final:" not in text
    assert re.search(r"#1 draft\s+done\s+0\.90000", text)


def test_watch_keeps_markup_in_a_reason_as_text() -> None:
    text = _frame(_task(holdout={"state": "off", "reason": "[bold red]x[/] \x1b[2J bad"}), [])
    assert "holdout: off ([bold red]x[/]  [2J bad)" in text


# --- mlmaster show ----------------------------------------------------------------------------


def test_show_lists_the_holdout_score_and_the_gap_of_each_node() -> None:
    assert node_line(_node(1, 0.9904, 0.9884)).endswith(
        "metric=0.99040 holdout=0.98840 gap=+0.00200")
    assert node_line(_node(2, 0.95, 0.97)).endswith("metric=0.95000 holdout=0.97000 gap=-0.02000")
    # A node without a holdout score (buggy, or from before the holdout) has no column.
    assert node_line(_node(3, None, None)).endswith("metric=-")
    assert node_line({k: v for k, v in _node(4, 0.9, None).items()
                      if k != "holdout_metric"}).endswith("metric=0.90000")


def test_show_task_says_the_holdout_and_the_final_choice_first() -> None:
    lines = task_lines(_task(holdout=HOLDOUT_ON, selection=REFUSED),
                       [_node(2, 0.99, 0.988)])
    assert lines[0] == "holdout: 43 rows (10%), never seen by the search"
    assert " ".join(lines[1:3]).startswith("final: node 3 by the holdout+cv rule: node 3")
    assert "no ensemble: fewer than 2 nodes have a holdout score" in " ".join(lines)
    assert all(len(line) <= 100 for line in lines)
    assert lines[-1] == "best path: node 2"
    assert task_lines(_task(), [_node(2, 0.99, None)])[0].startswith("  node 2")


def test_show_node_says_its_holdout_score_and_gap() -> None:
    node = _node(2, 0.99, 0.988, task_id=TASK, plan="p", code="c", usage={})
    _, body = node_sections(node)[0]
    assert body == "draft from root, done, metric 0.99000, holdout 0.98800, gap +0.00200"
    _, older = node_sections({**node, "holdout_metric": None})[0]
    assert older == "draft from root, done, metric 0.99000"


# --- against a real daemon --------------------------------------------------------------------


async def test_a_finished_task_shows_its_holdout_and_choice_in_the_api_and_watch(
        client: Client, breast_cancer: Path) -> None:
    submitted = await client.submit({"task_dir": str(breast_cancer), "steps": 2})
    console = Console(file=io.StringIO(), force_terminal=True, width=250, height=60,
                      record=True)
    task = await follow_live(client, submitted["id"], console, ManualClock(0.0))
    nodes = await client.nodes(task["id"])
    assert task["state"] == "finished"
    holdout, selection = task["holdout"], task["selection"]
    assert holdout["state"] == "on" and holdout["rows"] > 0
    assert selection["node_id"] in [n["id"] for n in nodes] and selection["reason"]
    scored = [n for n in nodes if n["holdout_metric"] is not None]
    assert scored, "working nodes are scored on the holdout"
    text = console.export_text()
    last = text[text.rindex(f"mlmaster watch {task['id']} finished"):]
    assert f"holdout: {holdout['rows']} rows" in last
    assert f"final: node {selection['node_id']} by the {selection['rule']} rule" in last
    for node in scored:
        assert re.search(rf"#{node['id']} .*\| ho {node['holdout_metric']:.5f}", last)


def test_the_plain_line_of_a_done_node_gives_its_holdout_score() -> None:
    event = {"type": "node.state", "node_id": 3, "operator": "draft", "state": "done",
             "metric": 0.99, "holdout_metric": 0.875, "nodes_done": 3, "nodes_total": 3}
    line = progress_line(event, None, 5)
    assert line is not None and "metric=0.99" in line and "holdout=0.875" in line
    assert "holdout" not in (progress_line({**event, "holdout_metric": None}, None, 5) or "")
