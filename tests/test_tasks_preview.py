"""data_preview: what it shows and that it stays within its bound."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from mlmaster_daemon.tasks.competition import load_task
from mlmaster_daemon.tasks.examples import build_example
from mlmaster_daemon.tasks.preview import TRUNCATION_MARKER, data_preview
from mlmaster_daemon.tasks.spec import TaskSpec


@pytest.fixture(scope="module")
def specs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, TaskSpec]:
    base = tmp_path_factory.mktemp("preview")
    return {name: load_task(build_example(name, base / name)) for name in ("wine", "diabetes")}


def test_preview_shows_files_shape_columns_and_class_distribution(
    specs: dict[str, TaskSpec],
) -> None:
    text = data_preview(specs["wine"], max_chars=20_000)
    assert "train.csv (" in text and "KB)" in text
    assert "train.csv: 133 rows x 16 columns" in text
    assert "alcohol_band: " in text and "missing" in text and "unique 3" in text
    assert "Target cultivar distribution (3 classes)" in text and "class_1:" in text
    assert "First 3 rows:" in text
    assert "id,class_0,class_1,class_2" in text


def test_preview_summarises_a_regression_target(specs: dict[str, TaskSpec]) -> None:
    text = data_preview(specs["diabetes"], max_chars=20_000)
    assert "Target progression (regression) summary" in text and "mean" in text


@pytest.mark.parametrize("limit", [0, 10, 300, 1000])
def test_preview_never_exceeds_its_bound(specs: dict[str, TaskSpec], limit: int) -> None:
    text = data_preview(specs["wine"], max_chars=limit)
    assert len(text) <= limit
    if limit >= len(TRUNCATION_MARKER):
        assert text.endswith(TRUNCATION_MARKER)


def test_preview_needs_no_private_folder(specs: dict[str, TaskSpec], tmp_path: Path) -> None:
    copy = shutil.copytree(specs["diabetes"].root, tmp_path / "d")
    shutil.rmtree(copy / "prepared" / "private")
    assert "train.csv: 332 rows" in data_preview(load_task(copy))
