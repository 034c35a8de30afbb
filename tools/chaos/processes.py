"""The processes of a state dir: which are alive that the current daemon did not start."""

from __future__ import annotations

import os
from collections.abc import Collection, Iterable
from pathlib import Path

import psutil


def stray_processes(state_dir: Path, task_ids: Iterable[str], daemon_pid: int | None,
                    live_nodes: Collection[str] = ()) -> list[str]:
    """Live processes of this state dir that the daemon `daemon_pid` did not start: cwd or
    command line under `state_dir`, or a job cgroup of one of `task_ids`, and not the daemon
    or one of its descendants (None: any such process is a stray). Zombies are dead and not
    counted. `live_nodes` ("tasks/<task>/nodes/<n>"): workspaces of unfinished nodes whose
    scripts run elsewhere than under the daemon (a Ray cluster's), not strays in them."""
    root = str(state_dir.resolve())
    tasks = tuple(task_ids)
    mine = {os.getpid(), *(p.pid for p in psutil.Process().parents())}
    strays = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        if proc.pid in mine or proc.pid == daemon_pid:
            continue
        try:
            if proc.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            cmdline, cwd = " ".join(proc.info["cmdline"] or []), process_cwd(proc)
            if not (root in cmdline or cwd.startswith(root)
                    or any(t in _cgroup(proc.pid) for t in tasks)):
                continue
            if daemon_pid is not None and daemon_pid in (p.pid for p in proc.parents()):
                continue
            if cwd.removeprefix(root + "/") in live_nodes:
                continue
            strays.append(f"pid {proc.pid} in {cwd.removeprefix(root + '/') or '?'} "
                          f"({cmdline[:60]})")
        except psutil.Error:
            continue
    return strays


def process_cwd(proc: psutil.Process) -> str:
    """The process's working directory; "" when it is gone or not ours to read."""
    try:
        return proc.cwd()
    except psutil.Error:
        return ""


def _cgroup(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cgroup").read_text()
    except OSError:
        return ""
