"""GET /v1/tasks/{task_id}/nodes/{node_id}/log: a node's stdout or stderr from a byte offset,
so `mlmaster logs --follow` prints what is new. Bounded reads, never through a link."""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from mlmaster_daemon import untrusted
from mlmaster_daemon.errors import InvalidRequest
from mlmaster_daemon.redact import longest_secret_bytes, redact, secret_spans

STREAMS = ("stdout", "stderr")
# At most this many bytes per answer; a client asks again from next_offset.
MAX_CHUNK_BYTES = 64 * 1024


@dataclass(frozen=True)
class LogChunk:
    text: str
    offset: int
    next_offset: int
    size: int


def read_chunk(root: Path, name: str, offset: int, limit: int = MAX_CHUNK_BYTES) -> LogChunk:
    """Bytes [offset, offset + limit) of `root/name` as text, cut before a character the chunk
    splits; an absent or linked file reads as empty. An offset past the end (the log was
    started again) reads from 0. Secrets are redacted, one the edges cut masked with "*"."""
    try:
        with untrusted.open_file(root, name) as handle:
            fd = handle.fileno()
            size = os.fstat(fd).st_size
            if offset > size:
                offset = 0
            # A secret the chunk's edges cut is found in a window reaching past both edges.
            margin = max(0, longest_secret_bytes() - 1)
            lead = min(margin, offset)
            window = os.pread(fd, lead + limit + margin, offset - lead)
    except OSError:
        return LogChunk("", 0, 0, 0)
    data = _mask_cut_secrets(window, lead, min(len(window), lead + limit))
    try:
        text = data.decode()
    except UnicodeDecodeError as exc:
        # A character split at a full chunk's end comes whole with the next one (at the end
        # of the file it is replaced, so a reader never waits on bytes that may not come).
        full = offset + len(data) < size
        if full and exc.reason == "unexpected end of data" and exc.start > 0:
            data = data[:exc.start]
        text = data.decode(errors="replace")
    return LogChunk(redact(text.replace("\0", "")), offset, offset + len(data), size)


def _mask_cut_secrets(window: bytes, start: int, end: int) -> bytes:
    """`window[start:end]` with every byte of a secret that crosses `start` or `end` masked
    (the part inside would not match `redact` on its own); whole ones are left to `redact`."""
    chunk = bytearray(window[start:end])
    for first, last in secret_spans(window):
        if first < start < last or first < end < last:
            lo, hi = max(first, start) - start, min(last, end) - start
            chunk[lo:hi] = b"*" * (hi - lo)
    return bytes(chunk)


def _int_query(request: web.Request, key: str, default: int, maximum: int) -> int:
    raw = request.query.get(key)
    if raw is None:
        return default
    if not raw.isdigit() or len(raw) > 18:
        raise InvalidRequest(f"{key} must be a whole number of bytes, got {raw[:40]!r}")
    return min(int(raw), maximum)


async def node_log(request: web.Request, root: Path) -> web.Response:
    """The answer for the node whose workspace is `root` (the caller checked the ids)."""
    stream = request.query.get("stream", "stdout")
    if stream not in STREAMS:
        raise InvalidRequest(f"stream must be stdout or stderr, got {stream[:40]!r}")
    offset = _int_query(request, "offset", 0, 2**62)
    limit = _int_query(request, "limit", MAX_CHUNK_BYTES, MAX_CHUNK_BYTES) or MAX_CHUNK_BYTES
    chunk = await asyncio.to_thread(read_chunk, root, f"{stream}.log", offset, limit)
    return web.json_response({"stream": stream, "offset": chunk.offset,
                              "next_offset": chunk.next_offset, "size": chunk.size,
                              "text": chunk.text})
