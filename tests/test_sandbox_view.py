"""What a sandboxed job sees: an allowlist (the system's programs and libraries, a few /etc
entries, its interpreter, its task's public data, its workspace), never the task's hidden
answers, another task, the daemon's state, a key file or the API's socket, and still enough
to run a real training script.

The tasks here lie under /var/tmp, not /tmp: the sandbox's /tmp is a fresh tmpfs, which would
hide anything under the host's /tmp whatever the sandbox's other rules said."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mlmaster_daemon.execution.runner import run_script
from mlmaster_daemon.execution.sandbox import (
    SANDBOX_ENV,
    bwrap_argv,
    interpreter_paths,
    resolve_sandbox,
    system_view,
)
from mlmaster_daemon.execution.workspace import Workspace

needs_bwrap = pytest.mark.skipif(resolve_sandbox("auto") != "bwrap",
                                 reason="bubblewrap missing or not working here")


def _task(root: Path, rows: int = 40) -> Path:
    """An MLE-bench style task: prepared/public with train/test/sample, prepared/private
    with the answers. Returns the public folder."""
    public, private = root / "prepared" / "public", root / "prepared" / "private"
    public.mkdir(parents=True)
    private.mkdir(parents=True)
    train = ["id,x1,x2,y"] + [f"{i},{i % 7},{(i * 3) % 11},{int(i % 7 > 3)}" for i in range(rows)]
    (public / "train.csv").write_text("\n".join(train) + "\n")
    (public / "test.csv").write_text("id,x1,x2\n100,1,2\n101,5,9\n")
    (public / "sample_submission.csv").write_text("id,y\n100,0\n101,0\n")
    (private / "test.csv").write_text("id,y\n100,SECRET-ANSWER\n101,SECRET-ANSWER\n")
    return public


async def _run(ws: Workspace, public: Path, hidden: list[Path]) -> tuple[int | None, str]:
    result = await run_script(ws, timeout_s=120, sandbox="bwrap", public_dir=public,
                              hidden_paths=hidden)
    return result.exit_code, ws.stdout.read_text() + ws.stderr.read_text()


@needs_bwrap
async def test_a_job_reads_neither_hidden_answers_nor_other_tasks_nor_the_daemons_secrets(
    var_tmp_path: Path,
) -> None:
    public = _task(var_tmp_path / "task-a")
    other = var_tmp_path / "task-b"
    _task(other)
    state = var_tmp_path / "state"
    (state / "tasks").mkdir(parents=True)
    (state / "mlmaster.db").write_text("state of every task")
    key = var_tmp_path / "keys" / "api.key"
    key.parent.mkdir()
    key.write_text("sk-secret")
    listener = socket.socket(socket.AF_UNIX)
    api = var_tmp_path / "run" / "api.sock"
    api.parent.mkdir()
    listener.bind(str(api))
    listener.listen()
    ws = Workspace.create(state / "tasks" / "t1" / "nodes" / "1", public, textwrap.dedent(f"""
        import json, os, socket
        seen = {{}}
        for path in {[str(var_tmp_path / "task-a" / "prepared" / "private" / "test.csv"),
                      "input/../private/test.csv",
                      str(other / "prepared" / "private" / "test.csv"),
                      str(other / "prepared" / "public" / "train.csv"),
                      "/etc/shadow", str(state / "mlmaster.db"), str(key)]!r}:
            try:
                seen[path] = open(path).read()
            except OSError as exc:
                seen[path] = type(exc).__name__
        client = socket.socket(socket.AF_UNIX)
        try:
            client.connect({str(api)!r})
            seen["socket"] = "connected"
        except OSError as exc:
            seen["socket"] = type(exc).__name__
        seen["/"] = sorted(os.listdir("/"))
        seen["/etc"] = sorted(os.listdir("/etc"))
        print(json.dumps(seen))
    """))
    try:
        code, out = await _run(ws, public, [state, key, api])
    finally:
        listener.close()
    assert code == 0, out
    seen = json.loads(ws.stdout.read_text())
    assert "SECRET" not in out and "sk-secret" not in out and "state of every" not in out
    listing, etc = seen.pop("/"), seen.pop("/etc")
    # Absent, or covered: a covered file is /dev/null on a nodev mount, which opens for nobody.
    refused = {"FileNotFoundError", "PermissionError", "ConnectionRefusedError"}
    assert set(seen.values()) <= refused, json.dumps(seen)
    # The system, the interpreter's environment and the way to the task and workspace.
    expected = {"usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32", "etc", "sys", "dev",
                "proc", "tmp", "var", *(p.resolve().parts[1] for p in interpreter_paths(
                    sys.executable))}
    assert set(listing) <= expected, listing
    assert "passwd" in etc and not {"shadow", "gshadow", "sudoers", "ssh"} & set(etc), etc


@needs_bwrap
async def test_a_realistic_training_script_still_runs_in_the_sandbox(var_tmp_path: Path) -> None:
    public = _task(var_tmp_path / "task")
    ws = Workspace.create(var_tmp_path / "state" / "nodes" / "1", public, textwrap.dedent("""
        import os
        import lightgbm as lgb
        import numpy as np
        import pandas as pd
        from sklearn.linear_model import LogisticRegression
        from sklearn.model_selection import cross_val_score

        train = pd.read_csv("input/train.csv")
        test = pd.read_csv("input/test.csv")
        X, y = train[["x1", "x2"]], train["y"]
        score = cross_val_score(LogisticRegression(), X, y, cv=3).mean()
        model = lgb.LGBMClassifier(n_estimators=5, min_child_samples=2, verbose=-1).fit(X, y)
        pred = model.predict(test[["x1", "x2"]])
        pd.DataFrame({"id": test["id"], "y": pred}).to_csv("submission/submission.csv",
                                                           index=False)
        open(os.path.expanduser("~/.cache-probe"), "w").write("home is writable")
        print("cv", round(float(np.float64(score)), 3), "home", os.environ["HOME"])
    """))
    code, out = await _run(ws, public, [var_tmp_path / "state"])
    assert code == 0, out
    assert "home /tmp" in ws.stdout.read_text()
    rows = ws.submission.read_text().splitlines()
    assert rows[0] == "id,y" and [r.split(",")[0] for r in rows[1:]] == ["100", "101"]


def _fake_root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    for path in ("usr/bin", "usr/lib", "lib64", "sys", "etc/ld.so.conf.d", "etc/ssh",
                 "etc/ssl/private", "etc/ssl/certs", "etc/python3.11", "home/alice"):
        (root / path).mkdir(parents=True)
    (root / "bin").symlink_to("usr/bin")
    (root / "lib").symlink_to("usr/lib")
    for name in ("passwd", "group", "ld.so.cache", "shadow", "gshadow", "sudoers", "hostname"):
        (root / "etc" / name).write_text(name)
    (root / "etc" / "localtime").symlink_to("/usr/share/zoneinfo/UTC")
    return root


def _pairs(args: list[str], flag: str) -> list[tuple[str, str]]:
    return [(args[i + 1], args[i + 2]) for i, arg in enumerate(args) if arg == flag]


def test_the_system_view_is_an_allowlist_with_merged_dirs_made_again_as_links(
    tmp_path: Path,
) -> None:
    root = _fake_root(tmp_path)
    args = system_view(root)
    assert ("usr/bin", "/bin") in _pairs(args, "--symlink")
    assert ("usr/lib", "/lib") in _pairs(args, "--symlink")
    assert ("/usr/share/zoneinfo/UTC", "/etc/localtime") in _pairs(args, "--symlink")
    bound = dict((dest, src) for src, dest in _pairs(args, "--ro-bind"))
    assert bound == {"/usr": str(root / "usr"), "/lib64": str(root / "lib64"),
                     "/etc/ld.so.conf.d": str(root / "etc" / "ld.so.conf.d"),
                     "/etc/ssl": str(root / "etc" / "ssl"),
                     "/etc/python3.11": str(root / "etc" / "python3.11"),
                     "/etc/passwd": str(root / "etc" / "passwd"),
                     "/etc/group": str(root / "etc" / "group"),
                     "/etc/ld.so.cache": str(root / "etc" / "ld.so.cache"),
                     "/sys": str(root / "sys")}
    # TLS keys inside an allowed entry are covered.
    assert args[args.index("/etc/ssl/private") - 1] == "--tmpfs"
    whole = bwrap_argv(tmp_path, root=root)
    assert ("/", "/") not in _pairs(whole, "--ro-bind")
    assert not [a for a in whole if "shadow" in a or "sudoers" in a or "alice" in a]
    assert whole[-5:-2] == ["--remount-ro", "/", "--chdir"]


def test_a_hidden_path_inside_the_public_folder_is_covered_after_the_folder_is_bound(
    tmp_path: Path,
) -> None:
    public = tmp_path / "public"
    public.mkdir()
    planted = public / "api.sock"
    planted.write_text("")
    ws = tmp_path / "ws"
    ws.mkdir()
    args = bwrap_argv(ws, public_dir=public, hidden=[planted])
    binds = [i for i, a in enumerate(args) if a == str(public)]
    covers = [i for i, a in enumerate(args) if a == str(planted) and args[i - 1] == "/dev/null"]
    assert covers and max(covers) > max(binds)


def test_a_readable_file_is_bound_read_only_at_its_own_path(tmp_path: Path) -> None:
    sample = tmp_path / "prepared" / "private" / "sample_submission.csv"
    sample.parent.mkdir(parents=True)
    sample.write_text("id,y\n")
    args = bwrap_argv(tmp_path / "ws", readable=[sample])
    assert (str(sample), str(sample)) in _pairs(args, "--ro-bind")
    assert (str(sample.parent), str(sample.parent)) not in _pairs(args, "--ro-bind")


@needs_bwrap
def test_a_readable_sample_beside_the_answers_is_all_a_job_sees_of_private(
    var_tmp_path: Path,
) -> None:
    # Some MLE-bench tasks keep their sample submission only in private/ (the task names it
    # ../private/<name> from the public folder).
    public = _task(var_tmp_path / "task")
    sample = public.parent / "private" / "sample_submission.csv"
    sample.write_text("id,y\n100,0\n")
    ws = Workspace.create(var_tmp_path / "ws", public, "")
    probe = textwrap.dedent("""
        import json
        seen = {}
        for name in ("sample_submission.csv", "test.csv"):
            try:
                seen[name] = open("input/../private/" + name).read()
            except OSError as exc:
                seen[name] = type(exc).__name__
        print(json.dumps(seen))
    """)
    argv = bwrap_argv(ws.root, public_dir=public, readable=[sample],
                      keep=interpreter_paths(sys.executable))
    done = subprocess.run([*argv, sys.executable, "-c", probe], capture_output=True,
                          text=True, check=True, timeout=60)
    assert json.loads(done.stdout) == {"sample_submission.csv": "id,y\n100,0\n",
                                       "test.csv": "FileNotFoundError"}


def test_the_interpreter_is_kept_but_not_the_project_and_home_is_tmp() -> None:
    keep = interpreter_paths(sys.executable)
    project = Path(__file__).resolve().parents[1]
    assert Path(sys.prefix) in keep
    assert project not in [p.resolve() for p in keep]
    assert SANDBOX_ENV["HOME"] == "/tmp"


def test_an_interpreter_reached_through_a_link_is_named_by_that_link(tmp_path: Path) -> None:
    real = tmp_path / "real-venv"
    (real / "bin").mkdir(parents=True)
    link = tmp_path / "venv"
    link.symlink_to(real)
    args = bwrap_argv(tmp_path / "ws", keep=[link])
    assert (str(real), str(real)) in _pairs(args, "--ro-bind")
    assert (str(real), str(link)) in _pairs(args, "--symlink")


@needs_bwrap
async def test_a_task_whose_sample_lies_beside_its_answers_still_runs_in_the_sandbox(
    var_tmp_path: Path, short_dir: Path, breast_cancer: Path,
) -> None:
    # Some MLE-bench competitions keep their sample submission only in private/; the daemon
    # names it ../private/<name> and the job must read it, but nothing else of private/.
    from conftest import daemon_config, wait_terminal

    from mlmaster_daemon.api.client import Client
    from mlmaster_daemon.daemon import Daemon

    task = var_tmp_path / "beside"
    shutil.copytree(breast_cancer, task)
    public, private = task / "prepared" / "public", task / "prepared" / "private"
    shutil.move(public / "sample_submission.csv", private / "sample_submission.csv")
    config = daemon_config(short_dir / "state", short_dir / "api.sock",
                           extra={"execution.sandbox": "bwrap"})
    daemon = Daemon(config)
    await daemon.start()
    try:
        async with Client(daemon.socket_path) as client:
            created = await client.submit({"task_dir": str(task), "steps": 1})
            final = await wait_terminal(client, created["id"])
            nodes = await client.nodes(created["id"])
    finally:
        await daemon.stop()
    assert final["state"] == "finished", nodes
    assert nodes[0]["status"] == "done", nodes[0]["error"]
