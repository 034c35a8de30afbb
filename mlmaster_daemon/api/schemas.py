"""Request bodies the API accepts, validated strictly: a wrong JSON type is a 400, not a guess."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr


class SubmitRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    task_dir: StrictStr = Field(min_length=1, max_length=4096)
    name: StrictStr | None = Field(default=None, min_length=1, max_length=200)
    steps: StrictInt | None = Field(default=None, ge=1, le=100_000)
    time_limit_s: StrictInt | StrictFloat | None = Field(default=None, gt=0, le=30 * 86400)
    node_timeout_s: StrictInt | StrictFloat | None = Field(default=None, gt=0, le=7 * 86400)
    policy: StrictStr | None = None
    metric: StrictStr | None = None
    lower_is_better: StrictBool | None = None
    target: StrictStr | None = Field(default=None, min_length=1)
    id_column: StrictStr | None = Field(default=None, min_length=1)
    max_tokens: StrictInt | None = Field(default=None, ge=0)
    max_cost: StrictInt | StrictFloat | None = Field(default=None, ge=0)
