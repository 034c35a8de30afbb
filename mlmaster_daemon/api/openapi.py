"""The OpenAPI 3.1 document of the v1 API, served at GET /v1/openapi.json.

It is written out by hand next to `build_app`; a test checks that the two list the same routes
and methods, and the fuzz test drives the daemon from this document.
"""

from __future__ import annotations

import functools
import json
from typing import Any

from mlmaster_daemon import __version__
from mlmaster_daemon.api.node_pages import DEFAULT_PAGE, MAX_PAGE, NODE_FIELDS
from mlmaster_daemon.api.schemas import NODE_ID_PATTERN, TASK_ID_PATTERN, SubmitRequest
from mlmaster_daemon.models import TaskState

JSON = "application/json"
NDJSON = "application/x-ndjson"
HTML = "text/html"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _reply(description: str, schema: str, media: str = JSON) -> dict[str, Any]:
    return {"description": description, "content": {media: {"schema": _ref(schema)}}}


def _error(description: str) -> dict[str, Any]:
    return _reply(description, "Error")


def _responses(ok: tuple[str, str, str], *codes: str) -> dict[str, Any]:
    """`ok` (status, description, schema), the errors `codes` and those every route has."""
    status, description, schema = ok
    media = {"EventLine": NDJSON, "HtmlPage": HTML}.get(schema, JSON)
    responses: dict[str, Any] = {status: _reply(description, schema, media)}
    for code in (*codes, "403", "405", "500", "503"):
        responses[code] = {"$ref": f"#/components/responses/{code}"}
    return responses


_TASK_ID = {
    "name": "task_id", "in": "path", "required": True,
    "description": "a task id as the daemon gives it",
    "schema": {"type": "string", "pattern": TASK_ID_PATTERN},
}
_LOG_QUERY = [
    {"name": "stream", "in": "query", "required": False,
     "schema": {"type": "string", "enum": ["stdout", "stderr"], "default": "stdout"}},
    {"name": "offset", "in": "query", "required": False,
     "description": "first byte to read; past the end (a log started again) reads from 0",
     "schema": {"type": "string", "pattern": "^[0-9]{1,18}$"}},
    {"name": "limit", "in": "query", "required": False,
     "description": "bytes to read, at most 65536",
     "schema": {"type": "string", "pattern": "^[0-9]{1,18}$"}},
]
_NODE_ID = {
    "name": "node_id", "in": "path", "required": True,
    "description": "a node id within the task (1, 2, ...)",
    "schema": {"type": "string", "pattern": NODE_ID_PATTERN},
}
_NODE_PAGE = [
    {"name": "limit", "in": "query", "required": False,
     "description": f"nodes per page: {DEFAULT_PAGE} by default, at most {MAX_PAGE}",
     "schema": {"type": "integer", "minimum": 1, "maximum": MAX_PAGE,
                "default": DEFAULT_PAGE}},
    {"name": "after", "in": "query", "required": False,
     "description": "only nodes with a higher id: the previous page's next_after (the first "
                    "page when absent)",
     "schema": {"type": "string", "pattern": NODE_ID_PATTERN}},
    {"name": "fields", "in": "query", "required": False,
     "description": "only these keys of each node, comma-separated (every key when absent); "
                    "an unknown name is a 400 listing those allowed",
     "style": "form", "explode": False,
     "schema": {"type": "array", "minItems": 1,
                "items": {"type": "string", "enum": list(NODE_FIELDS)}}},
]
_EVENTS_TASK = {
    "name": "task_id", "in": "query", "required": False,
    "description": "only this task's events (the task must exist)",
    "schema": {"type": "string", "pattern": TASK_ID_PATTERN},
}

