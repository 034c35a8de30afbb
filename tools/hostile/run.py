"""`HostileRun`: one hostile run, tying the pieces together. It builds two example
competitions with a unique marker in their hidden answers, writes an API key to a key file,
mounts a small tmpfs for the daemon's state dir where it can, starts `InjectedModel` and runs
`mlmaster daemon` as a subprocess on it; submits the victim and then the attacker task, runs
the faults, waits for the tasks to end, stops the daemon with SIGTERM and fills in
`HostileReport` from what it saw."""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import shutil
import subprocess
import time
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mlmaster_daemon.api.client import ApiError, Client
from mlmaster_daemon.coders.offline.recipe import safe_baseline
from mlmaster_daemon.coders.offline.render import render
from mlmaster_daemon.errors import DaemonUnreachable
from mlmaster_daemon.tasks.competition import load_task
from mlmaster_daemon.tasks.examples import build_example
from tools.chaos import (
    FINISHED,
    TERMINAL_TASK,
    ChaosSettings,
    DaemonProcess,
    NodeKey,
    NodeRow,
    check_best,
    check_submission,
    read_tasks,
    stray_processes,
)
from tools.hostile.attacks import ATTACKS, ATTACKS_BY_NAME, Attack, Targets
from tools.hostile.checks import (
    changed_files,
    file_digests,
    late_writes,
    logged_exceptions,
    unaccounted_answers,
)
from tools.hostile.faults import Faults, says_disk_full
from tools.hostile.leaks import find_leaks, plant_marker
from tools.hostile.model import ATTACKER, VICTIM, InjectedModel, plan_attack
from tools.hostile.report import AttackOutcome, HostileReport
from tools.hostile.settings import FAULTS, MIB, STUCK_S, HostileSettings
from tools.hostile.watched import WatchedDaemon, drop_file_override


def say(line: str) -> None:
    """Print a line of the run's progress at once."""
    print(line, flush=True)


