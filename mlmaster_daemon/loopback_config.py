"""The config sections of the daemon's loopback TCP listeners: MLE-bench's validation server and
the Prometheus metrics. Both answer without authentication, so both refuse any host but a
loopback address."""

from __future__ import annotations

import ipaddress

from pydantic import BaseModel, ConfigDict, Field, field_validator


class _Listener(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _loopback(value: str, server: str) -> str:
    try:
        loopback = ipaddress.ip_address(value).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ValueError(
            f"the {server} answers without authentication, so it listens only on a loopback "
            "address: use 127.0.0.1 or ::1")
    return value


class ValidationServerConfig(_Listener):
    """MLE-bench's validation server (POST /validate, GET /health) on a loopback TCP port,
    for agent containers that call it; it answers anyone who can reach the port, so it never
    listens beyond this machine."""

    # 0: off.
    port: int = Field(default=0, ge=0, le=65535)
    host: str = "127.0.0.1"
    # Uploads over this size are refused with 413.
    max_upload_mb: int = Field(default=1024, ge=1)

    @field_validator("host")
    @classmethod
    def _loopback_only(cls, value: str) -> str:
        return _loopback(value, "validation server")


class MetricsConfig(_Listener):
    """Prometheus metrics (`GET /metrics`, text format) on a loopback TCP port: task, node,
    model-call, slot and process figures, never task contents or keys; it answers anyone who
    can reach the port, so it never listens beyond this machine."""

    # 0: off.
    port: int = Field(default=0, ge=0, le=65535)
    host: str = "127.0.0.1"

    @field_validator("host")
    @classmethod
    def _loopback_only(cls, value: str) -> str:
        return _loopback(value, "metrics endpoint")
