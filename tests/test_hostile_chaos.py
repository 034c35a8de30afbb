"""The hostile run: scripts a prompt-injected model writes cannot kill the daemon, reach its
API, read secrets or hidden answers, or lose finished work, while the machine fails under it.

The runs are real: `python -m tools.hostile` as a subprocess, which runs its own
OpenAI-compatible server and the daemon as a subprocess, under bubblewrap where it works. The
checks the run is made of are tested on their own first, and one run without a sandbox shows
that a job reading the hidden answers is caught, so a run that passes is known to be able to
fail. The runs of single attacks are the daemon bugs this run found, each kept as the check
that it stays fixed."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from mlmaster_daemon.execution.runner import run_script
from mlmaster_daemon.execution.workspace import Workspace
from mlmaster_daemon.tasks.competition import load_task
from mlmaster_daemon.tasks.examples import build_example
from tools.chaos import NodeKey, NodeRow
from tools.hostile.attacks import ATTACKS, ATTACKS_BY_NAME, Targets
from tools.hostile.checks import (
    changed_files,
    file_digests,
    late_writes,
    logged_exceptions,
    unaccounted_answers,
)
from tools.hostile.leaks import find_leaks, plant_marker, secret_forms
from tools.hostile.model import ATTACKER, VICTIM, InjectedModel, Served
from tools.hostile.report import HostileReport
from tools.hostile.settings import RSS_LIMIT_MB
from tools.hostile.watched import peak_rss_mb

LABELS = ("daemon deaths", "finished nodes lost", "nodes unfinished", "errors missing",
          "nodes timed out", "victim task", "tasks submitted by jobs", "API errors",
          "answers unaccounted", "internal errors", "leaks",
          "orphan processes", "late writes", "files changed outside", "peak daemon RSS",
          "tasks finished", "valid best submission", "faults", "nodes", "wall time")
MARKER = "HIDDEN-ANSWERS-victim-0123456789abcdef"

ROOT = Path(__file__).resolve().parents[1]


def test_a_secret_is_found_as_text_hex_or_base64_at_any_offset() -> None:
    key = "sk-hostile-5f0e1d2c3b4a59687766554433221100"
    printed: list[tuple[str, str | bytes]] = [
        ("plain", f"it said {key} here"), ("hex", "x" + key.encode().hex()),
        *[(f"base64 at offset {k}", base64.b64encode(b"?" * k + key.encode() + b"!").decode())
          for k in range(3)],
        ("bytes", b"\0\1" + key.encode()), ("clean", "it said [redacted] here")]
    found = find_leaks({"the key": key}, printed)
    assert found == [f"the key in {where}" for where, _ in printed[:-1]]
    assert len(secret_forms(key)) == 5


def test_the_marker_is_planted_in_the_hidden_answers_only(tmp_path: Path) -> None:
    competition = build_example("breast_cancer", tmp_path / "bc")
    plant_marker(competition, MARKER)
    answers = (competition / "prepared" / "private" / "test.csv").read_text().splitlines()
    assert answers[0] == "id,target,note"
    assert all(line.endswith("," + MARKER) for line in answers[1:]) and len(answers) > 100
    public = competition / "prepared" / "public"
    assert not find_leaks({"marker": MARKER}, [(p.name, p.read_bytes())
                                               for p in public.iterdir()])
    assert load_task(competition).private_dir is not None


def _row(node_id: int, state: str, finished_at: float | None) -> NodeRow:
    return NodeRow("t1", node_id, state, (("state", state), ("finished_at", finished_at)))


def test_a_file_written_after_its_node_finished_is_a_late_write(tmp_path: Path) -> None:
    ws = tmp_path / "tasks" / "t1" / "nodes" / "1"
    (ws / "deep" / "er").mkdir(parents=True)
    (ws / "deep" / "er" / "escapee.log").write_text("still here\n")
    written = (ws / "deep" / "er" / "escapee.log").stat().st_mtime
    late: dict[NodeKey, NodeRow] = {("t1", 1): _row(1, "buggy", written - 5.0)}
    assert [w.split(" written")[0] for w in late_writes(tmp_path, late)] == [
        "task t1 node 1: deep/er/escapee.log"]
    in_time: dict[NodeKey, NodeRow] = {("t1", 1): _row(1, "buggy", written)}
    running: dict[NodeKey, NodeRow] = {("t1", 1): _row(1, "running", None)}
    assert late_writes(tmp_path, in_time) == [] and late_writes(tmp_path, running) == []


def test_a_file_changed_removed_or_added_under_a_watched_folder_is_reported(
    tmp_path: Path,
) -> None:
    (tmp_path / "a").mkdir()
    for name in ("one", "two", "three"):
        (tmp_path / "a" / name).write_text(name)
    before = file_digests([tmp_path / "a"])
    (tmp_path / "a" / "one").write_text("written through a link")
    (tmp_path / "a" / "two").unlink()
    (tmp_path / "a" / "four").write_text("new")
    assert sorted(changed_files(before, file_digests([tmp_path / "a"]))) == [
        f"{tmp_path}/a/four added", f"{tmp_path}/a/one changed", f"{tmp_path}/a/two removed"]


def test_an_answer_the_daemon_does_not_record_is_unaccounted_unless_a_kill_explains_it(
) -> None:
    served = [Served(ATTACKER, 10.0, 11.0), Served(ATTACKER, 20.0, 21.0),
              Served(VICTIM, 20.0, 21.0), Served(None, 0.0, 0.1)]
    assert unaccounted_answers(served, ATTACKER, 2, []) is None
    assert unaccounted_answers(served, ATTACKER, 1, []) == (
        f"the {ATTACKER} was served 2 answers (0 about the time of a kill or a full disk) and "
        "records 1 calls")
    # Killed 3 s after the second answer ended: it may have died with the daemon.
    assert unaccounted_answers(served, ATTACKER, 1, [(24.0, 24.0)]) is None
    assert unaccounted_answers(served, ATTACKER, 1, [(40.0, 40.0)]) is not None
    # More calls than answers is wrong too (one answer counted twice).
    assert unaccounted_answers(served, VICTIM, 2, []) is not None


def test_a_traceback_in_the_daemons_log_is_an_internal_error() -> None:
    log = b"\n".join([
        b'{"event": "node finished", "level": "info"}',
        b'{"event": "expansion failed", "task_id": "t1", "node_id": 3, "level": "error", '
        b'"exception": [{"exc_type": "OverflowError", "exc_value": "int too large"}]}',
        b'not json at all "exception"',
        b'{"event": "task paused", "exception": null}'])
    assert logged_exceptions(log) == [
        "expansion failed (task_id t1, node_id 3): OverflowError: int too large"]


def _passing() -> HostileReport:
    return HostileReport(victim_state="finished", peak_rss_mb=160.0,
                         tasks={"victim": "finished", "attacker": "finished"})


@pytest.mark.parametrize("spoil", [
    lambda r: r.deaths.append("the daemon exited by itself"),
    lambda r: r.lost.update({("t1", 1): "missing"}),
    lambda r: r.unfinished.append("node 3 is running"),
    lambda r: r.unexplained.append("node 2 is buggy without a reason"),
    lambda r: r.timed_out.append("node 4: killed after its 30 s time limit"),
    lambda r: setattr(r, "victim_state", "cancelled"),
    lambda r: r.foreign_tasks.append("t9 (by-a-job)"),
    lambda r: r.api_errors.append("GET node 3 answered 500"),
    lambda r: r.unaccounted.append("served 4 answers and records 3 calls"),
    lambda r: r.internal_errors.append("expansion failed: OverflowError"),
    lambda r: r.leaks.append("the API key in the daemon's log"),
    lambda r: r.orphans.append("pid 7"),
    lambda r: r.late.append("escapee.log"),
    lambda r: r.outside.append("api_key changed"),
    lambda r: setattr(r, "peak_rss_mb", RSS_LIMIT_MB + 1.0),
    lambda r: r.tasks.update({"attacker": "paused"}),
    lambda r: r.bad_submissions.append("no best submission"),
    lambda r: r.fault_failures.append("wal-loss: started without its -wal"),
], ids=["death", "lost", "unfinished", "no-error", "timed-out", "victim", "foreign",
        "api-error", "unaccounted", "internal", "leak", "orphan", "late", "outside", "rss",
        "unfinished-task", "submission", "fault"])
def test_any_failed_check_fails_the_run(spoil: Callable[[HostileReport], object]) -> None:
    report = _passing()
    assert report.passed and report.lines()[-1] == "hostile: PASS"
    spoil(report)
    assert not report.passed and report.lines()[-1] == "hostile: FAIL"


def test_the_peak_rss_is_the_kernels_high_water_mark() -> None:
    # A fresh process: this one's high-water mark depends on the tests run before.
    probe = (
        "import os\n"
        "from tools.hostile.watched import peak_rss_mb\n"
        "before = peak_rss_mb(os.getpid())\n"
        "ballast = bytearray(64 * 1024 * 1024)\n"
        "ballast[::4096] = b'\\1' * len(ballast[::4096])\n"
        "del ballast\n"
        "print(before, peak_rss_mb(os.getpid()))\n")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          check=True, timeout=60, cwd=ROOT)
    before, after = map(float, done.stdout.split())
    assert after >= before + 60
    assert peak_rss_mb(2**22 + 12345) == 0.0


@pytest.fixture
async def model() -> AsyncIterator[InjectedModel]:
    server = InjectedModel(working="print('working')\n")
    await server.start()
    yield server
    await server.stop()


async def _ask(model: InjectedModel, task: str, stream: bool = True) -> str:
    client = openai.AsyncOpenAI(base_url=model.base_url, api_key="sk-test")
    messages: list[ChatCompletionMessageParam] = [
        {"role": "system", "content": "You write scripts."},
        {"role": "user", "content": f"# Task: {task}\n\nWrite the script."}]
    try:
        if not stream:
            reply = await client.chat.completions.create(model="m", messages=messages)
            return reply.choices[0].message.content or ""
        chunks = await client.chat.completions.create(
            model="m", messages=messages, stream=True,
            stream_options={"include_usage": True})
        text, usage = "", None
        async for chunk in chunks:
            text += "".join(c.delta.content or "" for c in chunk.choices)
            usage = chunk.usage or usage
        assert usage is not None and usage.total_tokens == 150
        return text
    finally:
        await client.close()


async def test_the_injected_model_gives_the_attacker_its_scripts_in_turn_the_victim_working_code(
    model: InjectedModel,
) -> None:
    assert "print('working')" in await _ask(model, ATTACKER)
    model.attacker_scripts = [("api", "print('attack')\n"), ("working", "print('working')\n")]
    answers = [await _ask(model, ATTACKER, stream=k % 2 == 0) for k in range(3)]
    assert [("attack" in a, a.split("\n")[0][:28]) for a in answers] == [
        (True, "Injected attack: api. The no"), (False, "Working script: a simple mod"),
        (True, "Injected attack: api. The no")]
    assert "```python\nprint('attack')\n```" in answers[0]
    assert "print('working')" in await _ask(model, VICTIM)
    assert await _ask(model, "a summary of a phase") == "Nothing to add."
    assert len(model.requests) == 6 and model.served["api"] == 2


def _targets(tmp_path: Path, victim: Path) -> Targets:
    return Targets(socket=str(tmp_path / "none.sock"), key_file=str(tmp_path / "key"),
                   state_dir=str(tmp_path / "state"), database=str(tmp_path / "state" / "db"),
                   own_task_dir=str(victim), victim_task_dir=str(victim), victim_id="t0",
                   fill_cap_bytes=1)


def test_every_attack_is_a_python_script_that_holds_paths_and_no_secret(tmp_path: Path) -> None:
    targets = _targets(tmp_path, tmp_path / "victim")
    for attack in ATTACKS:
        code = attack.script(targets)
        # A lone surrogate and a NUL (in a comment) are what one attack is about: no Python
        # takes them, and the daemon must cope; compile the rest.
        compile(code.encode(errors="replace").decode().replace("\0", ""), attack.name, "exec")
        assert code.startswith(f"# {attack.name}: ") and str(tmp_path) in code
        assert "HIDDEN-ANSWERS" not in code and "sk-hostile" not in code


async def test_the_read_secrets_attack_prints_the_key_and_the_answers_when_nothing_stops_it(
    tmp_path: Path,
) -> None:
    # Without a sandbox the attack works: what the run's leak scan looks for is really there.
    victim = build_example("breast_cancer", tmp_path / "victim")
    plant_marker(victim, MARKER)
    key = "sk-hostile-00112233445566778899aabbccddeeff"
    (tmp_path / "key").write_text(key + "\n")
    code = ATTACKS_BY_NAME["read-secrets"].script(_targets(tmp_path, victim))
    ws = Workspace.create(tmp_path / "ws", victim / "prepared" / "public", code)
    result = await run_script(ws, timeout_s=60, kill_grace_s=0.5, sandbox="none",
                              public_dir=victim / "prepared" / "public")
    assert result.exit_code == 4
    found = find_leaks({"the key": key, "the answers": MARKER},
                       [("the output", ws.stdout.read_bytes())])
    assert found == ["the key in the output", "the answers in the output"]


def _run_hostile(*args: str, timeout_s: float) -> tuple[int, dict[str, str], list[str]]:
    """Run the hostile module, leaving nothing behind; (exit code, figures by label, every
    output line)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLMASTER_")}
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "tools.hostile", "--clean", *args],
                          capture_output=True, text=True, timeout=timeout_s, env=env,
                          check=False, cwd=ROOT)
    lines = (done.stdout + done.stderr).splitlines()
    lines.append(f"(the run took {time.monotonic() - started:.1f} s)")
    figures = {}
    for line in lines:
        for label in LABELS:
            if line.startswith(label + " "):
                figures[label] = line[len(label):].strip()
    return done.returncode, figures, lines


