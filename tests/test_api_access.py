"""Who may use the socket, which folders a peer may submit, and who may cancel a task.

The cross-uid tests run a real client (curl) as another uid against a real daemon; that needs
root. The mode-bit rules are also checked directly on a real tree, with synthetic uids.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import shutil
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from conftest import daemon_config
from structlog.testing import capture_logs

from mlmaster_daemon.api.access import Peer, identify
from mlmaster_daemon.api.client import ApiError, Client
from mlmaster_daemon.api.folders import (
    READ,
    SEARCH,
    WRITE,
    Placement,
    Unreachable,
    check_public_folder,
    check_task_folder,
    permits,
    reach,
)
from mlmaster_daemon.daemon import Daemon
from mlmaster_daemon.errors import Forbidden, InvalidTaskDir

NOBODY = 65534
# A uid with no passwd entry; its groups are only its primary gid.
STRANGER = 65533
needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("curl") is None,
    reason="running a client as another uid needs root (and curl)")


# --- the mode-bit rules, on synthetic owners ---------------------------------------------------

@pytest.mark.parametrize(
    ("mode", "owner", "group", "uid", "groups", "want", "granted"),
    [
        (0o700, 10, 10, 10, frozenset({10}), READ | SEARCH, True),
        (0o700, 10, 10, 11, frozenset({10}), READ, False),
        (0o750, 10, 20, 11, frozenset({20}), READ | SEARCH, True),
        (0o740, 10, 20, 11, frozenset({20}), READ | SEARCH, False),
        (0o705, 10, 20, 11, frozenset({30}), READ | SEARCH, True),
        # The owner class decides for the owner, even when others are granted more.
        (0o077, 10, 20, 10, frozenset({20}), READ, False),
        # The group class decides for a member, even when others are granted more.
        (0o704, 10, 20, 11, frozenset({20}), READ, False),
        (0o644, 10, 20, 11, frozenset(), READ | WRITE, False),
        (0o000, 10, 20, 0, frozenset({0}), READ | WRITE | SEARCH, True),
    ],
)
def test_permits_follows_the_kernels_owner_group_other_rule(
    mode: int, owner: int, group: int, uid: int, groups: frozenset[int], want: int,
    granted: bool,
) -> None:
    assert permits(mode, owner, group, uid, groups, want) is granted


@pytest.fixture
def open_dir(short_dir: Path) -> Path:
    """A fresh directory that every user may search, its parents too."""
    short_dir.chmod(0o755)
    return short_dir


def _other_uid() -> int:
    """A uid that owns nothing in the test's tree and is not root."""
    return 4_000_000 + os.getuid()


def test_reach_names_the_first_directory_the_user_may_not_search(open_dir: Path) -> None:
    closed = open_dir / "closed"
    (closed / "inner").mkdir(parents=True)
    closed.chmod(0o700)
    with pytest.raises(Unreachable) as err:
        reach(closed / "inner", _other_uid(), frozenset())
    assert err.value.path == closed
    closed.chmod(0o711)
    assert reach(closed / "inner", _other_uid(), frozenset()) == closed / "inner"


def test_reach_grants_search_through_the_directorys_group(open_dir: Path) -> None:
    shared = open_dir / "shared"
    (shared / "inner").mkdir(parents=True)
    shared.chmod(0o750)
    group = shared.stat().st_gid
    assert reach(shared / "inner", _other_uid(), frozenset({group})) == shared / "inner"
    with pytest.raises(Unreachable):
        reach(shared / "inner", _other_uid(), frozenset())


def test_reach_checks_the_directories_a_symlink_leads_through(open_dir: Path) -> None:
    closed = open_dir / "closed"
    (closed / "data").mkdir(parents=True)
    closed.chmod(0o700)
    (open_dir / "open").mkdir()
    (open_dir / "open" / "link").symlink_to(closed / "data")
    with pytest.raises(Unreachable) as err:
        reach(open_dir / "open" / "link", _other_uid(), frozenset())
    assert err.value.path == closed