_PATHS: dict[str, Any] = {
    "/v1/health": {"get": {
        "operationId": "health", "summary": "Whether the daemon is up, and its version",
        "responses": _responses(("200", "the daemon is up", "Health")),
    }},
    "/v1/openapi.json": {"get": {
        "operationId": "openapi", "summary": "This document",
        "responses": _responses(("200", "the OpenAPI document", "OpenApiDocument")),
    }},
    "/v1/tasks": {
        "post": {
            "operationId": "submitTask",
            "summary": "Submit a competition folder; the search starts when a place is free",
            "description": (
                "The folder must lie under one of [daemon] allowed_roots, outside the daemon's "
                "state directory, and be readable by the submitting user (mode bits)."),
            "requestBody": {"required": True,
                            "content": {JSON: {"schema": _ref("SubmitRequest")}}},
            "responses": _responses(("201", "the task, queued", "Task"), "400", "413"),
        },
        "get": {
            "operationId": "listTasks",
            "summary": "The newest tasks (at most `limit`, 500 by default and at most), "
                       "oldest first; `total` counts them all",
            "parameters": [{"name": "limit", "in": "query", "required": False,
                            "schema": {"type": "integer", "minimum": 1, "maximum": 500}}],
            "responses": _responses(("200", "the tasks", "TaskList"), "400"),
        },
    },
    "/v1/tasks/{task_id}": {"get": {
        "operationId": "getTask", "summary": "One task",
        "parameters": [_TASK_ID],
        "responses": _responses(("200", "the task", "Task"), "400", "404"),
    }},
    "/v1/tasks/{task_id}/cancel": {"post": {
        "operationId": "cancelTask",
        "summary": "Cancel a task (its submitter, root, the daemon's user or an admin group)",
        "parameters": [_TASK_ID],
        "responses": _responses(("200", "the task, cancelled", "Task"), "400", "404", "409"),
    }},
    "/v1/tasks/{task_id}/nodes": {"get": {
        "operationId": "listNodes",
        "summary": "A page of the task's search tree, node by node, by id",
        "description": (
            "A tree of any size comes in pages: ask again with after=next_after until "
            "next_after is null. Nodes added meanwhile have higher ids, so they come in later "
            "pages; a node already sent may have changed since."),
        "parameters": [_TASK_ID, *_NODE_PAGE],
        "responses": _responses(("200", "the nodes", "NodeList"), "400", "404"),
    }},
    "/v1/tasks/{task_id}/nodes/{node_id}": {"get": {
        "operationId": "getNode", "summary": "One node: plan, code, output, analysis",
        "parameters": [_TASK_ID, _NODE_ID],
        "responses": _responses(("200", "the node", "Node"), "400", "404"),
    }},
    "/v1/tasks/{task_id}/nodes/{node_id}/log": {"get": {
        "operationId": "getNodeLog",
        "summary": "A node's stdout or stderr from a byte offset, at most 64 KiB",
        "parameters": [_TASK_ID, _NODE_ID, *_LOG_QUERY],
        "responses": _responses(("200", "the chunk", "NodeLog"), "400", "404"),
    }},
    "/v1/tasks/{task_id}/report.html": {"get": {
        "operationId": "getTaskReport",
        "summary": "The task's search as one self-contained HTML page (`mlmaster report-html`)",
        "description": (
            "Tree (zoom, pan, colour by status or metric, click a node for its plan, code, "
            "output and memory), best score, tokens and cost, and slot occupancy over time, "
            "operator and failure-cause counts. Scripts, styles and data are inline: the page "
            "reaches no network. Each node's texts are cut to a cap, said where it applies."),
        "parameters": [_TASK_ID],
        "responses": _responses(("200", "the page", "HtmlPage"), "400", "404"),
    }},
    "/v1/tasks/{task_id}/export": {"get": {
        "operationId": "exportTask",
        "summary": "The task's finished nodes for machines (`mlmaster export`)",
        "description": (
            "format=journal: AIDE's journal.json (application/json). format=trajectories: one "
            "JSON line per finished node, in node id order: the prompt context, plan and code, "
            "outcome, step reward and SFT pair (application/x-ndjson). mlmaster_daemon/export.py "
            "documents the rewards."),
        "parameters": [_TASK_ID, {"name": "format", "in": "query", "required": True,
                                  "schema": {"type": "string",
                                             "enum": ["journal", "trajectories"]}}],
        "responses": {**_responses(("200", "", "Journal"), "400", "404"), "200": {
            "description": "the export, streamed",
            "content": {JSON: {"schema": _ref("Journal")},
                        NDJSON: {"schema": _ref("TrajectoryStep")}}}},
    }},
    "/v1/events": {"get": {
        "operationId": "events",
        "summary": "Events as newline-delimited JSON; the stream stays open",
        "parameters": [_EVENTS_TASK],
        "responses": _responses(
            ("200", "a hello line, then events and heartbeats", "EventLine"), "400", "404"),
    }},
    "/v1/slots": {"get": {
        "operationId": "slots", "summary": "Execution slots, who holds them, GPU samples",
        "responses": _responses(("200", "the slots", "Slots")),
    }},
}