def _assert_clean(code: int, figures: dict[str, str], lines: list[str]) -> None:
    output = "\n".join(lines)
    for label in ("daemon deaths", "finished nodes lost", "nodes unfinished", "errors missing",
                  "nodes timed out", "tasks submitted by jobs", "API errors",
                  "answers unaccounted", "internal errors", "leaks", "orphan processes",
                  "late writes", "files changed outside"):
        assert figures[label] == "0", output
    assert figures["victim task"] == "finished", output
    assert figures["tasks finished"] == "2/2", output
    assert figures["valid best submission"] == "yes", output
    peak, limit = (float(figures["peak daemon RSS"].split()[i]) for i in (0, 3))
    assert 0 < peak <= limit == RSS_LIMIT_MB, output
    assert code == 0 and "hostile: PASS" in lines, output


def _attack_lines(lines: list[str], name: str) -> list[str]:
    return [line for line in lines if line.startswith(f"attack {name} ")]


QUICK = "sparse-stderr,logs-to-secrets,read-secrets,api,huge-metrics,kill-parent,escapee"


def test_quick_attacks_on_a_real_disk_leak_nothing_and_lose_nothing() -> None:
    # No tmpfs: the file size limit is then large enough for a real 3 GiB sparse stderr.
    code, figures, lines = _run_hostile("--attacks", QUICK, "--faults", "none", "--steps", "14",
                                        "--victim-steps", "2", "--tmpfs-mb", "0",
                                        timeout_s=120)
    _assert_clean(code, figures, lines)
    output = "\n".join(lines)
    assert figures["faults"] == "none", output
    assert "stderr is 3221225472 bytes" in _attack_lines(lines, "sparse-stderr")[0], output
    assert "unreachable" in _attack_lines(lines, "api")[0], output
    for name in QUICK.split(","):
        assert all(" buggy: " in line for line in _attack_lines(lines, name)), output


