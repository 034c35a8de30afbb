"""Serving an aiohttp app on a loopback TCP port (the validation server, the metrics endpoint):
the port bound or a config error naming the key to change, and the URL a client uses."""

from __future__ import annotations

from aiohttp import web

from mlmaster_daemon.errors import ConfigError


async def serve(app: web.Application, host: str, port: int, shutdown_timeout: float, *,
                what: str, key: str) -> web.AppRunner:
    """Listen on `host:port`; the caller cleans the returned runner up. Raises `ConfigError`
    saying `what` cannot listen and to change `key` when the port cannot be bound."""
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=shutdown_timeout)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except OSError as exc:
        await runner.cleanup()
        raise ConfigError(f"{what} cannot listen on {host}:{port} ({exc}); choose another "
                          f"{key} or stop what uses it") from None
    return runner


def url(host: str, port: int, path: str) -> str:
    """http://HOST:PORT/PATH, an IPv6 host in brackets."""
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/{path}"
