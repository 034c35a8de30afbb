"""structlog set-up: JSON lines on stdout, context (task_id, node_id) carried by contextvars."""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

import structlog
from structlog.typing import EventDict, FilteringBoundLogger, WrappedLogger

from mlmaster_daemon.redact import redact_value

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


_stream: list[TextIO] = []


def _redact_secrets(_logger: WrappedLogger, _name: str, event: EventDict) -> EventDict:
    """No API key reaches a log line, whatever a message quotes."""
    return {key: redact_value(value) for key, value in event.items()}


def configure_logging(level: str = "info", stream: TextIO | None = None) -> None:
    """Send every log line, ours and the libraries', as one JSON object to `stream` (stdout)."""
    out = stream or sys.stdout
    _stream[:] = [out]
    numeric = _LEVELS.get(level, logging.INFO)
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[
            *shared,
            structlog.processors.dict_tracebacks,
            _redact_secrets,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processor=structlog.processors.JSONRenderer(),
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name, _redact_secrets],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(numeric, logging.INFO) if numeric > logging.DEBUG else numeric)
    # aiohttp's access log is noise on a local socket; errors still come through.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def set_log_level(level: str) -> None:
    """Change the level live (a config reload), keeping where the lines go."""
    configure_logging(level, _stream[0] if _stream else None)


def get_logger(name: str) -> FilteringBoundLogger:
    logger: FilteringBoundLogger = structlog.get_logger(name)
    return logger