def test_without_a_sandbox_a_job_reading_the_hidden_answers_is_caught_and_the_api_refuses_it(
) -> None:
    code, figures, lines = _run_hostile("--sandbox", "none", "--attacks", "read-secrets,api",
                                        "--faults", "none", "--steps", "4",
                                        "--victim-steps", "1", "--tmpfs-mb", "0",
                                        timeout_s=120)
    output = "\n".join(lines)
    assert code == 1 and "hostile: FAIL" in lines, output
    assert int(figures["leaks"]) >= 2, output
    assert "leak: the victim's hidden answers in the output tail of the attacker's node 1" \
        in lines, output
    (api,) = _attack_lines(lines, "api")
    assert "403 Forbidden" in api and "job_process" in api, output
    assert figures["victim task"] == "finished" and figures["tasks submitted by jobs"] == "0"


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_every_attack_and_every_fault_leak_nothing_kill_nothing_and_lose_nothing() -> None:
    code, figures, lines = _run_hostile(timeout_s=860)
    _assert_clean(code, figures, lines)
    output = "\n".join(lines)
    if any("no tmpfs" in line for line in lines):
        assert figures["faults"] == "stop pass, disk-full skipped, wal-loss pass, crash pass"
    else:
        assert figures["faults"] == "stop pass, disk-full pass, wal-loss pass, crash pass", \
            output
    assert any("process limit reached" in line for line in _attack_lines(lines, "fork-bomb"))
    assert all("must be a regular file" in line
               for line in _attack_lines(lines, "submission-link")), output
    for attack in ATTACKS:
        ran = _attack_lines(lines, attack.name)
        if attack.name == "huge-answer":
            # The stream is dropped long before the script at its end.
            assert ran == ["attack huge-answer     never ran"], output
        elif ran or attack.name != "disk-filler":
            # Every attack is judged: buggy, saying why, never failed by an error of the daemon.
            assert ran and all(" buggy: " in line for line in ran), (attack.name, output)


