"""The API client the CLI uses: aiohttp over the daemon's Unix socket."""

from __future__ import annotations

import errno
import grp
import json
import os
import stat
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlencode

import aiohttp

from mlmaster_daemon.errors import DaemonUnreachable, MlmasterError


class ApiError(MlmasterError):
    """The daemon answered with an error."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status = status
        self.code = code


# sun_path holds 108 bytes with the terminating NUL.
MAX_SOCKET_PATH_BYTES = 107
_START = "start it with `mlmaster daemon` or point --socket / MLMASTER_SOCKET at it"


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def unreachable_reason(path: Path, exc: BaseException) -> str:
    """Why the daemon at `path` could not be reached, naming the path and what to do."""
    # aiohttp wraps the connect's OSError; look at that one.
    cause = getattr(exc, "os_error", None) or exc
    if len(os.fsencode(path)) > MAX_SOCKET_PATH_BYTES:
        return (f"socket path {path} is {len(os.fsencode(path))} bytes, longer than the "
                f"{MAX_SOCKET_PATH_BYTES} a Unix socket allows; give a shorter --socket")
    try:
        info = os.stat(path)
    except PermissionError:
        return (f"permission denied on the folder holding {path}: you may not enter "
                f"{path.parent}; ask the daemon's admin for access, or give --socket another "
                "path")
    except FileNotFoundError:
        if not path.parent.is_dir():
            return (f"no daemon socket at {path}: the folder {path.parent} does not exist; "
                    "check --socket / MLMASTER_SOCKET, or start the daemon with "
                    "`mlmaster daemon`")
        return f"no daemon socket at {path}; {_START}"
    except OSError as err:
        return f"cannot use {path} as the daemon socket ({err.strerror}); check --socket"
    if not stat.S_ISSOCK(info.st_mode):
        kind = "a folder" if stat.S_ISDIR(info.st_mode) else "not a socket"
        return (f"{path} is {kind}, not the daemon's socket; give --socket the socket "
                "(`mlmaster socket` prints the one the CLI uses by default)")
    if isinstance(cause, PermissionError) or getattr(cause, "errno", None) == errno.EACCES:
        group = _group_name(info.st_gid)
        member = info.st_gid == os.getegid() or info.st_gid in os.getgroups()
        why = ("your session's groups do not show it yet: log in again" if member else
               f"you are not in group {group}: ask the daemon's admin to add you "
               f"(`sudo usermod -aG {group} $USER`, then log in again)")
        return f"permission denied on {path} (mode {stat.S_IMODE(info.st_mode):o}); {why}"
    if isinstance(cause, ConnectionRefusedError):
        return (f"no daemon is listening on {path} (a socket left behind by a daemon that "
                f"stopped?); {_START}")
    return f"cannot reach the daemon at {path} ({exc}); {_START}"


class Client:
    def __init__(self, socket_path: Path, timeout_s: float = 30.0):
        self.socket_path = socket_path
        self._session = aiohttp.ClientSession(
            connector=aiohttp.UnixConnector(path=str(socket_path)),
            timeout=aiohttp.ClientTimeout(total=timeout_s),
        )

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        await self._session.close()

    def _unreachable(self, exc: Exception) -> DaemonUnreachable:
        return DaemonUnreachable(unreachable_reason(self.socket_path, exc))

    async def request(self, method: str, path: str, body: Any = None) -> Any:
        try:
            async with self._session.request(method, f"http://localhost{path}", json=body) as resp:
                payload = await resp.json(content_type=None)
                if resp.status >= 400:
                    err = payload.get("error", {}) if isinstance(payload, dict) else {}
                    raise ApiError(resp.status, str(err.get("code", "http_error")),
                                   str(err.get("message", f"HTTP {resp.status}")))
                return payload
        except (aiohttp.ClientConnectionError, FileNotFoundError) as exc:
            raise self._unreachable(exc) from None

    async def health(self) -> dict[str, Any]:
        result: dict[str, Any] = await self.request("GET", "/v1/health")
        return result

    async def submit(self, body: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = await self.request("POST", "/v1/tasks", body)
        return result

    async def tasks(self) -> list[dict[str, Any]]:
        result: dict[str, Any] = await self.request("GET", "/v1/tasks")
        return list(result["tasks"])

    async def task(self, task_id: str) -> dict[str, Any]:
        result: dict[str, Any] = await self.request("GET", f"/v1/tasks/{task_id}")
        return result

    async def nodes(self, task_id: str, fields: Sequence[str] | None = None,
                    page_size: int | None = None) -> list[dict[str, Any]]:
        """Every node of the task, by id, following the pages of GET /v1/tasks/{id}/nodes;
        each with only `fields` when given. `page_size`: nodes per request (the daemon's
        default when None)."""
        nodes: list[dict[str, Any]] = []
        after: int | None = None
        while True:
            page = await self.nodes_page(task_id, after, page_size, fields)
            nodes += page["nodes"]
            following = page.get("next_after")
            # A daemon from before pages sends no next_after: its one answer is the tree.
            if not isinstance(following, int) or (after is not None and following <= after):
                return nodes
            after = following

    async def nodes_page(self, task_id: str, after: int | None = None,
                         limit: int | None = None,
                         fields: Sequence[str] | None = None) -> dict[str, Any]:
        """One page of the task's nodes: those with ids above `after`, at most `limit`;
        `{"task_id", "nodes", "next_after"}`, next_after null after the last page."""
        query: dict[str, str] = {}
        if after is not None:
            query["after"] = str(after)
        if limit is not None:
            query["limit"] = str(limit)
        if fields is not None:
            query["fields"] = ",".join(fields)
        suffix = f"?{urlencode(query)}" if query else ""
        result: dict[str, Any] = await self.request("GET",
                                                    f"/v1/tasks/{task_id}/nodes{suffix}")
        return result

    async def node(self, task_id: str, node_id: int) -> dict[str, Any]:
        result: dict[str, Any] = await self.request("GET", f"/v1/tasks/{task_id}/nodes/{node_id}")
        return result

    async def node_log(self, task_id: str, node_id: int, stream: str,
                       offset: int) -> dict[str, Any]:
        """A chunk of the node's `stream` ("stdout" or "stderr") from byte `offset`."""
        result: dict[str, Any] = await self.request(
            "GET", f"/v1/tasks/{task_id}/nodes/{node_id}/log?stream={stream}&offset={offset}")
        return result

    async def report_html(self, task_id: str) -> str:
        """The task's self-contained HTML report (GET /v1/tasks/{id}/report.html)."""
        try:
            async with self._session.get(
                    f"http://localhost/v1/tasks/{task_id}/report.html") as resp:
                if resp.status >= 400:
                    payload = await resp.json(content_type=None)
                    err = payload.get("error", {}) if isinstance(payload, dict) else {}
                    raise ApiError(resp.status, str(err.get("code", "http_error")),
                                   str(err.get("message", f"HTTP {resp.status}")))
                return await resp.text()
        except (aiohttp.ClientConnectionError, FileNotFoundError) as exc:
            raise self._unreachable(exc) from None

    async def cancel(self, task_id: str) -> dict[str, Any]:
        result: dict[str, Any] = await self.request("POST", f"/v1/tasks/{task_id}/cancel")
        return result

    async def events(self, task_id: str | None = None) -> AsyncIterator[dict[str, Any]]:
        """Yield events as they come; the first one is `{"type": "hello"}` once subscribed."""
        query = f"?task_id={task_id}" if task_id else ""
        timeout = aiohttp.ClientTimeout(total=None, sock_read=None)
        try:
            async with self._session.get(f"http://localhost/v1/events{query}",
                                         timeout=timeout) as resp:
                if resp.status >= 400:
                    payload = await resp.json(content_type=None)
                    err = payload.get("error", {})
                    raise ApiError(resp.status, str(err.get("code")), str(err.get("message")))
                async for line in resp.content:
                    if line.strip():
                        yield json.loads(line)
        except (aiohttp.ClientConnectionError, FileNotFoundError) as exc:
            raise self._unreachable(exc) from None