def test_reach_resolves_dotdot_and_relative_links_like_the_kernel(open_dir: Path) -> None:
    (open_dir / "a" / "b").mkdir(parents=True)
    (open_dir / "a" / "up").symlink_to("b/..")
    got = reach(open_dir / "a" / "up" / "b" / ".." / "b", _other_uid(), frozenset())
    assert got == (open_dir / "a" / "b").resolve()


def test_reach_reports_missing_parts_and_loops(open_dir: Path) -> None:
    with pytest.raises(FileNotFoundError):
        reach(open_dir / "nope" / "x", _other_uid(), frozenset())
    (open_dir / "file").write_text("x")
    with pytest.raises(NotADirectoryError):
        reach(open_dir / "file" / "x", _other_uid(), frozenset())
    (open_dir / "loop").symlink_to(open_dir / "loop")
    with pytest.raises(OSError) as err:
        reach(open_dir / "loop", _other_uid(), frozenset())
    assert err.value.errno == errno.ELOOP


def test_reach_never_follows_procs_links_for_a_user() -> None:
    # /proc/1/cwd is guarded by ptrace rules the mode bits do not show.
    with pytest.raises(Unreachable) as err:
        reach(Path("/proc/1/cwd"), _other_uid(), frozenset())
    assert err.value.path == Path("/proc/1/cwd")


