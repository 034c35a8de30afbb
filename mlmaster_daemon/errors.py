"""Typed errors. Each carries a stable `code` and the HTTP status the API answers with."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mlmaster_daemon.models import CallRecord


class MlmasterError(Exception):
    """Base of every error a user may see. The message says what is wrong and what to do."""

    code = "error"
    status = 400

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConfigError(MlmasterError):
    code = "invalid_config"


class InvalidRequest(MlmasterError):
    code = "invalid_request"


class InvalidTaskDir(MlmasterError):
    code = "invalid_task_dir"


class TaskNotFound(MlmasterError):
    code = "task_not_found"
    status = 404


class NodeNotFound(MlmasterError):
    code = "node_not_found"
    status = 404


class TaskNotCancellable(MlmasterError):
    code = "task_not_cancellable"
    status = 409


class Forbidden(MlmasterError):
    """The peer may not do this (socket access, a task folder, cancelling another's task)."""

    code = "forbidden"
    status = 403


class DaemonStopping(MlmasterError):
    """The daemon is stopping and takes no new work; submit again once it is back."""

    code = "daemon_stopping"
    status = 503


class StoreError(MlmasterError):
    code = "store_error"
    status = 500


class DaemonUnreachable(MlmasterError):
    """The CLI could not talk to the daemon's socket."""

    code = "daemon_unreachable"
    status = 503


class GradingError(MlmasterError):
    """A submission could not be scored against the hidden answers."""

    code = "grading_error"


class LlmError(MlmasterError):
    """The model refused or could not answer usefully; the node fails with this reason."""

    code = "llm_error"
    status = 502


class EndpointUnavailable(LlmError):
    """The endpoint kept failing after retries; the task waits for it to come back."""

    code = "llm_unavailable"
    status = 503


class NoCodeInAnswer(LlmError):
    """No code after every retry; carries the calls so they are still accounted."""

    code = "llm_no_code"

    def __init__(self, message: str, calls: tuple[CallRecord, ...]):
        super().__init__(message)
        self.calls = calls
