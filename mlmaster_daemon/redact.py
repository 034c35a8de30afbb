"""Secrets the daemon holds (API keys) never leave it in text: they are cut from whatever goes
to a prompt, the database, the API or a log.

The keys are registered where they are read (`coders.llm.endpoint.read_api_key`); `redact` replaces
every registered secret in a text. The sandbox keeps key files and the daemon's environment
from jobs; this is the second line, for a way in nobody foresaw (a job that found a key and
printed it, a model that echoed one).
"""

from __future__ import annotations

from typing import Any

MARK = "[redacted]"
# Shorter values would turn up in ordinary text by chance; no real key is this short.
MIN_SECRET_CHARS = 6

_secrets: set[str] = set()


def register_secret(value: str | None) -> None:
    """Treat `value` as a secret from now on (ignored when empty or too short to be a key)."""
    if value is not None and len(value.strip()) >= MIN_SECRET_CHARS:
        _secrets.add(value.strip())


def forget_secrets() -> None:
    """Drop every registered secret (tests; a daemon keeps them for its life)."""
    _secrets.clear()


def redact(text: str) -> str:
    """`text` with every registered secret replaced by [redacted]."""
    if not _secrets:
        return text
    # Longest first, so a secret that contains another is cut whole.
    for secret in sorted(_secrets, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, MARK)
    return text


def longest_secret_bytes() -> int:
    """The length in UTF-8 bytes of the longest registered secret (0 when none)."""
    return max((len(secret.encode()) for secret in _secrets), default=0)


def secret_spans(data: bytes) -> list[tuple[int, int]]:
    """The [start, end) byte ranges of every registered secret found in `data`."""
    spans: list[tuple[int, int]] = []
    for secret in _secrets:
        needle = secret.encode()
        start = data.find(needle)
        while start != -1:
            spans.append((start, start + len(needle)))
            start = data.find(needle, start + 1)
    return sorted(spans)


def redact_value(value: Any) -> Any:
    """`redact` applied to a string, or to the strings inside lists, tuples and dicts."""
    if isinstance(value, str):
        return redact(value)
    if not _secrets:
        return value
    if isinstance(value, dict):
        return {k: redact_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(redact_value(v) for v in value)
    return value
