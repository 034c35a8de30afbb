"""`GET /v1/tasks/{task_id}/export?format=journal|trajectories`: a task's search as AIDE's
journal.json or as step-wise trajectories (JSON lines); see mlmaster_daemon/export.py."""

from __future__ import annotations

from aiohttp import web

from mlmaster_daemon.api.schemas import is_task_id
from mlmaster_daemon.errors import InvalidRequest
from mlmaster_daemon.export import ExportFormat, export_chunks

FORMATS = ", ".join(f.value for f in ExportFormat)


def export_format(raw: str | None) -> ExportFormat:
    """The `format` query parameter, refused (400) unless it names an export format."""
    if raw is None:
        raise InvalidRequest(f"say which export: ?format= one of {FORMATS}")
    try:
        return ExportFormat(raw)
    except ValueError:
        raise InvalidRequest(f"format must be one of {FORMATS}, got {raw[:40]!r}") from None


async def export_task(request: web.Request) -> web.StreamResponse:
    """The export, streamed: trajectories a line per finished node."""
    # app.py registers this module's routes; importing it at the top would be a cycle.
    from mlmaster_daemon.api.app import API_PARTS

    parts = request.app[API_PARTS]
    task_id = request.match_info["task_id"]
    if not is_task_id(task_id):
        raise InvalidRequest(f"task id must be 't' and 11 lowercase hex digits (as `mlmaster "
                             f"ls` shows), got {task_id[:40]!r}")
    fmt = export_format(request.query.get("format"))
    chunks = export_chunks(parts.store, parts.state_dir, task_id, fmt,
                           parts.config.execution.output_tail_chars)
    try:
        # The first piece is read before the answer starts, so an unknown task is still a 404.
        first = await anext(chunks, b"")
        response = web.StreamResponse(headers={
            "Content-Type": fmt.media_type,
            "Content-Disposition": f'attachment; filename="{fmt.file_name(task_id)}"'})
        await response.prepare(request)
        try:
            await response.write(first)
            async for chunk in chunks:
                await response.write(chunk)
            await response.write_eof()
        except ConnectionResetError:
            # The reader left: nothing more to send, and nothing wrong with the daemon.
            pass
        return response
    finally:
        await chunks.aclose()


def routes() -> list[web.RouteDef]:
    """The routes app.py adds (`app.router.add_routes(export.routes())`)."""
    return [web.get("/v1/tasks/{task_id}/export", export_task, allow_head=False)]
