"""The HTTP API, versioned under /v1, served on a Unix socket. JSON in, JSON out.

Errors are `{"error": {"code": str, "message": str}}` with a 4xx status; nothing a client sends
can take the daemon down. Only the peers [daemon] admits get past the first middleware (see
access.py, job_peers.py); the routes are described by GET /v1/openapi.json (see openapi.py).
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from mlmaster_daemon import __version__, untrusted
from mlmaster_daemon.api import export
from mlmaster_daemon.api.access import (
    Peer,
    cancel_refusal,
    connect_refusal,
    identify,
    may_cancel,
    may_connect,
    peer_credentials,
)
from mlmaster_daemon.api.folders import Placement, check_task_folder, check_task_spec
from mlmaster_daemon.api.job_peers import job_refusal, peer_job_reason
from mlmaster_daemon.api.node_logs import node_log
from mlmaster_daemon.api.node_pages import node_page_body, page_request
from mlmaster_daemon.api.openapi import openapi_json
from mlmaster_daemon.api.parts import API_PARTS, ApiParts
from mlmaster_daemon.api.schemas import SubmitRequest, is_node_id, is_task_id
from mlmaster_daemon.api.task_views import listing_body, task_views
from mlmaster_daemon.artefacts import node_dir
from mlmaster_daemon.bus import Event, EventBus
from mlmaster_daemon.coders.offline.coder import offline_refusal
from mlmaster_daemon.config import DaemonConfig
from mlmaster_daemon.errors import Forbidden, InvalidRequest, InvalidTaskDir, MlmasterError
from mlmaster_daemon.execution.workspace import Workspace
from mlmaster_daemon.faults import describe, is_storage_fault
from mlmaster_daemon.logs import get_logger
from mlmaster_daemon.models import TaskState, new_task_id
from mlmaster_daemon.policy_config import check_policy
from mlmaster_daemon.report_html import report_page
from mlmaster_daemon.store import TaskRecord
from mlmaster_daemon.tasks.competition import load_task
from mlmaster_daemon.tasks.spec import Metric, TaskOverrides

log = get_logger("mlmaster.api")
HEARTBEAT_S = 15.0
STREAM_POLL_S = 1.0


# The admitted peer of the request being handled. A context variable rather than request
# storage, whose typed keys need aiohttp 3.14: the handler runs in the middleware's context.
_PEER: ContextVar[Peer] = ContextVar("mlmaster_peer")
MAX_BODY_BYTES = 64 * 1024
# A listing shows at most this many tasks, the newest.
MAX_LISTED = 500
MAX_MEMORY_CHARS = 64 * 1024


def error_body(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


@web.middleware
async def errors_as_json(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        response: web.StreamResponse = await handler(request)
        return response
    except MlmasterError as exc:
        return web.json_response(error_body(exc.code, exc.message), status=exc.status)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = {404: "not_found", 405: "method_not_allowed", 413: "body_too_large"}.get(
            exc.status, "http_error")
        message = f"{request.method} {request.path}: {exc.reason}"
        if exc.status == 404:
            message += "; the API lives under /v1 (see /v1/health)"
        elif exc.status == 413:
            message += f"; request bodies are limited to {MAX_BODY_BYTES // 1024} KiB"
        return web.json_response(error_body(code, message), status=exc.status)
    except Exception as exc:
        if is_storage_fault(exc):
            log.error("request failed: the daemon cannot write its state", path=request.path,
                      error=str(exc))
            return web.json_response(error_body(
                "storage_fault", f"{describe(exc)}; free space or fix the disk under the "
                "daemon's state directory, then try again (nothing committed is lost)"),
                status=503)
        log.exception("request failed", method=request.method, path=request.path)
        return web.json_response(
            error_body("internal", "internal error; the daemon's log has the details"), status=500)


@web.middleware
async def admit_peer(request: web.Request, handler: Any) -> web.StreamResponse:
    """Let through only the peers [daemon] admits, and none of the daemon's own jobs (403
    `job_process`); store the peer for the handlers."""
    transport = request.transport
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None or sock.family != socket.AF_UNIX:
        raise Forbidden("the daemon answers only on its Unix socket, where it can tell who asks")
    parts = request.app[API_PARTS]
    daemon = parts.config.daemon
    # A connection's peer is checked on its first request only (and again after a reload
    # changed [daemon]): the kernel fixed its credentials at connect, the pidfd check pinned
    # that very process, and a job cannot take over another process's connection. The
    # check costs ~0.5 ms (it reads the user database and /proc), twice a bare request.
    assert transport is not None
    admitted = parts.admitted.get(transport)
    if admitted is not None and admitted[0] is daemon:
        peer = admitted[1]
    else:
        # Off the event loop, in one hop: the user database may be remote (LDAP, sssd).
        peer = await asyncio.to_thread(_admit, sock, daemon, request.method, request.path)
        parts.admitted[transport] = (daemon, peer)
    _PEER.set(peer)
    response: web.StreamResponse = await handler(request)
    return response


def _admit(sock: socket.socket, daemon: DaemonConfig, method: str, path: str) -> Peer:
    """The peer at the other end of `sock` if `daemon` admits it and it is none of the
    daemon's jobs; else the 403 to answer. Blocking."""
    pid, uid, gid = peer_credentials(sock)
    peer = identify(pid, uid, gid)
    if not may_connect(peer, daemon, os.getuid()):
        log.warning("peer refused", uid=uid, gid=gid, pid=pid, user=peer.name,
                    method=method, path=path)
        raise connect_refusal(peer, daemon)
    job = peer_job_reason(sock, pid, uid)
    if job is not None:
        log.warning("job process refused", pid=pid, uid=uid, reason=job, method=method,
                    path=path)
        raise job_refusal(pid, job)
    return peer


