"""Typed errors. Each carries a stable `code` and the HTTP status the API answers with."""

from __future__ import annotations


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
