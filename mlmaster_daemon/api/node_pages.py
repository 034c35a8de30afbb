"""GET /v1/tasks/{task_id}/nodes a page at a time: a tree of any size goes out in bounded
pieces (`?limit=`, `?after=`, and `next_after` to ask for the next), and `?fields=` trims each
node to the keys a client reads.

Pages follow node ids, the store's primary key, so a page costs the same wherever it starts,
and nodes added while a client pages through (always with higher ids) come in later pages.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mlmaster_daemon.api.parts import ApiParts
from mlmaster_daemon.errors import InvalidRequest
from mlmaster_daemon.store import Store

# A page when the client names no limit, and the largest it may ask for: a default that
# answers in a few milliseconds, a most that stays a few MB.
DEFAULT_PAGE = 200
MAX_PAGE = 5000
# The keys of NodeRecord.public(), in its order: what `fields` may name.
NODE_FIELDS = ("id", "parent_id", "parent_ids", "operator", "status", "metric",
               "holdout_metric", "visits", "value", "uct", "picked_by", "summary", "error")
# Node ids have at most nine digits (schemas.NODE_ID_PATTERN); so has `after`.
_MAX_ID_DIGITS = 9


@dataclass(frozen=True)
class PageRequest:
    """One page asked for: nodes with ids above `after` (all when None), at most `limit` of
    them, each with only `fields` (every field when None)."""

    after: int | None = None
    limit: int = DEFAULT_PAGE
    fields: tuple[str, ...] | None = None


def _shown(raw: str) -> str:
    return repr(raw if len(raw) <= 40 else raw[:40] + "...")


def page_request(query: Mapping[str, str]) -> PageRequest:
    """The page a request's query string asks for; InvalidRequest (400) saying what is
    allowed when `limit`, `after` or `fields` is malformed. Other keys are ignored."""
    limit = DEFAULT_PAGE
    raw = query.get("limit")
    if raw is not None:
        if not (raw.isascii() and raw.isdigit() and len(raw) <= 4
                and 1 <= int(raw) <= MAX_PAGE):
            raise InvalidRequest(f"limit must be a whole number from 1 to {MAX_PAGE} (nodes "
                                 f"per page, {DEFAULT_PAGE} by default), got {_shown(raw)}")
        limit = int(raw)
    after = None
    raw = query.get("after")
    if raw is not None:
        if not (raw.isascii() and raw.isdigit() and len(raw) <= _MAX_ID_DIGITS):
            raise InvalidRequest(
                "after must be a node id (a whole number of at most 9 digits; pass the last "
                f"page's next_after), got {_shown(raw)}")
        after = int(raw)
    fields = None
    raw = query.get("fields")
    if raw is not None:
        names = [name.strip() for name in raw.split(",")]
        unknown = [name for name in names if name not in NODE_FIELDS]
        if unknown or not raw.strip():
            what = "no field named" if not raw.strip() else f"unknown field {_shown(unknown[0])}"
            raise InvalidRequest(f"fields: {what}; give a comma-separated list of "
                                 f"{', '.join(NODE_FIELDS)}")
        fields = tuple(dict.fromkeys(names))
    return PageRequest(after, limit, fields)


async def node_page_body(parts: ApiParts, task_id: str, page: PageRequest, now: float,
                         ) -> bytes:
    """The JSON body of `node_page`, kept while no commit changed the database (see
    read_cache.py); TaskNotFound (404) for a task that is not there."""
    async def build() -> bytes:
        task = await parts.store.get_task(task_id)
        return json.dumps(await node_page(parts.store, task.id, page)).encode()

    key = ("nodes", await parts.store.data_version(), task_id, page)
    return await parts.reads.body(key, now, build)


async def node_page(store: Store, task_id: str, page: PageRequest) -> dict[str, Any]:
    """The page `page` of the task's nodes, by id: `{"task_id", "nodes", "next_after"}`,
    `next_after` the id to pass as `after` for the next page, null after the last."""
    # One node past the page tells whether another page follows.
    nodes = await store.node_summaries_page(task_id, page.after, page.limit + 1)
    more = len(nodes) > page.limit
    del nodes[page.limit:]
    next_after = nodes[-1]["id"] if more else None
    if page.fields is not None:
        keys = page.fields
        nodes = [{key: node[key] for key in keys} for node in nodes]
    return {"task_id": task_id, "nodes": nodes, "next_after": next_after}
