"""`mlmaster report-html TASK_ID [-o FILE]`: the task's search as one self-contained HTML page,
fetched from the daemon (GET /v1/tasks/{id}/report.html) and written to a file."""

from __future__ import annotations

import argparse
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from mlmaster_daemon.api.client import Client
from mlmaster_daemon.api.schemas import is_task_id
from mlmaster_daemon.errors import MlmasterError


def default_output(task_id: str) -> Path:
    """Where the page goes without -o: TASK_ID-report.html in the current folder."""
    return Path(f"{task_id}-report.html")


def write_page(page: str, target: Path) -> None:
    """Write `page` to `target` whole or not at all (a temporary file renamed over it)."""
    if target.is_dir():
        raise MlmasterError(f"{target} is a folder; give -o a file name, e.g. "
                            f"{target / 'report.html'}")
    folder = target.parent
    if not folder.is_dir():
        raise MlmasterError(f"cannot write {target}: the folder {folder} does not exist; "
                            "create it or give -o another path")
    temporary: str | None = None
    try:
        fd, temporary = tempfile.mkstemp(prefix=f".{target.name}.", dir=folder)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(page)
        os.chmod(temporary, 0o644)
        os.replace(temporary, target)
    except OSError as exc:
        if temporary is not None and os.path.exists(temporary):
            os.unlink(temporary)
        raise MlmasterError(f"cannot write {target}: {exc.strerror}; give -o a path you may "
                            "write to") from None


def report_html(args: argparse.Namespace) -> int:
    # Imported here: cli.py imports this module to register the command.
    from mlmaster_daemon.cli import _client_call

    if not is_task_id(args.task_id):
        raise MlmasterError(f"task id must be 't' and 11 lowercase hex digits (as `mlmaster "
                            f"ls` shows), got {args.task_id[:40]!r}")
    target = Path(args.output).expanduser() if args.output else default_output(args.task_id)

    async def fetch(client: Client) -> str:
        return await client.report_html(args.task_id)

    write_page(_client_call(args, fetch), target)
    print(target, flush=True)
    return 0


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser],
               with_socket: Callable[[argparse.ArgumentParser], argparse.ArgumentParser]) -> None:
    """Register `report-html TASK_ID [-o FILE]`."""
    p = with_socket(sub.add_parser(
        "report-html", help="write a task's search tree and charts as one self-contained HTML "
                            "page (opens offline in any browser)"))
    p.add_argument("task_id")
    p.add_argument("-o", "--output", metavar="FILE",
                   help="file to write (default: TASK_ID-report.html in the current folder)")
    p.set_defaults(fn=report_html)
