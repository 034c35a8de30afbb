"""`mlmaster export ID --format journal|trajectories [-o FILE]`: a task's search as AIDE's
journal.json or as step-wise trajectories (JSON lines), fetched from the daemon's API."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Callable
from pathlib import Path

import aiohttp

from mlmaster_daemon.api.client import ApiError, unreachable_reason
from mlmaster_daemon.errors import DaemonUnreachable, MlmasterError
from mlmaster_daemon.export import ExportFormat

CHUNK_BYTES = 1 << 16
# An export is written as it is read: the daemon may take a while on a large task, but a
# silence this long means it is gone.
READ_TIMEOUT_S = 300.0


async def fetch_export(socket_path: Path, task_id: str, fmt: ExportFormat,
                       target: Path | None) -> None:
    """Write the export to `target` (stdout when None); a file appears whole or not at all."""
    url = f"http://localhost/v1/tasks/{task_id}/export?format={fmt.value}"
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=READ_TIMEOUT_S)
    partial = None if target is None else target.with_name(
        f".{target.name}.{os.getpid()}.part")
    try:
        async with aiohttp.ClientSession(
                connector=aiohttp.UnixConnector(path=str(socket_path)), timeout=timeout,
        ) as session, session.get(url) as resp:
            if resp.status >= 400:
                payload = await resp.json(content_type=None)
                err = payload.get("error", {}) if isinstance(payload, dict) else {}
                raise ApiError(resp.status, str(err.get("code", "http_error")),
                               str(err.get("message", f"HTTP {resp.status}")))
            if partial is None:
                async for chunk in resp.content.iter_chunked(CHUNK_BYTES):
                    sys.stdout.buffer.write(chunk)
                sys.stdout.buffer.flush()
                return
            with partial.open("wb") as out:
                async for chunk in resp.content.iter_chunked(CHUNK_BYTES):
                    out.write(chunk)
        assert target is not None
        os.replace(partial, target)
    except (aiohttp.ClientConnectionError, FileNotFoundError) as exc:
        raise DaemonUnreachable(unreachable_reason(socket_path, exc)) from None
    finally:
        if partial is not None:
            partial.unlink(missing_ok=True)


def export(args: argparse.Namespace) -> int:
    # cli.py imports this module to wire the command; its socket lookup is read when run.
    from mlmaster_daemon.cli import _socket

    fmt = ExportFormat(args.format)
    target = None if args.output == "-" else Path(args.output or fmt.file_name(args.task_id))
    if target is not None and not target.parent.expanduser().is_dir():
        raise MlmasterError(f"cannot write {target}: the folder {target.parent} does not "
                            "exist; create it or give -o another path")
    asyncio.run(fetch_export(_socket(args), args.task_id, fmt,
                             None if target is None else target.expanduser()))
    if target is not None:
        print(target, flush=True)
    return 0


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser],
               with_socket: Callable[[argparse.ArgumentParser], argparse.ArgumentParser],
               ) -> None:
    """Register `mlmaster export`."""
    p = with_socket(sub.add_parser(
        "export", help="write a task's search for machines: AIDE's journal or trajectories",
        description="Write a task's finished nodes as AIDE's journal.json (--format journal) "
                    "or as JSON lines for training agents, one step per node with the prompt "
                    "context, plan and code, outcome, step reward and SFT pair (--format "
                    "trajectories). Prints the file written."))
    p.add_argument("task_id", metavar="ID", help="the task, as `mlmaster ls` lists it")
    p.add_argument("--format", required=True, choices=[f.value for f in ExportFormat],
                   help="journal: AIDE's journal.json; trajectories: JSON lines, one step "
                        "per finished node")
    p.add_argument("-o", "--output", metavar="FILE",
                   help="where to write (default: ID-journal.json or ID-trajectories.jsonl "
                        "in the current folder; - for stdout)")
    p.set_defaults(fn=export)
