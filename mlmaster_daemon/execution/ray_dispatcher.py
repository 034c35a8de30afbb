"""One daemon's runs on a Ray cluster, held by an actor that owns their Ray tasks.

Ray ends the tasks of an owner that dies. A task the daemon submitted itself would die with a
crashed daemon; one submitted by this actor, detached on a cluster that outlives the daemon,
does not. A restarted daemon finds the actor by its name and asks it for the runs of the
nodes it re-queued: it takes their results as they come, and no node is submitted twice while
its run goes on (the actor refuses a key it holds). The actor is created once per daemon and
cluster, so a node costs a task (milliseconds on a warm worker), not a new process."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import Any

from mlmaster_daemon.execution.ray_worker import Finished, Started, WorkerJob, run_node


@dataclass(frozen=True)
class Lost:
    """The run's worker was lost, or its task cancelled: what Ray said."""

    error: str


@dataclass(frozen=True)
class Raised:
    """The runner itself failed on the worker (a sandbox that cannot be honoured...)."""

    error: BaseException


Item = Started | Finished | Lost | Raised
ENDINGS = (Finished, Lost, Raised)


@dataclass
class _Run:
    stream: Any
    items: list[Item] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    reader: asyncio.Task[None] | None = None

    def add(self, item: Item) -> None:
        self.items.append(item)
        self.changed.set()

    async def wait_for(self, ready: type | tuple[type, ...]) -> Item:
        """The first item of the kind asked; a Lost one if the run ended without it."""
        while True:
            found = next((i for i in self.items if isinstance(i, ready)), None)
            if found is not None:
                return found
            if self.ended.is_set():
                return next((i for i in self.items if isinstance(i, Lost | Raised)),
                            Lost("the run ended without an answer"))
            self.changed.clear()
            await self.changed.wait()


class Dispatcher:
    """The Ray actor (async) that submits and holds one daemon's node runs, by key."""

    def __init__(self) -> None:
        self._runs: dict[str, _Run] = {}
        self._remote: Any = None

    async def submit(self, key: str, job: WorkerJob, archive: list[Any],
                     options: dict[str, Any]) -> bool:
        """Start the run; False, starting nothing, while a run of that key is held."""
        if key in self._runs:
            return False
        import ray

        if self._remote is None:
            self._remote = ray.remote(run_node)
        run = _Run(self._remote.options(**options).remote(job, archive))
        run.reader = asyncio.ensure_future(self._read(run))
        self._runs[key] = run
        return True

    async def _read(self, run: _Run) -> None:
        from ray.exceptions import RayError, RayTaskError

        try:
            async for ref in run.stream:
                run.add(await ref)
        except RayTaskError as exc:
            run.add(Raised(exc.cause if isinstance(exc.cause, BaseException) else exc))
        except RayError as exc:
            run.add(Lost(f"{type(exc).__name__}: {exc}"[:500]))
        except Exception as exc:  # never silent: the daemon is told
            run.add(Lost(f"{type(exc).__name__}: {exc}"[:500]))
        finally:
            run.ended.set()
            run.changed.set()

    async def first(self, key: str) -> Item | None:
        """`Started` once the script runs (its ending when it could not start); None for a
        key this actor does not hold."""
        run = self._runs.get(key)
        return None if run is None else await run.wait_for((Started, *ENDINGS))

    async def last(self, key: str) -> Item | None:
        """How the run ended, once it has; None for a key this actor does not hold."""
        run = self._runs.get(key)
        return None if run is None else await run.wait_for(ENDINGS)

    async def stop(self, key: str, grace_s: float) -> bool:
        """Stop the run and let its key go: Ray's cancel (the runner stops the script as a
        local cancel does), then, past `grace_s`, its worker is killed. True once it ended
        within the grace."""
        import ray

        run = self._runs.pop(key, None)
        if run is None:
            return True
        ended = False
        if grace_s > 0:
            ray.cancel(run.stream, force=False)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(run.ended.wait(), grace_s)
                ended = True
        if not ended:
            with contextlib.suppress(Exception):  # ended meanwhile: nothing to cancel
                ray.cancel(run.stream, force=True)
        return ended

    async def forget(self, key: str) -> None:
        """The daemon has the run's outcome: its key goes."""
        self._runs.pop(key, None)

    async def keys(self) -> list[str]:
        return sorted(self._runs)