def _open_copy(src: Path, dst: Path) -> Path:
    """A copy of the competition at `src` that every user may read."""
    shutil.copytree(src, dst)
    for path in [dst, *dst.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    for parent in dst.parents:
        if parent == Path(parent.anchor):
            break
        if parent.stat().st_uid == os.getuid():
            parent.chmod(parent.stat().st_mode | 0o005)
    return dst


def _stranger() -> Peer:
    uid = _other_uid()
    return Peer(pid=1, uid=uid, gid=uid, groups=frozenset({uid}), name=str(uid))


def test_a_file_load_task_would_read_is_checked_before_it_is_read(
    breast_cancer: Path, short_dir: Path
) -> None:
    task = _open_copy(breast_cancer, short_dir / "task")
    placement = Placement(roots=(Path("/"),), state_dir=short_dir / "state")
    check_task_folder(task, _stranger(), placement)
    train = task / "prepared" / "public" / "train.csv"
    train.chmod(0o600)
    with pytest.raises(Forbidden) as err:
        check_task_folder(task, _stranger(), placement)
    assert str(train) in err.value.message
    train.chmod(0o644)
    answers = task / "prepared" / "private"
    answers.chmod(0o700)
    with pytest.raises(Forbidden) as err:
        check_task_folder(task, _stranger(), placement)
    assert str(answers) in err.value.message


def test_the_public_folder_walk_is_bounded_in_entries_and_depth(open_dir: Path) -> None:
    public = open_dir / "public"
    (public / "a" / "b" / "c").mkdir(parents=True)
    for i in range(5):
        (public / f"f{i}.csv").write_text("x\n")
    # A link back up is walked once, not forever.
    (public / "a" / "up").symlink_to(public)
    placement = Placement(roots=(Path("/"),), state_dir=open_dir / "state")
    check_public_folder(public, _stranger(), placement)
    with pytest.raises(InvalidTaskDir, match="more than 6 files and folders"):
        check_public_folder(public, _stranger(), placement, max_entries=6)
    with pytest.raises(InvalidTaskDir, match=r"a/b/c nests more than 2 folders deep"):
        check_public_folder(public, _stranger(), placement, max_depth=2)


def test_placement_refuses_outside_the_roots_and_inside_the_state_dir(tmp_path: Path) -> None:
    inside, outside, state = tmp_path / "ok", tmp_path / "elsewhere", tmp_path / "ok" / "state"
    for path in (inside, outside, state):
        path.mkdir(exist_ok=True)
    placement = Placement(roots=(inside,), state_dir=state)
    placement.check(inside / "task", inside / "task")
    with pytest.raises(Forbidden, match="allowed_roots"):
        placement.check(outside / "task", outside / "task")
    with pytest.raises(Forbidden, match="state directory"):
        placement.check(state / "tasks", state / "tasks")


def test_a_root_peer_is_not_held_to_mode_bits_but_is_to_the_placement(
    breast_cancer: Path, short_dir: Path
) -> None:
    task = _open_copy(breast_cancer, short_dir / "task")
    task.chmod(0o000)
    root = Peer(pid=1, uid=0, gid=0, groups=frozenset({0}), name="root")
    check_task_folder(task, root, Placement(roots=(Path("/"),), state_dir=short_dir / "state"))
    with pytest.raises(Forbidden):
        check_task_folder(task, root, Placement(roots=(short_dir / "other",),
                                                state_dir=short_dir / "state"))
    task.chmod(0o755)


def test_identify_finds_the_users_name_and_groups() -> None:
    me = identify(123, os.getuid(), os.getgid())
    assert me.pid == 123
    assert os.getgid() in me.groups
    assert me.name != str(os.getuid())
    nameless = identify(1, STRANGER, 4242)
    assert (nameless.name, nameless.groups) == (str(STRANGER), frozenset({4242}))


# --- a real daemon, as root and as other uids ---------------------------------------------------

@asynccontextmanager
async def running(short_dir: Path, **daemon_keys: Any) -> AsyncIterator[Daemon]:
    """A daemon on `short_dir` with [daemon] `daemon_keys`, its socket open to every uid (the
    check under test is the daemon's own, not the socket's mode)."""
    config = daemon_config(short_dir / "state", short_dir / "api.sock",
                           extra={f"daemon.{k}": v for k, v in daemon_keys.items()})
    daemon = Daemon(config)
    await daemon.start()
    short_dir.chmod(0o755)
    daemon.socket_path.chmod(0o666)
    try:
        yield daemon
    finally:
        await daemon.stop()


async def call_as(uid: int, gid: int, daemon: Daemon, method: str, path: str,
                  body: dict[str, Any] | None = None) -> tuple[int, dict[str, Any]]:
    """(status, JSON body) of one request made by curl running as `uid`:`gid`."""
    argv = ["curl", "-sS", "--unix-socket", str(daemon.socket_path), "-X", method,
            "-w", "\n%{http_code}", f"http://localhost{path}"]
    if body is not None:
        argv += ["-H", "Content-Type: application/json", "--data-binary", json.dumps(body)]
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        user=uid, group=gid, extra_groups=[])
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    text, _, status = out.decode().rpartition("\n")
    return int(status), json.loads(text)


@needs_root
async def test_a_peer_not_allowed_gets_403_and_a_log_line(short_dir: Path) -> None:
    async with running(short_dir) as daemon:
        with capture_logs() as logs:
            status, body = await call_as(NOBODY, NOBODY, daemon, "GET", "/v1/health")
        assert status == 403
        assert body["error"]["code"] == "forbidden"
        assert "nobody" in body["error"]["message"]
        assert "mlmaster" in body["error"]["message"]
        assert "allowed_uids" in body["error"]["message"]
        refused = [e for e in logs if e["event"] == "peer refused"]
        assert refused and refused[0]["uid"] == NOBODY and refused[0]["log_level"] == "warning"
        assert refused[0]["pid"] > 0
        async with Client(daemon.socket_path) as client:
            assert (await client.health())["status"] == "ok"


@needs_root
async def test_a_listed_uid_is_let_in(short_dir: Path) -> None:
    async with running(short_dir, allowed_uids=[NOBODY]) as daemon:
        status, body = await call_as(NOBODY, NOBODY, daemon, "GET", "/v1/health")
        assert (status, body["status"]) == (200, "ok")
        status, _ = await call_as(STRANGER, STRANGER, daemon, "GET", "/v1/health")
        assert status == 403


