"""`task.toml`: the settings a competition folder gives about itself, read bounded and checked
key by key."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from mlmaster_daemon import untrusted
from mlmaster_daemon.errors import InvalidTaskDir

TASK_TOML = "task.toml"
MAX_TASK_TOML_BYTES = 64 * 1024
TASK_TOML_TYPES: dict[str, type] = {
    "metric": str,
    "lower_is_better": bool,
    "target": str,
    "targets": list,
    "id_column": str,
    "name": str,
    "train_file": str,
    "test_file": str,
    "sample_submission": str,
    "competition_id": str,
    "map_k": int,
    # A table: what one node script asks of a Ray worker (ray_config.NodeResources).
    "resources": dict,
    # A table: the hidden holdout for this task (holdout_config.TaskHoldout).
    "holdout": dict,
}


def read_task_toml(root: Path) -> dict[str, Any]:
    """The checked settings of `root/task.toml`, or an empty dict when there is none."""
    toml_path = root / TASK_TOML
    if not toml_path.is_file():
        return {}
    try:
        # A link is refused: task.toml is the folder's own file, never one elsewhere.
        with untrusted.open_file(root, TASK_TOML) as handle:
            data = handle.read(MAX_TASK_TOML_BYTES + 1)
        if len(data) > MAX_TASK_TOML_BYTES:
            raise InvalidTaskDir(f"{toml_path} is larger than {MAX_TASK_TOML_BYTES // 1024} KiB; "
                                 "a task.toml holds a few settings: fix it")
        raw = tomllib.loads(data.decode("utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise InvalidTaskDir(f"{toml_path} is not valid TOML ({exc}); fix the syntax") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidTaskDir(f"cannot read {toml_path}: {exc}; make it a regular, readable "
                             "file") from exc
    allowed = ", ".join(TASK_TOML_TYPES)
    for key, value in raw.items():
        expected = TASK_TOML_TYPES.get(key)
        if expected is None:
            raise InvalidTaskDir(
                f"{toml_path} has unknown key {key!r}: remove it (allowed keys: {allowed})"
            )
        if expected is dict:
            _check_table(toml_path, key, value)
            continue
        if expected is list and not (isinstance(value, list) and value
                                     and all(isinstance(v, str) and v for v in value)):
            raise InvalidTaskDir(f"{toml_path}: key {key!r} must be a list of column names, "
                                 f'like ["a", "b"], got {value!r}')
        if expected is int and (isinstance(value, bool) or not isinstance(value, int)
                                or value < 1):
            raise InvalidTaskDir(f"{toml_path}: key {key!r} must be a positive whole number, "
                                 f"got {value!r}")
        if not isinstance(value, expected):
            kind = "true or false" if expected is bool else "a quoted string"
            raise InvalidTaskDir(
                f"{toml_path}: key {key!r} must be {kind}, got {type(value).__name__} {value!r}"
            )
        if isinstance(value, str) and not value.strip() and key not in ("train_file",
                                                                        "test_file"):
            raise InvalidTaskDir(f"{toml_path}: key {key!r} must not be empty")
    return dict(raw)


# An example of each table, for the error a wrong one gets.
_EXAMPLES = {
    "resources": "num_cpus = 4, num_gpus = 1, memory_mb = 16000, custom = {a100 = 1}",
    "holdout": 'enabled = false, fraction = 0.2, group_column = "patient_id"',
}


def _check_table(toml_path: Path, key: str, value: object) -> None:
    from pydantic import BaseModel, ValidationError

    from mlmaster_daemon.holdout_config import TaskHoldout
    from mlmaster_daemon.ray_config import NodeResources

    model: type[BaseModel] = NodeResources if key == "resources" else TaskHoldout
    if not isinstance(value, dict):
        raise InvalidTaskDir(f"{toml_path}: [{key}] must be a table, like [{key}] "
                             f"{_EXAMPLES[key]}")
    keys = ", ".join(model.model_fields)
    try:
        model.model_validate(value)
    except ValidationError as exc:
        problems = "; ".join(f"{key}.{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
                             for e in exc.errors())
        raise InvalidTaskDir(f"{toml_path}: {problems} (keys: {keys})") from None
