"""`mlmaster grade`, `mlmaster report` and the MLE-bench options of `submit` and `daemon`, run
as a user runs them: real subprocesses, a real daemon on a real socket."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from conftest import wait_terminal
from test_medals import REPORT_FIELDS, build_competition, submission_with

from mlmaster_daemon.api.client import Client
from mlmaster_daemon.daemon import Daemon
from mlmaster_daemon.tasks.competition import load_task
from mlmaster_daemon.tasks.examples import build_example
from mlmaster_daemon.tasks.grading import grade

MLMASTER = [sys.executable, "-m", "mlmaster_daemon"]


def _cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLMASTER_")}
    return subprocess.run([*MLMASTER, *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=240, check=False)


def _report(result: subprocess.CompletedProcess[str]) -> dict[str, object]:
    assert result.returncode == 0, result.stderr
    report: dict[str, object] = json.loads(result.stdout)
    return report


def _refused(result: subprocess.CompletedProcess[str], *words: str) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    for word in words:
        assert word in result.stderr, result.stderr
    assert result.stdout == ""


# mlmaster grade TASK_DIR SUBMISSION


def test_grade_prints_the_report_of_the_answers_file_with_gold(tmp_path: Path) -> None:
    root = build_competition(tmp_path)
    report = _report(_cli("grade", root, root / "prepared" / "private" / "test.csv"))
    assert list(report) == REPORT_FIELDS
    assert report["competition_id"] == "tiny-accuracy"
    assert report["score"] == 1.0 and report["gold_medal"] is True


def test_grade_of_the_sample_submission_exits_zero_without_a_medal(tmp_path: Path) -> None:
    root = build_competition(tmp_path)
    sample = root / "prepared" / "public" / "sample_submission.csv"
    report = _report(_cli("grade", root, sample))
    assert report["score"] == 0.5 and report["any_medal"] is False


def test_grade_accepts_the_public_folder(tmp_path: Path) -> None:
    root = build_competition(tmp_path, leaderboard_in="prepared")
    report = _report(_cli("grade", root / "prepared" / "public",
                          submission_with(tmp_path / "s.csv", 9)))
    assert report["silver_medal"] is True


def test_grade_of_an_invalid_submission_reports_no_score(tmp_path: Path) -> None:
    root = build_competition(tmp_path)
    bad = tmp_path / "bad.csv"
    bad.write_text("id,label\n100,1\n")
    report = _report(_cli("grade", root, bad))
    assert report["score"] is None and report["valid_submission"] is False
    assert report["submission_exists"] is True


def test_grade_of_a_missing_submission_reports_it_absent(tmp_path: Path) -> None:
    root = build_competition(tmp_path)
    result = _cli("grade", root, tmp_path / "nowhere.csv")
    report = _report(result)
    assert report["submission_exists"] is False and report["score"] is None
    assert "no CSV submission" in result.stderr


def test_grade_ranks_on_a_given_leaderboard(tmp_path: Path) -> None:
    root = build_competition(tmp_path, leaderboard_in="none")
    board = tmp_path / "board.csv"
    board.write_text("score\n0.5\n0.4\n")
    report = _report(_cli("grade", root, root / "prepared" / "public" / "sample_submission.csv",
                          "--leaderboard", board))
    assert report["gold_threshold"] == 0.5 and report["gold_medal"] is True


def test_grade_without_a_submission_says_to_give_one(tmp_path: Path) -> None:
    root = build_competition(tmp_path)
    _refused(_cli("grade", root), "give the submission to grade")


def test_grade_of_a_missing_folder_is_refused(tmp_path: Path) -> None:
    _refused(_cli("grade", tmp_path / "missing", tmp_path / "s.csv"), "does not exist")


def test_grade_without_private_answers_is_refused(tmp_path: Path) -> None:
    root = build_competition(tmp_path)
    (root / "prepared" / "private" / "test.csv").unlink()
    _refused(_cli("grade", root, submission_with(tmp_path / "s.csv", 10)),
             "no private answers", str(root / "prepared" / "private" / "test.csv"))


def test_grade_without_a_leaderboard_prints_the_score_with_null_medals_and_a_note(
        tmp_path: Path) -> None:
    root = build_competition(tmp_path, leaderboard_in="none")
    result = _cli("grade", root, submission_with(tmp_path / "s.csv", 9))
    report = _report(result)
    assert report["score"] == 0.9 and report["valid_submission"] is True
    assert report["gold_medal"] is None and report["gold_threshold"] is None
    assert "ranking needs leaderboard.csv" in result.stderr
    assert str(root / "leaderboard.csv") in result.stderr


def test_competitions_lists_the_registry_with_metric_modality_and_split() -> None:
    result = _cli("competitions")
    assert result.returncode == 0, result.stderr
    lines = {line[2:].split()[0]: line for line in result.stdout.splitlines()
             if not line.startswith("#")}
    assert "lite" in lines["spooky-author-identification"]
    assert "log_loss" in lines["spooky-author-identification"]
    assert "dev" in lines["spaceship-titanic"]
    listed = json.loads(_cli("competitions", "--split", "full", "--json").stdout)
    assert len(listed) == 75 and {row["split"] for row in listed} == {"lite", "full"}
    assert all({"id", "metric", "modality", "split"} <= set(row) for row in listed)
    # every one runs; those scored by their own metric need a model, and say so
    assert all(row["runs_here"] for row in listed)
    own = {row["id"] for row in listed if not row["offline_coder"]}
    assert len(own) == 35 and lines["AI4Code"].startswith("m ")
    assert lines["spooky-author-identification"].startswith("  ")


@pytest.mark.parametrize("name", ["breast_cancer", "wine", "diabetes"])
def test_the_bundled_examples_ship_a_leaderboard_so_grade_shows_medals(
        tmp_path: Path, name: str) -> None:
    root = build_example(name, tmp_path / name)
    answers = pd.read_csv(root / "prepared" / "private" / "test.csv")
    spec = load_task(root)
    perfect = tmp_path / "perfect.csv"
    if name == "wine":
        one_hot = pd.get_dummies(answers[spec.target]).astype(float)
        one_hot.insert(0, "id", answers["id"])
        one_hot.to_csv(perfect, index=False)
    else:
        answers.to_csv(perfect, index=False)
    best = _report(_cli("grade", root, perfect))
    assert best["gold_medal"] is True and best["above_median"] is True
    sample = _report(_cli("grade", root, root / "prepared" / "public" / "sample_submission.csv"))
    assert sample["any_medal"] is False and sample["above_median"] is False


def test_grade_gives_mlebench_score_and_notes_where_the_strict_check_differs(
        tmp_path: Path) -> None:
    from test_mlebench_conformance import BY_ID, build, expected, perfect, write_submission

    built = build(tmp_path, BY_ID["nomad2018-predict-transparent-conductors"])
    path = write_submission(tmp_path, built, perfect(built), "reversed", shuffle=False)
    rows = pd.read_csv(path).iloc[::-1]
    rows.to_csv(path, index=False)
    paired = rows[list(built.shape.targets)].reset_index(drop=True)
    result = _cli("grade", built.spec.root, path)
    assert _report(result)["score"] == round(expected(built.shape, built.truth, paired), 5)
    assert "mlmaster: note: mle-bench scores this file" in result.stderr
    assert "the strict check (rows matched by id" in result.stderr


# The daemon's tasks: mlmaster grade TASK_ID, mlmaster report


async def _finished_task(client: Client, root: Path) -> dict[str, Any]:
    created = await client.submit({"task_dir": str(root), "steps": 2})
    task = await wait_terminal(client, created["id"])
    assert task["state"] == "finished" and task["best"], task
    return task


async def test_grade_and_report_grade_the_daemons_best_submissions(
        daemon: Daemon, client: Client, tmp_path: Path) -> None:
    root = build_example("breast_cancer", tmp_path / "bc-example")
    (root / "leaderboard.csv").write_text(
        "score\n" + "".join(f"{1 - n / 200}\n" for n in range(60)))
    task = await _finished_task(client, root)
    best = Path(task["best"]["submission_path"])
    expected = round(grade(load_task(root), best), 5)
    sock = str(daemon.socket_path)

    graded = _report(await asyncio.to_thread(_cli, "grade", task["id"], "--socket", sock))
    assert graded["competition_id"] == "bc-example"
    assert graded["score"] == expected and graded["submission_path"] == str(best)

    out = tmp_path / "reports"
    result = await asyncio.to_thread(_cli, "report", "--output-dir", out, "--socket", sock)
    summary = _report(result)
    assert summary["total_runs"] == 1 and summary["total_valid_submissions"] == 1
    assert summary["total_runs_with_submissions"] == 1
    written = list(out.glob("*-GMT_grading_report.json"))
    assert len(written) == 1 and json.loads(written[0].read_text()) == summary
    assert str(written[0]) in result.stderr

    lite = _report(await asyncio.to_thread(_cli, "report", "--split", "lite", "--output-dir",
                                           out, "--socket", sock))
    assert lite["total_runs"] == 0, "bc-example is not an MLE-bench Lite competition"

    # Without its leaderboard the task is still reported, unranked, and the report written.
    (root / "leaderboard.csv").rename(tmp_path / "board.csv")
    bare_out = tmp_path / "bare"
    result = await asyncio.to_thread(_cli, "report", "--output-dir", bare_out, "--socket", sock)
    bare = _report(result)
    assert bare["total_valid_submissions"] == 1 and bare["total_medals"] == 0
    assert bare["competition_reports"][0]["gold_medal"] is None
    assert bare["competition_reports"][0]["score"] == expected
    assert f"task {task['id']} (bc-example): medals are null" in result.stderr
    assert len(list(bare_out.glob("*-GMT_grading_report.json"))) == 1

    # --leaderboard-dir: mle-bench's mlebench/competitions/<id>/leaderboard.csv layout.
    boards = tmp_path / "competitions"
    (boards / "bc-example").mkdir(parents=True)
    (tmp_path / "board.csv").rename(boards / "bc-example" / "leaderboard.csv")
    ranked = _report(await asyncio.to_thread(_cli, "report", "--output-dir", bare_out,
                                             "--leaderboard-dir", boards, "--socket", sock))
    assert ranked["competition_reports"][0] == {
        **summary["competition_reports"][0],
        "created_at": ranked["competition_reports"][0]["created_at"]}


async def test_grade_of_an_unknown_task_id_is_refused(daemon: Daemon) -> None:
    result = await asyncio.to_thread(_cli, "grade", "t0123456789a", "--socket",
                                     str(daemon.socket_path))
    _refused(result, "t0123456789a")


# mlmaster submit --competition ID --data-dir DIR


async def test_submit_resolves_a_competition_in_the_data_dir(
        daemon: Daemon, client: Client, tmp_path: Path) -> None:
    root = build_example("wine", tmp_path / "data" / "wine-example")
    result = await asyncio.to_thread(
        _cli, "submit", "--competition", "wine-example", "--data-dir", tmp_path / "data",
        "--steps", "1", "--json", "--socket", str(daemon.socket_path))
    assert result.returncode == 0, result.stderr
    task = json.loads(result.stdout)
    assert task["task_dir"] == str(root.resolve())
    await client.cancel(task["id"])


def test_submit_of_an_unprepared_competition_names_the_path(tmp_path: Path) -> None:
    result = _cli("submit", "--competition", "spaceship-titanic", "--data-dir", tmp_path,
                  "--socket", tmp_path / "none.sock")
    _refused(result, str(tmp_path / "spaceship-titanic" / "prepared" / "public"),
             "mlebench prepare -c spaceship-titanic")


def test_submit_takes_a_folder_or_a_competition_not_both(tmp_path: Path) -> None:
    result = _cli("submit", tmp_path, "--competition", "x", "--data-dir", tmp_path,
                  "--socket", tmp_path / "none.sock")
    _refused(result, "not both")


# mlmaster daemon --validate-port PORT


def test_daemon_validate_port_reaches_the_config(tmp_path: Path) -> None:
    result = _cli("daemon", "--validate-port", "70000", "--socket", tmp_path / "s.sock",
                  "--state-dir", tmp_path / "state")
    _refused(result, "validation_server.port")
    assert not (tmp_path / "state").exists()