def current_peer() -> Peer:
    """The peer `admit_peer` admitted for the request being handled."""
    return _PEER.get()


def _task_id(request: web.Request, raw: str | None = None) -> str:
    """The request's task id, refused (400) unless it has the form new_task_id() gives."""
    task_id = request.match_info["task_id"] if raw is None else raw
    if not is_task_id(task_id):
        shown = task_id if len(task_id) <= 40 else task_id[:40] + "..."
        raise InvalidRequest(
            f"task id must be 't' and 11 lowercase hex digits (as `mlmaster ls` shows), "
            f"got {shown!r}")
    return task_id


async def _json_body(request: web.Request) -> Any:
    # JSON is UTF-8 (RFC 8259): a charset in Content-Type is ignored rather than trusted.
    raw = await request.read()
    try:
        return json.loads(raw.decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise InvalidRequest("request body is not valid JSON") from None
    except RecursionError:
        raise InvalidRequest("request body is nested too deeply") from None


def _describe(err: ValidationError) -> str:
    parts = []
    for item in err.errors():
        field = ".".join(str(p) for p in item["loc"]) or "body"
        if item["type"] == "extra_forbidden":
            parts.append(f"unknown field '{field}'")
        else:
            parts.append(f"'{field}': {item['msg']}")
    return "; ".join(parts)


async def task_view(parts: ApiParts, task: TaskRecord) -> dict[str, Any]:
    """The API's view of one task (see task_views.py)."""
    return (await task_views(parts.store, parts.state_dir, parts.queue.backing_off, [task]))[0]


async def health(request: web.Request) -> web.Response:
    parts = request.app[API_PARTS]
    return web.json_response({
        "status": "ok",
        "version": __version__,
        "uptime_s": round(time.time() - parts.started_at, 3),
        "tasks_running": len(parts.queue.searches),
        "llm": parts.llm_status(),
    })


async def slots(request: web.Request) -> web.Response:
    """Execution slots (GPU or CPU), who holds them, and the latest GPU samples."""
    return web.json_response(await request.app[API_PARTS].slots_status())


async def submit_task(request: web.Request) -> web.Response:
    parts = request.app[API_PARTS]
    body = await _json_body(request)
    if not isinstance(body, dict):
        raise InvalidRequest("request body must be a JSON object with at least 'task_dir'")
    try:
        req = SubmitRequest.model_validate(body)
    except ValidationError as exc:
        raise InvalidRequest(f"invalid task submission: {_describe(exc)}") from None
    policy = check_policy(req.policy or parts.config.search.policy)
    overrides = TaskOverrides(metric=req.metric, lower_is_better=req.lower_is_better,
                              target=req.target, id_column=req.id_column, name=req.name)
    peer = current_peer()
    placement = await asyncio.to_thread(Placement.of, parts.config.daemon, parts.state_dir)
    task_dir = Path(req.task_dir)
    await asyncio.to_thread(check_task_folder, task_dir, peer, placement)
    spec = await asyncio.to_thread(load_task, task_dir, overrides)
    if spec.metric is Metric.COMPETITION and parts.config.llm.code is None:
        raise InvalidTaskDir(offline_refusal(spec))
    await asyncio.to_thread(check_task_spec, spec, peer, placement)
    search = parts.config.search
    task = TaskRecord(
        id=new_task_id(), name=spec.name, task_dir=str(spec.root), spec=spec,
        policy=policy, steps=req.steps or search.steps,
        time_limit_s=float(req.time_limit_s or search.time_limit_s),
        node_timeout_s=float(req.node_timeout_s or parts.config.execution.node_timeout_s),
        state=TaskState.QUEUED, created_at=time.time(),
        max_tokens=req.max_tokens if req.max_tokens is not None
        else parts.config.llm.max_task_tokens,
        max_cost=float(req.max_cost if req.max_cost is not None
                       else parts.config.llm.max_task_cost),
        submitter_uid=peer.uid, submitter=peer.name,
    )
    await parts.queue.submit(task)
    fresh = await parts.store.get_task(task.id)
    return web.json_response(await task_view(parts, fresh), status=201)


async def list_tasks(request: web.Request) -> web.Response:
    """The newest `limit` tasks (default and most: MAX_LISTED), oldest first."""
    parts = request.app[API_PARTS]
    raw = request.query.get("limit", str(MAX_LISTED))
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 3 and 1 <= int(raw) <= MAX_LISTED):
        raise InvalidRequest(f"limit must be a whole number from 1 to {MAX_LISTED}, got "
                             f"{raw[:40]!r}")
    body = await listing_body(parts, int(raw), time.monotonic())
    return web.Response(body=body, content_type="application/json")