@needs_root
async def test_a_member_of_an_allowed_group_is_let_in(short_dir: Path) -> None:
    async with running(short_dir, allowed_groups=["no-such-group", "nogroup"]) as daemon:
        status, _ = await call_as(NOBODY, NOBODY, daemon, "GET", "/v1/health")
        assert status == 200
        # No passwd entry: the primary gid alone makes it a member.
        status, _ = await call_as(STRANGER, NOBODY, daemon, "GET", "/v1/tasks")
        assert status == 200
        status, body = await call_as(STRANGER, STRANGER, daemon, "GET", "/v1/health")
        assert status == 403
        assert "group 'nogroup'" in body["error"]["message"]  # the one that exists


async def test_a_folder_outside_the_allowed_roots_is_403(
    short_dir: Path, breast_cancer: Path
) -> None:
    allowed = short_dir / "allowed"
    allowed.mkdir()
    (allowed / "sneaky").symlink_to(breast_cancer)
    async with running(short_dir, allowed_roots=[str(allowed)]) as daemon, \
            Client(daemon.socket_path) as client:
        for path in (breast_cancer, allowed / "sneaky"):
            with pytest.raises(ApiError) as err:
                await client.submit({"task_dir": str(path), "steps": 1})
            assert (err.value.status, err.value.code) == (403, "forbidden")
            assert str(allowed) in err.value.message
        inside = _open_copy(breast_cancer, allowed / "task")
        task = await client.submit({"task_dir": str(inside), "steps": 1})
        await client.cancel(task["id"])


async def test_a_folder_inside_the_state_dir_is_refused(
    short_dir: Path, breast_cancer: Path
) -> None:
    async with running(short_dir) as daemon, Client(daemon.socket_path) as client:
        planted = _open_copy(breast_cancer, daemon.state_dir / "planted")
        with pytest.raises(ApiError) as err:
            await client.submit({"task_dir": str(planted), "steps": 1})
        assert err.value.status == 403
        assert "state directory" in err.value.message


@needs_root
async def test_a_folder_the_peer_cannot_read_is_403_naming_it(
    short_dir: Path, breast_cancer: Path
) -> None:
    task = _open_copy(breast_cancer, short_dir / "task")
    async with running(short_dir, allowed_uids=[NOBODY]) as daemon:
        task.chmod(0o700)
        status, body = await call_as(NOBODY, NOBODY, daemon, "POST", "/v1/tasks",
                                     {"task_dir": str(task), "steps": 1})
        assert (status, body["error"]["code"]) == (403, "forbidden")
        assert f"cannot read {task}" in body["error"]["message"]
        task.chmod(0o755)
        sample = task / "prepared" / "public" / "sample_submission.csv"
        sample.chmod(0o600)
        status, body = await call_as(NOBODY, NOBODY, daemon, "POST", "/v1/tasks",
                                     {"task_dir": str(task), "steps": 1})
        assert status == 403
        assert str(sample) in body["error"]["message"]
        async with Client(daemon.socket_path) as client:
            assert await client.tasks() == []


@needs_root
async def test_a_public_link_to_what_the_submitter_cannot_read_is_403_naming_it(
    short_dir: Path, breast_cancer: Path
) -> None:
    task = _open_copy(breast_cancer, short_dir / "task")
    public = task / "prepared" / "public"
    theirs = short_dir / "theirs"
    theirs.mkdir()
    (theirs / "notes.csv").write_text("a\n")
    (theirs / "secret.csv").write_text("b\n")
    (theirs / "secret.csv").chmod(0o600)
    planted = {public / "extra.csv": Path("/etc/shadow"), public / "more": theirs}
    async with running(short_dir, allowed_uids=[NOBODY]) as daemon:
        for link, target in planted.items():
            link.symlink_to(target)
            status, body = await call_as(NOBODY, NOBODY, daemon, "POST", "/v1/tasks",
                                         {"task_dir": str(task), "steps": 1})
            assert (status, body["error"]["code"]) == (403, "forbidden")
            shown = link if target.is_file() else link / "secret.csv"
            assert f"cannot read {shown} (that is, " in body["error"]["message"]
            link.unlink()
        async with Client(daemon.socket_path) as client:
            assert await client.tasks() == []


