"""Config: TOML, then MLMASTER_* environment, then CLI flags; bad keys are named."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from pydantic import BaseModel

from mlmaster_daemon.config import Config, EndpointConfig, load_config
from mlmaster_daemon.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def test_the_shipped_default_config_is_valid() -> None:
    config = load_config(REPO / "configs" / "default.toml", environ={})
    assert config.search.policy == "mcts"
    assert config.coder.seed == 0


def test_environment_overrides_file_and_flags_override_environment(tmp_path: Path) -> None:
    file = tmp_path / "c.toml"
    file.write_text("[search]\nsteps = 7\nparallel = 3\n")
    env = {"MLMASTER_SEARCH__STEPS": "9", "MLMASTER_SOCKET": "/tmp/x.sock"}
    config = load_config(file, environ=env, overrides={"search.parallel": 5})
    assert config.search.steps == 9
    assert config.search.parallel == 5
    assert config.socket_path() == Path("/tmp/x.sock")


def test_unknown_key_is_named_with_its_source(tmp_path: Path) -> None:
    file = tmp_path / "c.toml"
    file.write_text("[search]\nstepz = 7\n")
    with pytest.raises(ConfigError, match=r"unknown key 'search.stepz'.*c\.toml"):
        load_config(file, environ={})


def test_bad_type_from_environment_names_key_and_variable() -> None:
    with pytest.raises(ConfigError, match=r"'search.parallel'.*MLMASTER_SEARCH__PARALLEL"):
        load_config(None, environ={"MLMASTER_SEARCH__PARALLEL": "many"})


def test_out_of_range_value_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"'execution.max_concurrent_nodes'"):
        load_config(None, environ={}, overrides={"execution.max_concurrent_nodes": 0})


def test_invalid_toml_and_missing_file_say_so(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[search\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad, environ={})
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.toml", environ={})


def test_a_config_written_for_an_older_version_still_loads(tmp_path: Path) -> None:
    # Keys that were removed because they allowed one value and did nothing.
    file = tmp_path / "c.toml"
    file.write_text('[coder]\nkind = "offline"\nseed = 3\n[execution]\nreconcile = "kill"\n')
    assert load_config(file, environ={}).coder.seed == 3


def test_a_removed_key_with_another_value_says_to_delete_the_line(tmp_path: Path) -> None:
    file = tmp_path / "c.toml"
    file.write_text('[coder]\nkind = "llm"\n')
    with pytest.raises(ConfigError, match="delete the line"):
        load_config(file, environ={})


def _config_keys(model: type[BaseModel], prefix: str = "") -> set[str]:
    """Dotted keys of every setting the config accepts; a sub-table's keys, not its name."""
    keys: set[str] = set()
    for name, field in model.model_fields.items():
        sub = field.annotation
        if isinstance(sub, type) and issubclass(sub, BaseModel):
            keys |= _config_keys(sub, f"{prefix}{name}.")
        elif sub is not None and EndpointConfig in getattr(sub, "__args__", ()):
            continue  # endpoint tables are shown commented out: checked below
        else:
            keys.add(prefix + name)
    return keys


def _toml_keys(table: dict[str, object], prefix: str = "") -> set[str]:
    keys: set[str] = set()
    for name, value in table.items():
        if isinstance(value, dict):
            keys |= _toml_keys(value, f"{prefix}{name}.")
        else:
            keys.add(prefix + name)
    return keys


def test_default_toml_holds_every_key_the_config_accepts() -> None:
    text = (REPO / "configs" / "default.toml").read_text()
    shipped = _toml_keys(tomllib.loads(text))
    assert _config_keys(Config) - shipped == set(), "add them to configs/default.toml"
    assert shipped - _config_keys(Config) == set(), "keys the config no longer accepts"


def test_default_toml_shows_every_model_endpoint_key_in_its_example() -> None:
    text = (REPO / "configs" / "default.toml").read_text()
    shown = set(re.findall(r"^# ([a-z_]+) = ", text, flags=re.MULTILINE))
    shown |= set(re.findall(r"# or ([a-z_]+) = ", text))
    assert set(EndpointConfig.model_fields) - shown == set(), "add them to the [llm.code] example"
