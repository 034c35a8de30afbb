"""A task folder may be broken or malicious, and a node's outputs huge: the daemon reads every
user file bounded, keeps large texts out of the task rows and listings, and answers the API
without reading a job's whole output. A real daemon on a real socket."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys
import textwrap
import tracemalloc
from pathlib import Path

import pytest
from conftest import wait_terminal

from mlmaster_daemon.api.client import ApiError, Client
from mlmaster_daemon.daemon import Daemon
from mlmaster_daemon.tasks.competition import MAX_DESCRIPTION_BYTES

MIB = 1024 * 1024


def _copy(breast_cancer: Path, target: Path) -> Path:
    shutil.copytree(breast_cancer, target)
    return target


def _sparse(path: Path, size: int) -> None:
    """A file of `size` zero bytes (no line break anywhere) that takes no disk."""
    with path.open("wb") as handle:
        handle.truncate(size)


async def test_a_2_gb_train_csv_without_a_line_break_is_refused_unread(
    daemon: Daemon, client: Client, breast_cancer: Path, tmp_path: Path,
) -> None:
    task = _copy(breast_cancer, tmp_path / "endless")
    train = task / "prepared" / "public" / "train.csv"
    _sparse(train, 2 * 1024**3)
    tracemalloc.start()
    try:
        with pytest.raises(ApiError) as refused:
            await client.submit({"task_dir": str(task)})
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert refused.value.status == 400 and refused.value.code == "invalid_task_dir"
    assert f"the first line of {train} is longer than" in refused.value.message
    assert peak < 32 * MIB
    assert (await client.health())["status"] == "ok"


async def test_a_50_mb_description_is_cut_and_kept_out_of_the_task_rows(
    daemon: Daemon, client: Client, breast_cancer: Path, tmp_path: Path,
) -> None:
    task = _copy(breast_cancer, tmp_path / "wordy")
    (task / "prepared" / "public" / "description.md").write_bytes(b"word " * (10 * MIB))
    created = await client.submit({"task_dir": str(task), "steps": 1})
    listing = await client.request("GET", "/v1/tasks")
    assert [t["id"] for t in listing["tasks"]] == [created["id"]] and listing["total"] == 1
    assert "word word" not in str(listing) and len(str(listing)) < 4096
    with sqlite3.connect(daemon.state_dir / "mlmaster.db") as db:
        row_size = db.execute("SELECT length(spec) FROM tasks").fetchone()[0]
        kept = db.execute("SELECT description FROM task_texts").fetchone()[0]
    assert row_size < 4096
    assert MAX_DESCRIPTION_BYTES < len(kept) < MAX_DESCRIPTION_BYTES + 200
    assert kept.endswith("the whole text is input/description.md]")
    # The search still sees the (cut) description.
    store = daemon.store
    assert store is not None
    assert (await store.get_task(created["id"])).spec.description == kept
    await wait_terminal(client, created["id"])


async def test_listing_shows_the_newest_tasks_up_to_the_limit(
    daemon: Daemon, client: Client, breast_cancer: Path,
) -> None:
    ids = [(await client.submit({"task_dir": str(breast_cancer), "steps": 1}))["id"]
           for _ in range(3)]
    listing = await client.request("GET", "/v1/tasks?limit=2")
    assert [t["id"] for t in listing["tasks"]] == ids[1:] and listing["total"] == 3
    with pytest.raises(ApiError) as refused:
        await client.request("GET", "/v1/tasks?limit=100000")
    assert refused.value.status == 400
    for task_id in ids:
        await wait_terminal(client, task_id)


async def test_a_node_with_a_200_mb_output_is_shown_by_its_head_and_tail(
    daemon: Daemon, client: Client, breast_cancer: Path,
) -> None:
    created = await client.submit({"task_dir": str(breast_cancer), "steps": 1})
    await wait_terminal(client, created["id"])
    node = (await client.nodes(created["id"]))[0]
    workspace = Path((await client.node(created["id"], node["id"]))["workspace"])
    with (workspace / "stdout.log").open("wb") as handle:
        handle.write(b"first line\n")
        handle.write(b"x" * (200 * MIB))
        handle.write(b"\nlast line\n")
    tracemalloc.start()
    try:
        shown = await client.node(created["id"], node["id"])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    limit = daemon.config.execution.output_tail_chars
    assert shown["output_tail"].startswith("--- stdout ---\nfirst line")
    assert shown["output_tail"].rstrip().endswith("last line")
    assert len(shown["output_tail"]) <= limit
    assert peak < 16 * MIB


def test_the_data_preview_reads_a_bounded_head_of_a_table_with_an_endless_line(
    breast_cancer: Path, tmp_path: Path,
) -> None:
    task = _copy(breast_cancer, tmp_path / "long-line")
    train = task / "prepared" / "public" / "train.csv"
    header = train.read_bytes().split(b"\n", 2)
    with train.open("wb") as handle:
        handle.write(header[0] + b"\n" + header[1] + b"\n")
        handle.write(b"7" * (300 * MIB))
    # pandas' parser allocates outside Python's allocator: measure the whole process.
    probe = textwrap.dedent(f"""
        import resource, sys
        from mlmaster_daemon.tasks.competition import load_task
        from mlmaster_daemon.tasks.preview import data_preview
        spec = load_task({str(task)!r})
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        preview = data_preview(spec)
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print("train.csv:" in preview, after - before)
    """)
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          check=True, timeout=120)
    shown, grown_kib = done.stdout.split()
    assert shown == "True"
    assert int(grown_kib) < 150 * 1024