@needs_root
async def test_a_public_folder_whose_links_the_submitter_can_read_is_accepted(
    short_dir: Path, breast_cancer: Path
) -> None:
    task = _open_copy(breast_cancer, short_dir / "task")
    public = task / "prepared" / "public"
    shared = short_dir / "shared"
    (shared / "images").mkdir(parents=True)
    (shared / "images" / "0.png").write_bytes(b"png")
    (public / "images").symlink_to(shared / "images")
    (public / "train_copy.csv").symlink_to("train.csv")
    (public / "gone.csv").symlink_to(short_dir / "not-there-yet.csv")
    async with running(short_dir, allowed_uids=[NOBODY]) as daemon, \
            Client(daemon.socket_path) as client:
        status, task_view = await call_as(NOBODY, NOBODY, daemon, "POST", "/v1/tasks",
                                          {"task_dir": str(task), "steps": 1})
        assert status == 201, task_view
        await _cancel_quietly(client, task_view["id"])


async def test_a_public_folder_showing_the_state_dir_or_a_fifo_is_refused(
    short_dir: Path, breast_cancer: Path
) -> None:
    task = _open_copy(breast_cancer, short_dir / "task")
    public = task / "prepared" / "public"
    async with running(short_dir) as daemon, Client(daemon.socket_path) as client:
        (public / "db").symlink_to(daemon.state_dir / "mlmaster.db")
        os.mkfifo(public / "pipe")
        for planted, why in ((public / "db", "state directory"),
                             (public / "pipe", "not a regular file or folder")):
            with pytest.raises(ApiError) as err:
                await client.submit({"task_dir": str(task), "steps": 1})
            assert (err.value.status, err.value.code) == (403, "forbidden")
            assert str(planted) in err.value.message and why in err.value.message
            planted.unlink()
        assert await client.tasks() == []


async def test_hidden_answers_inside_the_public_folder_are_refused(
    short_dir: Path, breast_cancer: Path
) -> None:
    # A flat task folder (train.csv at its top) is its own public folder: its
    # prepared/private would be in a job's input/.
    flat = short_dir / "flat"
    shutil.copytree(breast_cancer / "prepared" / "public", flat)
    shutil.copy(breast_cancer / "task.toml", flat)
    shutil.copytree(breast_cancer / "prepared" / "private", flat / "prepared" / "private")
    async with running(short_dir) as daemon, Client(daemon.socket_path) as client:
        with pytest.raises(ApiError) as err:
            await client.submit({"task_dir": str(flat), "steps": 1})
        assert (err.value.status, err.value.code) == (403, "forbidden")
        assert f"{flat / 'prepared' / 'private'} is the task's hidden answers folder" in \
            err.value.message
        shutil.rmtree(flat / "prepared")
        task = await client.submit({"task_dir": str(flat), "steps": 1})
        await _cancel_quietly(client, task["id"])