_NUMBER_OR_NULL = {"type": ["number", "null"]}
# A node in a listing: the keys `fields` names, all of them by default.
_NODE_SUMMARY = {"type": "object", "properties": {name: {} for name in NODE_FIELDS},
                 "additionalProperties": False}
_TASK_PROPERTIES: dict[str, Any] = {
    "id": {"type": "string", "pattern": TASK_ID_PATTERN},
    "name": {"type": "string"},
    "state": {"type": "string", "enum": [state.value for state in TaskState]},
    "error": {"type": ["string", "null"]},
    "task_dir": {"type": "string"},
    "policy": {"type": "string"},
    "metric": {"type": "string"},
    "lower_is_better": {"type": "boolean"},
    "steps": {"type": "integer"},
    "time_limit_s": {"type": "number"},
    "node_timeout_s": {"type": "number"},
    "nodes_total": {"type": "integer"},
    "nodes_done": {"type": "integer"},
    "best": {"type": ["object", "null"]},
    "top": {"type": "array", "items": {"type": "object"}},
    "holdout": {"type": ["object", "null"],
                "description": "the hidden holdout: {state: on, rows, fraction, group_column, "
                               "columns, warning?} or {state: off, reason}; null until the "
                               "task first starts"},
    "selection": {"type": ["object", "null"],
                  "description": "the final choice: {rule, node_id, metric, holdout_metric, "
                                 "reason, ensemble?: {kept, reason, members?, method?, "
                                 "holdout_metric?, best_single?}}; null until the task ends"},
    "usage": {"type": "object"},
    "budget": {"type": "object"},
    "submitter": {"type": ["string", "null"],
                  "description": "user name of the submitter (its uid when it has none)"},
    "submitter_uid": {"type": ["integer", "null"]},
    "created_at": {"type": "number"},
    "started_at": _NUMBER_OR_NULL,
    "finished_at": _NUMBER_OR_NULL,
}


