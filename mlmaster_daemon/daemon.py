"""Composition root and lifecycle: lock the state dir -> check it -> migrate -> recover -> listen
-> run until SIGTERM/SIGINT, backing the database up on a schedule."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
from aiohttp import web

from mlmaster_daemon import __version__
from mlmaster_daemon.api.app import ApiParts, build_app
from mlmaster_daemon.api.validation_server import address, start_validation_server
from mlmaster_daemon.bus import EventBus
from mlmaster_daemon.clock import Clock, SystemClock
from mlmaster_daemon.coders.choice import Coders, make_coders
from mlmaster_daemon.config import Config, Settings, reload_config
from mlmaster_daemon.errors import ConfigError
from mlmaster_daemon.execution.executor import Executor, LocalExecutor
from mlmaster_daemon.execution.gpu import GpuProbe, open_probe
from mlmaster_daemon.execution.leftovers import reconcile_processes
from mlmaster_daemon.execution.sandbox import resolve_sandbox
from mlmaster_daemon.execution.slots import GpuSampler, SlotPool
from mlmaster_daemon.logs import get_logger, set_log_level
from mlmaster_daemon.metrics import DaemonMetrics, start_metrics_server
from mlmaster_daemon.metrics import address as metrics_address
from mlmaster_daemon.models import TaskState
from mlmaster_daemon.scheduler import SearchParts, TaskQueue
from mlmaster_daemon.store import Store
from mlmaster_daemon.store.backup import IntegrityCheck, database_file, make_backup
from mlmaster_daemon.store.lock import StateDirLock
from mlmaster_daemon.store.lost import guard_committed_work
from mlmaster_daemon.store.writable import check_writable
from mlmaster_daemon.systemd import Heartbeat, Notifier, listen_sockets, run_watchdog
from mlmaster_daemon.task_log import TaskLogs
from mlmaster_daemon.tokenizer import TiktokenCounter, TokenizerUnavailable

if TYPE_CHECKING:
    from mlmaster_daemon.execution.ray_executor import RayExecutor

log = get_logger("mlmaster.daemon")
# sockaddr_un.sun_path holds 108 bytes including the terminating NUL.
MAX_SOCKET_PATH = 107
SHUTDOWN_GRACE_S = 5.0
Sleep = Callable[[float], Awaitable[None]]


def describe_slot(slot: dict[str, Any]) -> str:
    """The hardware line for prompts, from one slot of the pool."""
    cpus = f"{len(slot.get('cpus') or [])} CPU cores"
    if not slot.get("gpu_uuid"):
        return f"CPU only: {cpus}, no GPU"
    share = slot.get("memory_mb") or 0
    return f"1x {slot.get('gpu_name') or 'GPU'} ({share // 1024} GiB for this job), {cpus}"


def _prepare_socket_path(path: Path) -> None:
    if len(os.fsencode(path)) > MAX_SOCKET_PATH:
        raise ConfigError(
            f"socket path {path} is longer than {MAX_SOCKET_PATH} bytes; choose a shorter --socket")
    if not path.parent.exists():
        # 0750: only the owner and its group may reach the socket inside.
        path.parent.mkdir(parents=True, mode=0o750)
    if path.exists() or path.is_symlink():
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(path))
        except OSError:
            path.unlink()  # stale socket left by a daemon that died
        else:
            raise ConfigError(
                f"another daemon is already listening on {path}; stop it or use another --socket")
        finally:
            probe.close()


class Daemon:
    """`reread` gives the config anew (file, environment, flags) for a SIGHUP reload; `clock`
    is what the searches measure and wait with (tests pass a manual one);
    `accept_lost_work` starts even when the task folders prove commits the database lost (they
    are moved aside); `sleep` waits between scheduled backups (tests pass their own)."""

    def __init__(self, config: Config, coders: Coders | None = None,
                 reread: Callable[[], Config] | None = None, accept_lost_work: bool = False,
                 sleep: Sleep = asyncio.sleep, clock: Clock | None = None,
                 integrity: IntegrityCheck | None = None):
        # The database's integrity check, when the command started it early (see IntegrityCheck).
        self._integrity = integrity
        # The one live config every part reads; a reload swaps it here.
        self.settings = Settings(config)
        self.accept_lost_work = accept_lost_work
        self.clock: Clock = clock or SystemClock()
        self._sleep = sleep
        self.reread = reread
        self.coders = coders or make_coders(self.settings)
        self.state_dir = config.state_dir()
        self.socket_path = config.socket_path()
        self.bus = EventBus()
        # tasks/<id>/task.log: every task's events in words.
        self.task_logs = TaskLogs(self.state_dir)
        self.task_logs.follow(self.bus)
        # Prometheus metrics, only when [metrics] port is set.
        self.metrics = DaemonMetrics() if config.metrics.port else None
        self._metrics_server: web.AppRunner | None = None
        self.store: Store | None = None
        self.queue: TaskQueue | None = None
        self._runner: web.AppRunner | None = None
        # MLE-bench's validation server on a loopback port, when [validation_server] port is set.
        self._validation: web.AppRunner | None = None
        self.slots: SlotPool | None = None
        self.notifier = Notifier()
        self.heartbeat = Heartbeat()
        self._watchdog: asyncio.Task[None] | None = None
        self.sampler: GpuSampler | None = None
        self.probe: GpuProbe | None = None
        self.slot_mode = ""
        self.api_parts: ApiParts | None = None
        # Set when systemd passed the listening socket (mlmaster.socket): it is systemd's.
        self.activated = False
        self._stop = asyncio.Event()
        self._lock: StateDirLock | None = None
        # (device, inode) of the socket this daemon bound: the only one stop() may remove.
        self._socket_made: tuple[int, int] | None = None
        self._backups: asyncio.Task[None] | None = None
        self._backup_job: asyncio.Future[Path] | None = None
        # Loads the tokenizer when the first task comes (see start()).
        self._tokenizer_job: asyncio.Task[None] | None = None
        # Whether this daemon started the Ray cluster it runs nodes on (it then stops it).
        self._ray_started = False
        # The cluster backend, when nodes run on Ray.
        self.ray: RayExecutor | None = None

    @property
    def config(self) -> Config:
        """The live config (what the last reload left in `settings`)."""
        return self.settings.config

    @property
    def db(self) -> Path:
        return database_file(self.state_dir)

    async def start(self) -> None:
        """Open and migrate the store, recover from the last run, and listen. On return the
        daemon is ready to take requests."""
        # Before anything else: a second daemon on this state dir would kill the first one's
        # jobs as stale and drive the same tasks.
        self._lock = await asyncio.to_thread(StateDirLock.acquire, self.state_dir)
        # Checks and recovery may take a while on a big database: tell systemd.
        self.notifier.extend_timeout(120)
        db = self.db
        await asyncio.to_thread(check_writable, self.state_dir, db)
        # Read-only checks: a refused database is left as it was found.
        early = self._integrity
        await (early if early and early.db == db else IntegrityCheck(db)).passed()
        aside = await asyncio.to_thread(guard_committed_work, self.state_dir, db,
                                        self.accept_lost_work, self.clock.time())
        if aside is not None:
            log.warning("started with lost work (--accept-lost-work): what the database does "
                        "not know was moved aside", folder=str(aside.folder),
                        moved=[str(p) for p in aside.moved],
                        gaps=[g.description for g in aside.gaps[:20]])
        passed = listen_sockets()
        self.activated = bool(passed)
        if self.activated:
            # systemd made the socket with the unit's SocketMode/SocketGroup; serve it as is.
            self.socket_path = Path(passed[0].getsockname())
        else:
            _prepare_socket_path(self.socket_path)
        # A missing tokenizer should stop the start, not a task; the encoding itself (about
        # 40 MB) loads only once there is a task to count for, so an idle daemon stays small.
        counter = TiktokenCounter(self.config.memory.encoding)
        await asyncio.to_thread(counter.check)
        self.store = await Store.open(db)
        if await self.store.list_tasks([TaskState.RUNNING, TaskState.PAUSED, TaskState.QUEUED]):
            # Searches resume at once: loaded meanwhile, off the loop, before their first
            # prompt is counted (a restore comes first).
            self._load_tokenizer_soon(counter)
        else:
            self.bus.tap(lambda _event: self._load_tokenizer_soon(counter))
        # anyio loads its asyncio backend at the first limiter a task makes (about 70 ms of
        # imports): here, before the API listens, not on the loop while it serves.
        anyio.CapacityLimiter(1)
        # What the start loaded (modules, config) lives as long as the daemon: left out of
        # the collector's full passes, which would otherwise walk it every time.
        gc.freeze()
        execution = self.config.execution
        on_cluster = execution.backend == "ray" and bool(execution.ray_address)
        killed = await reconcile_processes(self.store, on_cluster)
        await self._open_slots()
        requeued, interrupted = await self.store.interrupt_unfinished(
            "interrupted: the daemon stopped while this node was being generated",
            self.clock.time(),
            max_crashes=self.config.execution.max_node_crashes)
        assert self.slots is not None
        executor = await self._executor()
        self.queue = TaskQueue(SearchParts(
            self.store, self.bus, self.coders.coder, executor, self.settings, self.state_dir,
            counter, self.coders.reviewer, self.clock), self.metrics)
        self.api_parts = ApiParts(self.store, self.bus, self.queue, self.settings,
                                 self.state_dir, self.clock.time(), self.coders.status,
                                 self.slots_status)
        self._runner = web.AppRunner(build_app(self.api_parts), handle_signals=False,
                                     shutdown_timeout=SHUTDOWN_GRACE_S)
        await self._runner.setup()
        if self.activated:
            site: web.BaseSite = web.SockSite(self._runner, passed[0])
            await site.start()
        else:
            site = web.UnixSite(self._runner, str(self.socket_path))
            await site.start()
            made = os.lstat(self.socket_path)
            self._socket_made = (made.st_dev, made.st_ino)
            os.chmod(self.socket_path, 0o660)
        validation = self.config.validation_server
        if validation.port:
            self._validation = await start_validation_server(
                self.store, validation, self.state_dir / "validation-uploads", SHUTDOWN_GRACE_S)
            log.info("validation server listening", url=address(validation))
        if self.metrics is not None:
            self.metrics.watch(self.store, self.ray or self.slots, self.bus)
            for endpoint in self.coders.llm.endpoints if self.coders.llm else []:
                endpoint.observe = self.metrics.llm_called
            self._metrics_server = await start_metrics_server(
                self.metrics, self.config.metrics, SHUTDOWN_GRACE_S)
            log.info("metrics endpoint listening", url=metrics_address(self.config.metrics))
        for problem in await self.coders.probe():
            # Reported, not fatal: tasks wait for the endpoint (see the circuit breaker).
            log.warning("llm endpoint unreachable at start", problem=problem)
        await self.queue.start(heartbeat=self.heartbeat.tick)
        self._watchdog = asyncio.create_task(run_watchdog(
            self.notifier, self.heartbeat, self.status_line))
        self.notifier.ready(self.status_line())
        # A good database at every start is kept, so a corrupt one has somewhere to go back to;
        # then one every backup_interval_s.
        await self.backup()
        self._schedule_backups()
        log.info("daemon ready", coder=type(self.coders.coder).__name__, version=__version__,
                 socket=str(self.socket_path), socket_activated=self.activated,
                 state_dir=str(self.state_dir), nodes_requeued=requeued,
                 nodes_interrupted=interrupted, stale_processes_killed=killed)

    def _load_tokenizer_soon(self, counter: TiktokenCounter) -> None:
        """On the first event (a submit), load the tokenizer off the event loop, before the
        new task's first count needs it."""
        if self._tokenizer_job is None:
            self._tokenizer_job = asyncio.create_task(self._load_tokenizer(counter))

    async def _load_tokenizer(self, counter: TiktokenCounter) -> None:
        try:
            await asyncio.to_thread(counter.load)
        except TokenizerUnavailable as exc:
            # The task's own count fails with the same error and says so.
            log.error("tokenizer unavailable", error=exc.message)

    async def stop(self) -> None:
        """Stop taking work, let running nodes finish within `stop_grace_s`, stop the rest
        (their tasks resume on the next start), close the API and the store."""
        log.info("daemon stopping", grace_s=self.config.daemon.stop_grace_s)
        self.notifier.stopping()
        backups, self._backups = self._backups, None
        if backups is not None:
            backups.cancel()
            await asyncio.gather(backups, return_exceptions=True)
        if self.queue is not None:
            await self.queue.stop(self.config.daemon.stop_grace_s)
        if self._watchdog is not None:
            self._watchdog.cancel()
        if self._runner is not None:
            await self._runner.cleanup()
        if self._validation is not None:
            await self._validation.cleanup()
        if self._metrics_server is not None:
            await self._metrics_server.cleanup()
        # The last events of the stop (tasks drained, cancelled) reach their task logs.
        await self.task_logs.flush()
        if self.sampler is not None:
            await self.sampler.stop()
        if self.probe is not None:
            await asyncio.to_thread(self.probe.close)
        await self.coders.close()
        if self._backup_job is not None:
            # A backup under way finishes first: it reads the database being closed.
            await asyncio.wait([self._backup_job])
        if self.store is not None:
            await self.store.close()
        if self._ray_started:
            from mlmaster_daemon.execution.ray_cluster import disconnect
            await asyncio.to_thread(disconnect)
            self._ray_started = False
        self._remove_socket()
        if self._lock is not None:
            self._lock.release()
        log.info("daemon stopped")

    def _remove_socket(self) -> None:
        """Remove the socket only if it is the one this daemon bound: not systemd's, and not
        that of another daemon that refused this one's start."""
        if self._socket_made is None:
            return
        with contextlib.suppress(FileNotFoundError):
            now = os.lstat(self.socket_path)
            if (now.st_dev, now.st_ino) == self._socket_made:
                self.socket_path.unlink()
        self._socket_made = None

    async def backup(self) -> Path | None:
        """Back the database up now (SQLite's online backup, off the event loop), one at a
        time; a failure is logged, not raised: the daemon goes on without that copy."""
        while self._backup_job is not None and not self._backup_job.done():
            await asyncio.wait([self._backup_job])
        job = asyncio.ensure_future(asyncio.to_thread(make_backup, self.db))
        job.add_done_callback(self._backup_done)
        self._backup_job = job
        # A cancelled caller (stop, a reload) leaves the copy to finish; stop() waits for it.
        await asyncio.wait([job])
        return None if job.cancelled() or job.exception() else job.result()

    def _backup_done(self, job: asyncio.Future[Path]) -> None:
        if job.cancelled():
            return
        error = job.exception()
        if error is None:
            log.info("database backed up", backup=str(job.result()))
        else:
            log.error("database backup failed; the daemon goes on and tries again at the next "
                      "one", db=str(self.db), error=f"{type(error).__name__}: {error}")

    def _schedule_backups(self) -> None:
        """(Re)start the periodic backups with the current `backup_interval_s`."""
        if self._backups is not None:
            self._backups.cancel()
        self._backups = asyncio.create_task(self._run_backups(), name="backups")

    async def _run_backups(self) -> None:
        while (interval := self.config.daemon.backup_interval_s) > 0:
            await self._sleep(interval)
            await self.backup()

    def reload(self) -> list[str]:
        """SIGHUP: re-read the config and take what can change live (log level, concurrency,
        budgets, access lists...). Returns the changed keys that need a restart; they keep
        their running values. A config that does not load changes nothing."""
        if self.reread is None:
            log.warning("config reload asked, but this daemon was not started from a config")
            return []
        self.notifier.reloading()
        try:
            fresh = self.reread()
        except ConfigError as exc:
            log.error("config reload failed; the running config stays", error=exc.message)
            self.notifier.ready(f"config reload failed: {exc.message}"[:200])
            return []
        merged, applied, refused = reload_config(self.config, fresh)
        if merged.daemon.log_level != self.config.daemon.log_level:
            set_log_level(merged.daemon.log_level)
        interval_changed = (merged.daemon.backup_interval_s
                            != self.config.daemon.backup_interval_s)
        self.settings.swap(merged)
        if interval_changed and self._backups is not None:
            self._schedule_backups()
        if self.queue is not None:
            self.queue.reconfigure()
        log.info("config reloaded", applied=applied, needs_restart=refused)
        if refused:
            log.warning("config keys changed that only a restart applies; their running values "
                        "stay", keys=refused)
        self.notifier.ready(self.status_line())
        return refused

    async def _executor(self) -> Executor:
        """Where node scripts run: this machine's slots, or a Ray cluster (joined here)."""
        if self.config.execution.backend == "ray":
            from mlmaster_daemon.execution import ray_cluster, ray_executor
            self._ray_started = ray_cluster.connect(self.config.execution)
            log.info("running nodes on a Ray cluster", started_here=self._ray_started,
                     address=self.config.execution.ray_address or "(started here)")
            # Prompts describe a worker's share, not this machine.
            self.coders.detected_hardware(ray_cluster.describe_share(self.config.execution))
            executor = ray_executor.RayExecutor(self.settings, self.state_dir,
                                                self.socket_path, self.metrics, self.clock)
            self.bus.tap(executor.observe)
            self.ray = executor
            if self.config.execution.ray_address:
                # Runs left from before a crash: kept for the nodes re-queued (they re-attach).
                assert self.store is not None
                kept = await executor.adopt(await self.store.unfinished_with_code())
                log.info("node runs left on the cluster kept to be re-attached", runs=kept)
            return executor
        assert self.slots is not None
        return LocalExecutor(self.settings, self.slots, self.state_dir, self.sampler,
                             self.socket_path, self.metrics, self.clock)

    async def _open_slots(self) -> None:
        """GPU slots from NVML, or CPU slots with one clear line saying why."""
        execution = self.config.execution
        probe, reason = await asyncio.to_thread(open_probe)
        gpus = await asyncio.to_thread(probe.discover)
        self.probe, self.slot_mode = probe, reason
        self.slots = SlotPool(gpus, execution.max_concurrent_nodes, execution.slots_per_gpu)
        if gpus:
            self.sampler = GpuSampler(probe, self.slots, interval_s=execution.sample_interval_s,
                                      gpus=gpus)
            self.sampler.start()
        log.info("execution slots", mode=reason, slots=self.slots.capacity,
                 sandbox=await asyncio.to_thread(resolve_sandbox, execution.sandbox))
        self.coders.detected_hardware(describe_slot(self.slots.snapshot()[0]))

    def status_line(self) -> str:
        """systemd's STATUS=: what the daemon is doing, in a few words."""
        running = len(self.queue.searches) if self.queue else 0
        occupancy = self.ray or self.slots
        busy = occupancy.busy if occupancy else 0
        capacity = occupancy.capacity if occupancy else 0
        return f"{running} task(s) running, {busy}/{capacity} slots busy"

    async def slots_status(self) -> dict[str, Any]:
        if self.ray is not None:
            # Ray places the nodes: its machines, their free resources and what runs on each
            # are the slots.
            nodes = await self.ray.cluster_view()
            return {"mode": "ray", "slots": self.ray.slot_rows(), "gpus": [], "nodes": nodes}
        return {"mode": self.slot_mode,
                "slots": self.slots.snapshot() if self.slots else [],
                "gpus": self.sampler.snapshot() if self.sampler else []}

    def request_stop(self) -> None:
        self._stop.set()

    async def serve(self) -> None:
        """Run until SIGTERM or SIGINT, then stop cleanly."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        try:
            await self.start()
            await self._stop.wait()
        finally:
            await self.stop()
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
