"""Request shapes the API accepts, validated strictly: a wrong JSON type is a 400, not a guess.

Every field is bounded, so what a client sends can neither overflow SQLite nor reach a path
or a subprocess with a NUL byte or a lone surrogate in it.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
)

# The form models.new_task_id() gives: "t" and 11 lowercase hex digits.
TASK_ID_PATTERN = r"^t[0-9a-f]{11}$"
# Node ids are positive integers; nine digits keep them far inside SQLite's INTEGER.
NODE_ID_PATTERN = r"^[0-9]{1,9}$"
_TASK_ID = re.compile(TASK_ID_PATTERN)
_NODE_ID = re.compile(NODE_ID_PATTERN)


def is_task_id(value: str) -> bool:
    """Whether `value` has the form of a task id (it may still name no task)."""
    return _TASK_ID.fullmatch(value) is not None


def is_node_id(value: str) -> bool:
    """Whether `value` has the form of a node id (ASCII digits only, at most nine)."""
    return _NODE_ID.fullmatch(value) is not None


def _plain_text(value: str) -> str:
    if "\x00" in value:
        raise ValueError("must not contain a NUL byte")
    try:
        # Pydantic lets a lone surrogate through some fields; SQLite and paths cannot take it.
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode text (no lone surrogates)") from None
    return value


def _absolute(value: str) -> str:
    if not value.startswith("/"):
        raise ValueError(
            "must be an absolute path: the daemon does not know your working directory "
            "(the CLI resolves it for you)")
    return value


Text = Annotated[StrictStr, AfterValidator(_plain_text)]
AbsolutePath = Annotated[StrictStr, AfterValidator(_plain_text), AfterValidator(_absolute)]


class SubmitRequest(BaseModel):
    """The body of POST /v1/tasks: a competition folder, and overrides of the config."""

    model_config = ConfigDict(extra="forbid", strict=True)

    task_dir: AbsolutePath = Field(min_length=1, max_length=4096,
                                   description="absolute path of the competition folder")
    name: Text | None = Field(default=None, min_length=1, max_length=200)
    steps: StrictInt | None = Field(default=None, ge=1, le=100_000)
    time_limit_s: StrictFloat | None = Field(default=None, gt=0, le=30 * 86400,
                                             allow_inf_nan=False)
    node_timeout_s: StrictFloat | None = Field(default=None, gt=0, le=7 * 86400,
                                               allow_inf_nan=False)
    policy: Text | None = Field(default=None, min_length=1, max_length=32)
    metric: Text | None = Field(default=None, min_length=1, max_length=32)
    lower_is_better: StrictBool | None = None
    target: Text | None = Field(default=None, min_length=1, max_length=1024)
    id_column: Text | None = Field(default=None, min_length=1, max_length=1024)
    max_tokens: StrictInt | None = Field(default=None, ge=0, le=10**12)
    max_cost: StrictFloat | None = Field(default=None, ge=0, le=1e9, allow_inf_nan=False)