async def get_task(request: web.Request) -> web.Response:
    parts = request.app[API_PARTS]
    task = await parts.store.get_task(_task_id(request))
    return web.json_response(await task_view(parts, task))


async def cancel_task(request: web.Request) -> web.Response:
    parts = request.app[API_PARTS]
    task_id = _task_id(request)
    task = await parts.store.get_task(task_id)
    daemon, own_uid = parts.config.daemon, os.getuid()
    if not await asyncio.to_thread(may_cancel, current_peer(), task.submitter_uid, daemon,
                                   own_uid):
        submitter = (task.submitter or str(task.submitter_uid)) + f" (uid {task.submitter_uid})"
        raise await asyncio.to_thread(cancel_refusal, task_id, submitter, daemon, own_uid)
    task = await parts.queue.cancel(task_id)
    return web.json_response(await task_view(parts, task))


async def list_nodes(request: web.Request) -> web.Response:
    """A page of the task's nodes (see node_pages.py)."""
    body = await node_page_body(request.app[API_PARTS], _task_id(request),
                                page_request(request.query), time.monotonic())
    return web.Response(body=body, content_type="application/json")


async def get_node(request: web.Request) -> web.Response:
    parts = request.app[API_PARTS]
    task_id = _task_id(request)
    raw_id = request.match_info["node_id"]
    if not is_node_id(raw_id):
        shown = raw_id if len(raw_id) <= 40 else raw_id[:40] + "..."
        raise InvalidRequest(f"node id must be a positive integer, got {shown!r}")
    task = await parts.store.get_task(task_id)
    node = await parts.store.get_node(task.id, int(raw_id))
    ws = Workspace(node_dir(parts.state_dir, task.id, node.id))
    output = await asyncio.to_thread(ws.output_tail, parts.config.execution.output_tail_chars)
    # The workspace is the job's: memory.md is read bounded and never through a link.
    memory = await asyncio.to_thread(untrusted.text_excerpt, ws.root, "memory.md",
                                     MAX_MEMORY_CHARS)
    return web.json_response({
        **node.public(),
        "task_id": task.id,
        "plan": node.plan,
        "code": node.code,
        "exit_code": node.exit_code,
        "output_tail": output,
        "memory": memory,
        "analysis": node.analysis,
        "slot": node.slot,
        "pid": node.pid,
        "gpu_peak_mb": node.gpu_peak_mb,
        "gpu_seconds": node.gpu_seconds,
        "usage": await parts.store.usage(task.id, node.id),
        "workspace": str(ws.root),
        "created_at": node.created_at,
        "started_at": node.started_at,
        "finished_at": node.finished_at,
    })