@needs_root
async def test_the_submitter_is_recorded(short_dir: Path, breast_cancer: Path) -> None:
    task_dir = _open_copy(breast_cancer, short_dir / "task")
    async with running(short_dir, allowed_uids=[NOBODY]) as daemon, \
            Client(daemon.socket_path) as client:
        status, theirs = await call_as(NOBODY, NOBODY, daemon, "POST", "/v1/tasks",
                                       {"task_dir": str(task_dir), "steps": 1})
        assert status == 201
        assert (theirs["submitter"], theirs["submitter_uid"]) == ("nobody", NOBODY)
        mine = await client.submit({"task_dir": str(task_dir), "steps": 1})
        assert (mine["submitter"], mine["submitter_uid"]) == ("root", 0)
        listed = {t["id"]: t["submitter"] for t in await client.tasks()}
        assert listed == {theirs["id"]: "nobody", mine["id"]: "root"}
        for task in (theirs, mine):
            await _cancel_quietly(client, task["id"])


async def searching(daemon: Daemon, task_id: str) -> None:
    """Wait until the task's search has made a node: a cancel sent earlier, while the runner
    still sets up, is lost (a scheduler race this file does not test)."""
    async with Client(daemon.socket_path) as client, asyncio.timeout(60):
        while not await client.nodes(task_id):
            await asyncio.sleep(0.05)


async def _cancel_quietly(client: Client, task_id: str) -> None:
    try:
        await client.cancel(task_id)
    except ApiError as exc:
        assert exc.status == 409  # it finished first


@needs_root
async def test_only_the_submitter_may_cancel_among_plain_users(
    short_dir: Path, breast_cancer: Path
) -> None:
    task_dir = _open_copy(breast_cancer, short_dir / "task")
    async with running(short_dir, allowed_uids=[NOBODY, STRANGER]) as daemon:
        status, task = await call_as(NOBODY, NOBODY, daemon, "POST", "/v1/tasks",
                                     {"task_dir": str(task_dir), "steps": 50})
        assert status == 201
        await searching(daemon, task["id"])
        cancel = f"/v1/tasks/{task['id']}/cancel"
        status, body = await call_as(STRANGER, STRANGER, daemon, "POST", cancel)
        assert (status, body["error"]["code"]) == (403, "forbidden")
        assert "submitted by nobody (uid 65534)" in body["error"]["message"]
        assert "admin_groups" in body["error"]["message"]
        status, body = await call_as(NOBODY, NOBODY, daemon, "POST", cancel)
        assert (status, body["state"]) == (200, "cancelled")


@needs_root
async def test_a_member_of_an_admin_group_may_cancel_anybodys_task(
    short_dir: Path, breast_cancer: Path
) -> None:
    task_dir = _open_copy(breast_cancer, short_dir / "task")
    async with running(short_dir, allowed_uids=[STRANGER], admin_groups=["nogroup"]) as daemon, \
            Client(daemon.socket_path) as client:
        task = await client.submit({"task_dir": str(task_dir), "steps": 50})
        await searching(daemon, task["id"])
        status, body = await call_as(STRANGER, STRANGER, daemon, "POST",
                                     f"/v1/tasks/{task['id']}/cancel")
        assert status == 403
        status, body = await call_as(STRANGER, NOBODY, daemon, "POST",
                                     f"/v1/tasks/{task['id']}/cancel")
        assert (status, body["state"]) == (200, "cancelled")


@needs_root
async def test_a_task_from_before_submitters_were_recorded_may_be_cancelled_by_anyone(
    short_dir: Path, breast_cancer: Path
) -> None:
    async with running(short_dir) as daemon, Client(daemon.socket_path) as client:
        task = await client.submit({"task_dir": str(breast_cancer), "steps": 50})
    # As a task stored by a daemon that did not record submitters.
    with sqlite3.connect(short_dir / "state" / "mlmaster.db") as db:
        db.execute("UPDATE tasks SET submitter_uid = NULL, submitter = NULL WHERE id = ?",
                   (task["id"],))
    async with running(short_dir, allowed_uids=[STRANGER]) as daemon:
        await searching(daemon, task["id"])
        status, body = await call_as(STRANGER, STRANGER, daemon, "POST",
                                     f"/v1/tasks/{task['id']}/cancel")
        assert (status, body["state"], body["submitter_uid"]) == (200, "cancelled", None)
