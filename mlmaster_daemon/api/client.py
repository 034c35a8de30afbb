"""The API client the CLI uses: aiohttp over the daemon's Unix socket."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from types import TracebackType
from typing import Any

import aiohttp

from mlmaster_daemon.errors import DaemonUnreachable, MlmasterError


class ApiError(MlmasterError):
    """The daemon answered with an error."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status = status
        self.code = code


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
        hint = "start it with `mlmaster daemon` or point --socket / MLMASTER_SOCKET at it"
        if not self.socket_path.exists():
            return DaemonUnreachable(f"no daemon socket at {self.socket_path}; {hint}")
        return DaemonUnreachable(f"cannot reach the daemon at {self.socket_path} ({exc}); {hint}")

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

    async def nodes(self, task_id: str) -> list[dict[str, Any]]:
        result: dict[str, Any] = await self.request("GET", f"/v1/tasks/{task_id}/nodes")
        return list(result["nodes"])

    async def node(self, task_id: str, node_id: int) -> dict[str, Any]:
        result: dict[str, Any] = await self.request("GET", f"/v1/tasks/{task_id}/nodes/{node_id}")
        return result

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