async def get_node_log(request: web.Request) -> web.Response:
    """A node's stdout or stderr from `?offset=` (see node_logs.py)."""
    parts = request.app[API_PARTS]
    task_id = _task_id(request)
    raw_id = request.match_info["node_id"]
    if not is_node_id(raw_id):
        raise InvalidRequest(f"node id must be a positive integer, got {raw_id[:40]!r}")
    node = await parts.store.get_node(task_id, int(raw_id))
    return await node_log(request, node_dir(parts.state_dir, task_id, node.id))


async def get_report(request: web.Request) -> web.Response:
    """The task's search as one self-contained HTML page (see report_html.py)."""
    parts = request.app[API_PARTS]
    task = await parts.store.get_task(_task_id(request))
    page = await report_page(parts.store, parts.state_dir, await task_view(parts, task),
                             time.time())
    return web.Response(text=page, content_type="text/html", charset="utf-8")


async def events(request: web.Request) -> web.StreamResponse:
    """Newline-delimited JSON events; `?task_id=` narrows to one task (which must exist)."""
    parts = request.app[API_PARTS]
    task_id = request.query.get("task_id")
    if task_id is not None:
        await parts.store.get_task(_task_id(request, task_id))

    def accept(event: Event) -> bool:
        return task_id is None or event.task_id == task_id

    response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    await response.prepare(request)
    bus: EventBus = parts.bus
    async with bus.subscribe(accept) as sub:
        await response.write(b'{"type": "hello"}\n')
        quiet_s = 0.0
        # A client that left is noticed within a poll, not only when a write fails.
        while request.transport is not None and not request.transport.is_closing():
            try:
                event = await asyncio.wait_for(sub.get(), STREAM_POLL_S)
                line = event.to_dict()
            except TimeoutError:
                quiet_s += STREAM_POLL_S
                if quiet_s < HEARTBEAT_S:
                    continue
                line = {"type": "heartbeat", "ts": time.time()}
            quiet_s = 0.0
            try:
                await response.write(json.dumps(line).encode() + b"\n")
            except (ConnectionResetError, RuntimeError):
                break
    return response


async def openapi(request: web.Request) -> web.Response:
    """The OpenAPI 3.1 document describing these routes."""
    return web.Response(body=openapi_json(), content_type="application/json")


def build_app(parts: ApiParts) -> web.Application:
    """The API on `parts`; every route here is described in openapi.py."""
    # errors_as_json is outermost, so a refused peer gets the JSON error shape too.
    app = web.Application(middlewares=[errors_as_json, admit_peer],
                          client_max_size=MAX_BODY_BYTES)
    app[API_PARTS] = parts
    # No implicit HEAD: the published spec lists every method the API answers.
    app.router.add_get("/v1/health", health, allow_head=False)
    app.router.add_get("/v1/openapi.json", openapi, allow_head=False)
    app.router.add_post("/v1/tasks", submit_task)
    app.router.add_get("/v1/tasks", list_tasks, allow_head=False)
    app.router.add_get("/v1/tasks/{task_id}", get_task, allow_head=False)
    app.router.add_post("/v1/tasks/{task_id}/cancel", cancel_task)
    app.router.add_get("/v1/tasks/{task_id}/nodes", list_nodes, allow_head=False)
    app.router.add_get("/v1/tasks/{task_id}/nodes/{node_id}", get_node, allow_head=False)
    app.router.add_get("/v1/tasks/{task_id}/nodes/{node_id}/log", get_node_log,
                       allow_head=False)
    app.router.add_get("/v1/tasks/{task_id}/report.html", get_report, allow_head=False)
    app.router.add_routes(export.routes())
    app.router.add_get("/v1/events", events, allow_head=False)
    app.router.add_get("/v1/slots", slots, allow_head=False)
    return app


__all__ = ["API_PARTS", "ApiParts", "build_app", "current_peer", "task_view"]
