"""`mlmaster show ID NODE`, `show ID`, `logs` and `diff` against a real daemon on a real socket."""

from __future__ import annotations

import json
import os
import pty
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mlmaster_daemon.node_view import (
    code_diff,
    node_note,
    node_sections,
    path_from_root,
    task_lines,
)
from tests.daemon_process import MLMASTER, running_daemon


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("MLMASTER_")}


def _cli(*args: str, socket: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([*MLMASTER, *args, "--socket", str(socket)], capture_output=True,
                            text=True, env=_env(), timeout=240, check=False)
    if check and result.returncode != 0:
        raise AssertionError(f"mlmaster {args} failed ({result.returncode}):\n{result.stderr}")
    return result


@pytest.fixture(scope="module")
def daemon_socket() -> Iterator[Path]:
    """One daemon for the module: its tests only read the task it ran."""
    short_dir = Path(tempfile.mkdtemp(prefix="mlm-"))
    with running_daemon(short_dir, _env()) as sock:
        yield sock
    shutil.rmtree(short_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def finished_task(daemon_socket: Path, breast_cancer: Path) -> dict[str, Any]:
    # Enough steps that some node improves on another (the first ones are all drafts).
    out = _cli("submit", str(breast_cancer), "--steps", "8", "--wait", "--json",
               socket=daemon_socket)
    task: dict[str, Any] = json.loads(out.stdout)
    assert task["state"] == "finished"
    return task


def _node(nid: int, parent: int | None, status: str = "done", **extra: Any) -> dict[str, Any]:
    return {"id": nid, "parent_id": parent, "operator": "draft" if parent is None else "improve",
            "status": status, "metric": 0.9, "summary": None, "error": None, **extra}


def test_a_buggy_node_shows_its_error_not_its_summary() -> None:
    node = _node(2, 1, "buggy", summary="tried a forest", error="KeyError: 'target'")
    assert node_note(node) == "KeyError: 'target'"
    assert node_note(_node(3, 1, summary="tried a forest")) == "tried a forest"


def test_a_long_summary_is_wrapped_whole() -> None:
    summary = " ".join(f"word{i}" for i in range(80))
    lines = task_lines({"best": None}, [_node(1, None, summary=summary)])
    text = " ".join(line.strip() for line in lines[1:])
    assert text == summary
    assert all(len(line) <= 100 for line in lines[1:])


def test_a_nodes_plan_is_wrapped_whole_and_its_code_kept_as_written() -> None:
    plan = " ".join(f"step{i}" for i in range(60))
    code = "x = [" + ", ".join(str(i) for i in range(60)) + "]\n"
    node = _node(2, 1, task_id="t0123456789a", plan=plan, code=code, usage={})
    sections = dict(node_sections(node))
    assert " ".join(sections["plan"].split("\n")) == plan
    assert all(len(line) <= 100 for line in sections["plan"].split("\n"))
    assert sections["code"] == code


def test_the_best_path_runs_from_the_root() -> None:
    nodes = [_node(1, None), _node(2, 1), _node(3, None), _node(4, 2)]
    assert path_from_root(nodes, 4) == [1, 2, 4]
    lines = task_lines({"best": {"node_id": 4}}, nodes)
    assert lines[-1] == "best path: node 1 -> node 2 -> node 4"


def test_code_diff_is_unified_and_names_both_nodes() -> None:
    old = {"id": 1, "code": "a = 1\nb = 2\n"}
    new = {"id": 2, "code": "a = 1\nb = 3\n"}
    text = code_diff(old, new)
    assert text.startswith("--- node 1\n+++ node 2\n")
    assert "-b = 2\n" in text and "+b = 3\n" in text


def test_show_node_prints_plan_code_output_memory_and_tokens(
        daemon_socket: Path, finished_task: dict[str, Any]) -> None:
    best = finished_task["best"]["node_id"]
    out = _cli("show", finished_task["id"], str(best), socket=daemon_socket).stdout
    node = json.loads(_cli("show", finished_task["id"], str(best), "--json",
                           socket=daemon_socket).stdout)
    for heading in ("== plan", "== code", "== output", "== memory", "== tokens"):
        assert heading in out
    assert node["code"].strip().splitlines()[0] in out
    assert "\x1b[" not in out, "piped output carries no colour codes"


def test_show_node_highlights_the_code_on_a_terminal(
        daemon_socket: Path, finished_task: dict[str, Any]) -> None:
    primary, secondary = pty.openpty()
    with os.fdopen(primary, "rb") as reader:
        proc = subprocess.Popen([*MLMASTER, "show", finished_task["id"], "1", "--socket",
                                 str(daemon_socket)], stdout=secondary,
                                stderr=subprocess.PIPE, env={**_env(), "TERM": "xterm-256color"})
        os.close(secondary)
        chunks = []
        while True:
            try:
                chunk = reader.read1(65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            chunks.append(chunk)
        assert proc.wait(timeout=60) == 0, proc.stderr.read() if proc.stderr else ""
    assert b"\x1b[" in b"".join(chunks), "a terminal gets highlighted code"


def test_show_task_ends_with_the_best_nodes_path(
        daemon_socket: Path, finished_task: dict[str, Any]) -> None:
    out = _cli("show", finished_task["id"], socket=daemon_socket).stdout
    last = out.strip().splitlines()[-1]
    assert last.startswith("best path: node ")
    assert last.endswith(f"node {finished_task['best']['node_id']}")


def test_show_task_says_the_holdout_the_final_choice_and_each_nodes_holdout_score(
        daemon_socket: Path, finished_task: dict[str, Any]) -> None:
    out = _cli("show", finished_task["id"], socket=daemon_socket).stdout
    shown = json.loads(_cli("show", finished_task["id"], "--json", socket=daemon_socket).stdout)
    holdout, selection = shown["holdout"], shown["selection"]
    assert holdout["state"] == "on"
    assert f"holdout: {holdout['rows']} rows" in out
    assert f"final: node {selection['node_id']} by the {selection['rule']} rule" in out
    for node in shown["nodes"]:
        if node["holdout_metric"] is not None:
            gap = node["metric"] - node["holdout_metric"]
            assert re.search(rf"node {node['id']} .* holdout={node['holdout_metric']:.5f} "
                             rf"gap={re.escape(f'{gap:+.5f}')}", out)
    best = _cli("show", finished_task["id"], str(selection["node_id"]),
                socket=daemon_socket).stdout
    assert f"holdout {selection['holdout_metric']:.5f}, gap " in best


def test_logs_prints_the_nodes_output_and_follow_its_stdout_to_the_end(
        daemon_socket: Path, finished_task: dict[str, Any]) -> None:
    node = json.loads(_cli("show", finished_task["id"], "1", "--json",
                           socket=daemon_socket).stdout)
    logs = _cli("logs", finished_task["id"], "1", socket=daemon_socket).stdout
    followed = _cli("logs", finished_task["id"], "1", "--follow", socket=daemon_socket).stdout
    assert node["output_tail"].strip() and node["output_tail"].strip() in logs
    # --follow streams the raw stdout (to stdout) and stderr (to stderr) as they grow.
    assert followed.strip() and followed.strip() in node["output_tail"]


def test_diff_compares_with_the_parent_and_a_root_needs_another_node(
        daemon_socket: Path, finished_task: dict[str, Any]) -> None:
    nodes = json.loads(_cli("show", finished_task["id"], "--json",
                            socket=daemon_socket).stdout)["nodes"]
    child = next(n for n in nodes if n["parent_id"] is not None)
    out = _cli("diff", finished_task["id"], str(child["id"]), socket=daemon_socket).stdout
    assert out.startswith(f"--- node {child['parent_id']}\n+++ node {child['id']}\n") or \
        out == f"node {child['parent_id']} and node {child['id']} have the same code\n"
    root = next(n for n in nodes if n["parent_id"] is None)
    refused = _cli("diff", finished_task["id"], str(root["id"]), socket=daemon_socket,
                   check=False)
    assert refused.returncode == 1 and "OTHER" in refused.stderr
    against = _cli("diff", finished_task["id"], str(root["id"]), str(child["id"]),
                   socket=daemon_socket).stdout
    # OTHER takes the parent's place: it is the old side.
    assert against.startswith(f"--- node {child['id']}\n+++ node {root['id']}\n") or \
        "same code" in against


def test_a_node_id_that_is_not_a_number_is_refused_with_what_to_give(
        daemon_socket: Path) -> None:
    refused = _cli("show", "t0123456789a", "x1", socket=daemon_socket, check=False)
    assert refused.returncode == 2 and "positive whole number" in refused.stderr
    missing = _cli("show", "t0123456789a", "3", socket=daemon_socket, check=False)
    assert missing.returncode == 1 and "t0123456789a" in missing.stderr