def _components() -> dict[str, Any]:
    submit = SubmitRequest.model_json_schema(ref_template="#/components/schemas/{model}")
    schemas: dict[str, Any] = {
        "Error": {
            "type": "object", "required": ["error"], "additionalProperties": False,
            "properties": {"error": {
                "type": "object", "required": ["code", "message"],
                "properties": {
                    "code": {"type": "string", "description": "stable, e.g. forbidden"},
                    "message": {"type": "string",
                                "description": "what is wrong and what to do"},
                },
            }},
        },
        "SubmitRequest": submit,
        "Task": {"type": "object", "required": list(_TASK_PROPERTIES),
                 "properties": _TASK_PROPERTIES},
        "TaskList": {"type": "object", "required": ["tasks", "total"],
                     "properties": {"tasks": {"type": "array", "items": _ref("Task")},
                                    "total": {"type": "integer"}}},
        "Node": {"type": "object", "required": ["id", "status"],
                 "properties": {"id": {"type": "integer"}, "parent_id": {
                     "type": ["integer", "null"]}, "status": {"type": "string"},
                     "operator": {"type": "string"}, "metric": _NUMBER_OR_NULL,
                     "holdout_metric": {**_NUMBER_OR_NULL,
                                        "description": "its score on the hidden holdout"}}},
        "NodeLog": {"type": "object",
                    "required": ["stream", "offset", "next_offset", "size", "text"],
                    "properties": {"stream": {"type": "string", "enum": ["stdout", "stderr"]},
                                   "offset": {"type": "integer"},
                                   "next_offset": {"type": "integer"},
                                   "size": {"type": "integer"}, "text": {"type": "string"}}},
        "NodeList": {"type": "object", "required": ["task_id", "nodes", "next_after"],
                     "properties": {
                         "task_id": {"type": "string"},
                         "nodes": {"type": "array", "items": _NODE_SUMMARY,
                                   "description": "at most `limit`, by id"},
                         "next_after": {"type": ["integer", "null"],
                                        "description": "pass as `after` for the next page; "
                                                       "null when this page is the last"}}},
        "Health": {"type": "object", "required": ["status", "version"],
                   "properties": {"status": {"const": "ok"}, "version": {"type": "string"},
                                  "uptime_s": {"type": "number"},
                                  "tasks_running": {"type": "integer"},
                                  "llm": {"type": "array"}}},
        "Slots": {"type": "object"},
        "OpenApiDocument": {"type": "object", "required": ["openapi", "paths"]},
        "HtmlPage": {"type": "string", "description": "an HTML document (UTF-8)"},
        "Journal": {"type": "object", "required": ["nodes", "node2parent", "__version"]},
        "TrajectoryStep": {"type": "object", "required": ["task_id", "step", "node_id",
                           "state", "action", "outcome", "reward", "sft"]},
        "EventLine": {"type": "object", "required": ["type"],
                      "properties": {"type": {"type": "string"}}},
    }
    # Models nested in SubmitRequest (none today) would come as $defs: lift them up.
    schemas.update(submit.pop("$defs", {}))
    responses = {
        "400": _error("the request is malformed: a bad id, body or field (invalid_request), "
                      "or a task folder that cannot be loaded (invalid_task_dir)"),
        "403": _error("forbidden: the peer may not use the daemon, may not read the task "
                      "folder (or something a job would see in its public folder), the folder "
                      "is outside allowed_roots or inside the state directory, or the peer may "
                      "not cancel this task; job_process: the peer is one of the daemon's "
                      "jobs (generated code), which may never use the API"),
        "404": _error("no such task or node (task_not_found, node_not_found)"),
        "405": _error("the method is not allowed on this path (method_not_allowed)"),
        "409": _error("the task is already finished, cancelled or failed"),
        "413": _error("the body is larger than 64 KiB (body_too_large)"),
        "500": _error("a bug in the daemon (internal); its log has the details"),
        "503": _error("the daemon is stopping (daemon_stopping) or cannot write its state "
                      "(storage_fault: a full or read-only disk); try again later"),
    }
    return {"schemas": schemas, "responses": responses}


@functools.cache
def _document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "mlmaster-daemon API",
            "version": __version__,
            "description": (
                "JSON over the daemon's Unix socket (e.g. `curl --unix-socket SOCKET "
                "http://localhost/v1/health`). The peer's uid is read from the socket: "
                "only root, the daemon's user, [daemon] allowed_uids and members of "
                "allowed_groups get past 403."),
        },
        "servers": [{"url": "http://localhost", "description": "the Unix socket"}],
        "paths": _PATHS,
        "components": _components(),
    }


@functools.cache
def openapi_json() -> bytes:
    """The document serialised, built once."""
    return json.dumps(_document(), indent=1).encode()
