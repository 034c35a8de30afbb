"""The `[execution]` keys of the cluster backend: where node scripts run ("local": this
machine's slots; "ray": the tasks of a Ray cluster), how to reach the cluster, what each node
script asks of it, and what a lost worker does. `ExecutionConfig` takes them by inheritance,
so they sit in `[execution]` beside the local keys."""

from __future__ import annotations

import importlib.util
import re
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

if TYPE_CHECKING:
    from mlmaster_daemon.config import ExecutionConfig

RAY_EXTRA = "pip install 'mlmaster-daemon[ray]'"
# ray://HOST:PORT (Ray Client) or HOST:PORT (the head's GCS), as `ray.init(address=...)` takes.
_ADDRESS = re.compile(r"^(ray://)?[A-Za-z0-9._\-\[\]:]+:\d{1,5}$")


class ClusterBackendConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    backend: Literal["local", "ray"] = "local"
    # "": a single-machine cluster the daemon starts itself; "auto": the cluster this machine
    # belongs to (`ray start`); "ray://HOST:PORT" or "HOST:PORT": that cluster's head.
    ray_address: str = ""
    # Whether every worker sees the state dir at the same path (NFS...): then a node's
    # workspace is used as is; otherwise input, code and outputs travel through Ray.
    ray_shared_fs: bool = True
    # What each node script asks of the cluster: CPUs, GPUs (a fraction shares one), memory
    # in MiB (0: none asked; the job's memory limit then comes from `memory_limit_mb`), and
    # custom resources a worker advertises (`ray start --resources`).
    ray_num_cpus: float = Field(default=1.0, gt=0)
    ray_num_gpus: float = Field(default=0.0, ge=0)
    ray_memory_mb: int = Field(default=0, ge=0)
    ray_resources: dict[str, float] = {}
    # A node whose worker died: "fail" it, or "retry" it once on another worker.
    ray_worker_lost: Literal["fail", "retry"] = "fail"

    @field_validator("ray_address")
    @classmethod
    def _address(cls, value: str) -> str:
        if value in ("", "auto") or _ADDRESS.match(value):
            return value
        raise ValueError('use "" (a cluster the daemon starts), "auto" or "ray://HOST:PORT"')

    @field_validator("ray_num_gpus")
    @classmethod
    def _gpu_share(cls, value: float) -> float:
        return gpu_share(value)

    @field_validator("ray_resources", mode="before")
    @classmethod
    def _parse_resources(cls, value: object) -> object:
        # "a100=1,fast_disk=0.5": one line, in TOML or an environment variable.
        if not isinstance(value, str):
            return value
        pairs = [part.split("=", 1) for part in value.split(",") if part.strip()]
        if any(len(pair) != 2 for pair in pairs):
            raise ValueError('write custom resources as "name=amount,name=amount"')
        return {name.strip(): amount.strip() for name, amount in pairs}

    @field_validator("ray_resources")
    @classmethod
    def _custom_only(cls, value: dict[str, float]) -> dict[str, float]:
        return custom_only(value, "ray_num_cpus, ray_num_gpus and ray_memory_mb")

    @model_validator(mode="after")
    def _ray_installed(self) -> ClusterBackendConfig:
        if self.backend == "ray" and importlib.util.find_spec("ray") is None:
            raise ValueError(f'backend "ray" needs Ray on this machine: {RAY_EXTRA}')
        return self


def gpu_share(value: float) -> float:
    if value > 1 and not value.is_integer():
        raise ValueError("a fraction of one GPU (0.5) or a whole number of GPUs (2)")
    return value


def custom_only(value: dict[str, float],
                keys: str = "num_cpus, num_gpus and memory_mb") -> dict[str, float]:
    reserved = {"CPU", "GPU", "memory", "object_store_memory"} & set(value)
    if reserved:
        raise ValueError(f"{sorted(reserved)} are set with {keys}, not as custom resources")
    if any(amount <= 0 for amount in value.values()):
        raise ValueError("each custom resource asks a positive amount")
    return value


class NodeResources(BaseModel):
    """What one node script of a task asks of a Ray worker (`[resources]` in its task.toml):
    each key set replaces the `[execution] ray_*` one of the daemon's config for that task."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    num_cpus: float | None = Field(default=None, gt=0)
    num_gpus: float | None = Field(default=None, ge=0)
    memory_mb: int | None = Field(default=None, ge=0)
    custom: dict[str, float] | None = None

    @field_validator("num_cpus", "num_gpus", mode="before")
    @classmethod
    def _whole_numbers_too(cls, value: object) -> object:
        # TOML's 1 is an int: a count of CPUs or GPUs may be written either way.
        return float(value) if isinstance(value, int) and not isinstance(value, bool) else value

    @field_validator("custom", mode="before")
    @classmethod
    def _custom_amounts(cls, value: object) -> object:
        if isinstance(value, dict):
            return {k: float(v) if isinstance(v, int) and not isinstance(v, bool) else v
                    for k, v in value.items()}
        return value

    @field_validator("num_gpus")
    @classmethod
    def _gpu_share(cls, value: float | None) -> float | None:
        return None if value is None else gpu_share(value)

    @field_validator("custom")
    @classmethod
    def _custom(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        return None if value is None else custom_only(value)

    def apply(self, execution: ExecutionConfig) -> ExecutionConfig:
        """`execution` with this task's asks in place of the config's."""
        changes: dict[str, Any] = {}
        if self.num_cpus is not None:
            changes["ray_num_cpus"] = self.num_cpus
        if self.num_gpus is not None:
            changes["ray_num_gpus"] = self.num_gpus
        if self.memory_mb is not None:
            changes["ray_memory_mb"] = self.memory_mb
        if self.custom is not None:
            changes["ray_resources"] = dict(self.custom)
        return execution.model_copy(update=changes) if changes else execution