class HostileRun:
    """One hostile run: the model server, the daemon, the tasks, the faults, what was seen."""

    def __init__(self, settings: HostileSettings, workdir: Path) -> None:
        self.settings = settings
        self.workdir = workdir
        self.state_dir = workdir / "state"
        self.db = self.state_dir / "mlmaster.db"
        self.key_file = workdir / "keys" / "api_key"
        self.key = "sk-hostile-" + secrets.token_hex(16)
        self.competitions = {"attacker": workdir / "attacker", "victim": workdir / "victim"}
        self.markers = {role: f"HIDDEN-ANSWERS-{role}-{secrets.token_hex(12)}"
                        for role in self.competitions}
        self.task_ids: dict[str, str] = {}
        self.report = HostileReport(rss_limit_mb=settings.rss_limit_mb)
        self.report.attacks = {name: AttackOutcome() for name in settings.attacks}
        self.daemon = WatchedDaemon(DaemonProcess(
            ChaosSettings(parallel=settings.parallel, sandbox=settings.sandbox),
            self.state_dir, workdir / "d.sock", workdir / "daemon.log"),
            self.task_ids, self.report)
        self.mounted = False
        self.working = ""
        self.api_answers: list[tuple[str, str]] = []
        self.output_tails: list[tuple[str, str]] = []
        self.outside: dict[str, str] = {}
        self.said: dict[NodeKey, str] = {}
        self.recorded: dict[str, int] = {}  # role -> model calls the daemon records

    async def run(self) -> HostileReport:
        started = time.monotonic()
        self._prepare()
        model = InjectedModel(self.working)
        await model.start()
        self._configure(model)
        try:
            async with Client(self.daemon.process.socket) as client:
                try:
                    self.daemon.process.spawn()
                    await self.daemon.ready(client, "start")
                    guard = asyncio.create_task(self.daemon.guard(client))
                    try:
                        try:
                            await self._submit(client, model)
                            await self._faults(client)
                            await self._finish(client)
                        finally:
                            with contextlib.suppress(DaemonUnreachable):
                                await self._inspect(client)
                    finally:
                        guard.cancel()
                        with contextlib.suppress(asyncio.CancelledError):
                            await guard
                except RuntimeError as exc:
                    self.report.problems.append(str(exc))
                finally:
                    self._stop()
        finally:
            await model.stop()
        self._scan(model)
        for role, name in (("attacker", ATTACKER), ("victim", VICTIM)):
            if role in self.recorded:
                why = unaccounted_answers(model.answers, name, self.recorded[role],
                                          self.daemon.windows)
                if why is not None:
                    self.report.unaccounted.append(why)
        self.report.wall_s = time.monotonic() - started
        return self.report

    def _prepare(self) -> None:
        self.state_dir.mkdir(parents=True)
        if self.settings.tmpfs_mb > 0:
            done = subprocess.run(["mount", "-t", "tmpfs", "-o",
                                   f"size={self.settings.tmpfs_mb}m,mode=0700", "tmpfs",
                                   str(self.state_dir)], capture_output=True, check=False)
            self.mounted = done.returncode == 0
            why = done.stderr.decode().strip() or "mount failed"
            if not self.mounted:
                self.report.notes.append(
                    f"no tmpfs for the state dir ({why}): the disk-full fault and the disk "
                    "filler are left out")
        else:
            self.report.notes.append("no tmpfs asked for: the disk-full fault and the disk "
                                     "filler are left out")
        for role, folder in self.competitions.items():
            build_example("breast_cancer", folder)
            plant_marker(folder, self.markers[role])
        self.key_file.parent.mkdir(mode=0o700)
        self.key_file.write_text(self.key + "\n")
        self.key_file.chmod(0o600)
        self.working = render(safe_baseline(7), load_task(self.competitions["victim"]))
        self.outside = file_digests([self.key_file, *self.competitions.values()])
        if self.settings.drop_dac:
            kept = drop_file_override()
            if kept is not None:
                self.report.notes.append(f"the daemon keeps root's file override ({kept})")
        else:
            self.report.notes.append("the daemon runs with root's file override: a job cannot "
                                     "lock it out of its files, as it could a daemon run by "
                                     "an ordinary user")

    def _configure(self, model: InjectedModel) -> None:
        self.daemon.process.env.update({
            "MLMASTER_LLM__CODE__BASE_URL": model.base_url,
            "MLMASTER_LLM__CODE__MODEL": "injected",
            "MLMASTER_LLM__CODE__API_KEY_FILE": str(self.key_file),
            "MLMASTER_LLM__CODE__MAX_RETRIES": "2",
            "MLMASTER_LLM__CODE__BACKOFF_S": "0.2",
            "MLMASTER_LLM__CODE__TIMEOUT_S": "60",
            "MLMASTER_EXECUTION__NODE_TIMEOUT_S": str(self.settings.node_timeout_s),
            "MLMASTER_EXECUTION__KILL_GRACE_S": "1",
            "MLMASTER_DAEMON__FAULT_RETRY_S": "0.5",
            "MLMASTER_DAEMON__FAULT_RETRY_MAX_S": "2",
            "MLMASTER_DAEMON__STOP_GRACE_S": "0",
        })

    async def _submit(self, client: Client, model: InjectedModel) -> None:
        settings = self.settings
        victim = await client.submit({
            "task_dir": str(self.competitions["victim"]), "steps": settings.victim_steps,
            "name": VICTIM, "node_timeout_s": settings.node_timeout_s})
        self.task_ids["victim"] = victim["id"]
        targets = Targets(
            socket=str(self.daemon.process.socket), key_file=str(self.key_file),
            state_dir=str(self.state_dir), database=str(self.db),
            own_task_dir=str(self.competitions["attacker"]),
            victim_task_dir=str(self.competitions["victim"]), victim_id=victim["id"],
            fill_cap_bytes=(settings.tmpfs_mb + 64) * MIB)
        scripts: list[tuple[str, str]] = []
        for name in settings.attacks:
            attack: Attack = ATTACKS_BY_NAME[name]
            if attack.needs_small_disk and not self.mounted:
                self.report.attacks.pop(name, None)
                continue
            scripts += [(name, attack.script(targets)), ("working", self.working)]
        model.attacker_scripts = scripts
        model.padding_mb = {a.name: a.answer_mb for a in ATTACKS if a.answer_mb}
        attacker = await client.submit({
            "task_dir": str(self.competitions["attacker"]), "steps": settings.attacker_steps,
            "name": ATTACKER, "node_timeout_s": settings.node_timeout_s})
        self.task_ids["attacker"] = attacker["id"]
        say(f"submitted the victim {victim['id']} ({settings.victim_steps} steps) and the "
            f"attacker {attacker['id']} ({settings.attacker_steps} steps, "
            f"{len(scripts) // 2} attacks)")

    async def _faults(self, client: Client) -> None:
        faults = Faults(self.daemon, self.report, self.workdir, self.settings.node_timeout_s,
                        self.mounted)
        for name in FAULTS:
            if name not in self.settings.faults:
                continue
            say(f"fault {name}: waiting for its moment")
            result = await faults.run(name, client)
            self.report.faults[name] = f"{result.status}: {result.detail}"
            if result.status in ("fail", "not exercised"):
                self.report.fault_failures.append(f"{name}: {result.detail}")
            say(f"fault {name}: {result.status}: {result.detail}")

    async def _finish(self, client: Client) -> None:
        """Wait for both tasks to end; a task paused on a full disk for `STUCK_S` (the run's
        own ballast is long gone by then) will not come back by itself: fail at once."""
        deadline = time.monotonic() + self.settings.finish_timeout_s
        paused_since: float | None = None
        while True:
            tasks = await asyncio.to_thread(read_tasks, self.db, self.task_ids.values())
            if all(t["state"] in TERMINAL_TASK for t in tasks.values()):
                return
            if time.monotonic() > deadline:
                states = ", ".join(f"{t['id']} {t['state']} ({t['error']})"
                                   for t in tasks.values())
                raise RuntimeError(f"the tasks did not end within "
                                   f"{self.settings.finish_timeout_s:.0f} s: {states}")
            paused = None
            with contextlib.suppress(DaemonUnreachable):
                paused = await self.daemon.task_paused(client)
            if paused is None or not says_disk_full(paused[1]):
                paused_since = None
            elif paused_since is None:
                paused_since = time.monotonic()
            elif time.monotonic() - paused_since > STUCK_S:
                raise RuntimeError(
                    f"the {paused[0]} has been paused {STUCK_S:.0f} s on a full disk that no "
                    f"fault of the run fills ({paused[1]}); what fills it: "
                    f"{await asyncio.to_thread(self._what_fills)}")
            await asyncio.sleep(0.5)

    def _what_fills(self, count: int = 3) -> str:
        """The biggest node workspaces and the database's files, and the space left."""
        sizes = [(p.stat().st_size, f"{p.name} {p.stat().st_size // MIB} MiB")
                 for p in self.state_dir.glob("mlmaster.db*") if p.is_file()]
        for ws in self.state_dir.glob("tasks/*/nodes/*"):
            size = sum(f.stat().st_size for f in ws.rglob("*") if f.is_file()
                       and not f.is_symlink())
            role = next((r for r, t in self.task_ids.items() if t == ws.parent.parent.name), "?")
            sizes.append((size, f"the {role}'s node {ws.name} workspace {size // MIB} MiB"))
        free = shutil.disk_usage(self.state_dir).free // MIB
        return ", ".join(text for _size, text in sorted(sizes, reverse=True)[:count]) + \
            f"; {free} MiB free"

    async def _inspect(self, client: Client) -> None:
        """Every API answer about the run, for the leak scan; who submitted what."""
        listed = await client.request("GET", "/v1/tasks")
        self.api_answers.append(("GET /v1/tasks", json.dumps(listed)))
        ours = set(self.task_ids.values())
        self.report.foreign_tasks += [f"{t['id']} ({t['name']}, by {t['submitter']})"
                                      for t in listed["tasks"] if t["id"] not in ours]
        if listed["total"] > len(ours) and not self.report.foreign_tasks:
            self.report.foreign_tasks.append(f"{listed['total'] - len(ours)} unlisted")
        for role, task_id in self.task_ids.items():
            task = await client.task(task_id)
            self.api_answers.append((f"GET the {role} task", json.dumps(task)))
            self.recorded[role] = int(task["usage"]["calls"])
            if role == "victim":
                self.report.victim_state = task["state"]
            for node in await client.nodes(task_id):
                where = f"the {role}'s node {node['id']}"
                try:
                    full = await client.node(task_id, node["id"])
                except ApiError as exc:
                    self.report.api_errors.append(f"GET {where} ({node['status']}: "
                                                  f"{node['error']}) answered {exc.status} "
                                                  f"{exc.code}: {exc.message}")
                    continue
                self.api_answers.append((f"GET {where}", json.dumps(full)))
                tail = str(full.get("output_tail") or "")
                self.output_tails.append((f"the output tail of {where}", tail))
                said = [line for line in tail.splitlines() if line.startswith("HOSTILE ")]
                if said:
                    self.said[(task_id, node["id"])] = said[-1].split(":", 1)[-1].strip()

    def _stop(self) -> None:
        self.daemon.sample_rss()
        code = self.daemon.process.terminate()
        if code != 0:
            self.report.deaths.append(f"the daemon exited with code {code} on SIGTERM")
        self.report.orphans += [f"{s} alive after the final stop" for s in stray_processes(
            self.state_dir, self.task_ids.values(), None)]
        if not self.task_ids or not self.db.exists():
            return
        rows = self.daemon.snapshot("after the final stop")
        self._judge(rows, read_tasks(self.db, self.task_ids.values()))

    def _judge(self, rows: Mapping[NodeKey, NodeRow], tasks: Mapping[str, Any]) -> None:
        report = self.report
        report.lost = dict(self.daemon.ledger.lost)
        report.node_states = Counter(r.state for r in rows.values())
        role_of = {task_id: role for role, task_id in self.task_ids.items()}
        for (task_id, node_id), row in sorted(rows.items()):
            where = f"the {role_of[task_id]}'s node {node_id}"
            error = str(dict(row.outcome)["error"] or "")
            if row.state not in FINISHED:
                report.unfinished.append(f"{where} is {row.state}")
            elif row.state in ("buggy", "failed") and not error.strip():
                report.unexplained.append(f"{where} is {row.state} without a reason")
            attack = plan_attack(row)
            slow = attack in ATTACKS_BY_NAME and ATTACKS_BY_NAME[attack].may_time_out
            if "time limit" in error and not slow:
                report.timed_out.append(f"{where} ({attack}): {error}")
            if task_id == self.task_ids.get("attacker") and attack in report.attacks:
                said = self.said.get((task_id, node_id))
                report.attacks[attack].nodes.append(
                    f"node {node_id:<3} {row.state}: {' '.join(error.split())[:110] or '-'}"
                    + (f" | it said: {said[:110]}" if said else ""))
        report.late += late_writes(self.state_dir, rows)
        report.outside += changed_files(self.outside, file_digests(
            [self.key_file, *self.competitions.values()]))
        for role, task_id in self.task_ids.items():
            task = tasks[task_id]
            report.tasks[role] = task["state"]
            if task["state"] != "finished":
                report.bad_submissions.append(f"the {role} ended {task['state']}: "
                                              f"{task['error']}")
                continue
            for problem in (check_submission(self.state_dir, task),
                            check_best(self.state_dir, task, rows)):
                if problem is not None:
                    report.bad_submissions.append(problem)

    def _scan(self, model: InjectedModel) -> None:
        """The key and the hidden-answer markers in anything that left a job."""
        sources: list[tuple[str, str | bytes]] = [
            (f"prompt {i} the model received", json.dumps(body))
            for i, body in enumerate(model.requests)]
        sources += [(f"the API answer to {what}", text) for what, text in self.api_answers]
        sources += self.output_tails
        stores = sorted(self.state_dir.glob("mlmaster.db*")) + sorted(
            (self.state_dir / "backups").glob("*"))
        sources += [(f"the database file {p.name}", p.read_bytes()) for p in stores
                    if p.is_file()]
        if self.daemon.process.log.exists():
            log = self.daemon.process.log.read_bytes()
            sources.append(("the daemon's log", log))
            self.report.internal_errors += logged_exceptions(log)
        found = find_leaks({"the API key": self.key,
                            "the attacker's hidden answers": self.markers["attacker"],
                            "the victim's hidden answers": self.markers["victim"]}, sources)
        self.report.leaks += found
        self.report.notes.append(f"scanned {len(model.requests)} prompts, "
                                 f"{len(self.api_answers)} API answers, "
                                 f"{len(self.output_tails)} output tails, {len(stores)} "
                                 "database files and the daemon's log")

    def cleanup(self) -> None:
        """Unmount the tmpfs and remove the run's files."""
        if self.mounted:
            subprocess.run(["umount", "-l", str(self.state_dir)], capture_output=True,
                           check=False)
            self.mounted = False
        shutil.rmtree(self.workdir, ignore_errors=True)