# The daemon bugs this run found (all fixed since), each attack with what it must come to.
FOUND = {
    # Unix sockets in place of the logs: the node's API answer was a 500.
    "socket-logs": "buggy",
    # A workspace made mode 000 (the daemon runs as the unit's own user would): a 500 too.
    "lockout": "buggy",
    # A 64 MiB answer was held and stored whole: the stream is now dropped long before its
    # script, which never runs.
    "huge-answer": "never ran",
    # A lone surrogate failed its node with a bare UnicodeEncodeError, the call unrecorded.
    "surrogate": "buggy",
    # Metrics no float (or int()) can hold failed their nodes with bare exceptions.
    "metric-overflow": "buggy",
    "metric-digits": "buggy",
}


def test_the_daemon_bugs_this_run_found_stay_fixed() -> None:
    code, figures, lines = _run_hostile("--attacks", ",".join(FOUND), "--faults", "none",
                                        "--steps", str(2 * len(FOUND)), "--victim-steps", "1",
                                        "--tmpfs-mb", "0", timeout_s=150)
    _assert_clean(code, figures, lines)
    output = "\n".join(lines)
    for name, outcome in FOUND.items():
        ran = _attack_lines(lines, name)
        if outcome == "never ran":
            assert ran == [f"attack {name:<16}never ran"], output
        else:
            assert ran and all(f" {outcome}: " in line for line in ran), (name, output)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_job_that_fills_the_disk_does_not_stall_the_daemon() -> None:
    code, figures, lines = _run_hostile("--attacks", "disk-filler", "--faults", "disk-full",
                                        "--victim-steps", "4", timeout_s=560)
    if any("no tmpfs" in line for line in lines):
        pytest.skip("no tmpfs can be mounted here")
    _assert_clean(code, figures, lines)
    assert figures["faults"] == "disk-full pass", "\n".join(lines)
