"""load_task: folder layouts, task.toml, overrides, inference and every error message."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlmaster_daemon.errors import InvalidTaskDir
from mlmaster_daemon.tasks.competition import load_task
from mlmaster_daemon.tasks.spec import Metric, TaskOverrides

TRAIN = "id,f1,f2,label\n1,0.5,x,a\n2,0.1,y,b\n"
TEST = "id,f1,f2\n3,0.3,x\n4,0.2,y\n"
SAMPLE = "id,label\n3,a\n4,a\n"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def make_task(
    root: Path,
    toml: str | None = 'metric = "accuracy"\n',
    files: dict[str, str] | None = None,
) -> Path:
    """An MLE-bench style competition at `root`; `files` replace the public CSVs."""
    public = root / "prepared" / "public"
    chosen = (
        files
        if files is not None
        else {
            "train.csv": TRAIN,
            "test.csv": TEST,
            "sample_submission.csv": SAMPLE,
        }
    )
    for name, text in chosen.items():
        write(public / name, text)
    public.mkdir(parents=True, exist_ok=True)
    if toml is not None:
        write(root / "task.toml", toml)
    return root


def error_of(task_dir: Path, overrides: TaskOverrides | None = None) -> str:
    with pytest.raises(InvalidTaskDir) as caught:
        load_task(task_dir, overrides)
    return caught.value.message


def test_missing_path_says_it_does_not_exist(tmp_path: Path) -> None:
    message = error_of(tmp_path / "nope")
    assert "does not exist" in message and "nope" in message


def test_file_instead_of_folder_is_rejected(tmp_path: Path) -> None:
    message = error_of(write(tmp_path / "train.csv", TRAIN))
    assert "not a folder" in message


def test_folder_without_competition_files_says_what_was_looked_for(tmp_path: Path) -> None:
    message = error_of(tmp_path)
    assert "prepared/public" in message and "train.csv" in message


def test_missing_files_are_each_named_with_the_folder(tmp_path: Path) -> None:
    root = make_task(tmp_path / "comp", files={"train.csv": TRAIN})
    message = error_of(root)
    assert "test.csv" in message and "sample_submission.csv" in message
    assert str(root / "prepared" / "public") in message


def test_alternative_sample_submission_name_is_recorded(tmp_path: Path) -> None:
    files = {"train.csv": TRAIN, "test.csv": TEST, "sampleSubmission.csv": SAMPLE}
    spec = load_task(make_task(tmp_path / "comp", files=files))
    assert spec.sample_submission_file == "sampleSubmission.csv"


def test_id_and_target_are_inferred_from_the_sample_submission(tmp_path: Path) -> None:
    spec = load_task(make_task(tmp_path / "comp"))
    assert (spec.id_column, spec.target) == ("id", "label")
    assert spec.metric is Metric.ACCURACY and spec.lower_is_better is False


def test_name_defaults_to_the_root_folder_and_paths_are_resolved(tmp_path: Path) -> None:
    root = make_task(tmp_path / "my-comp")
    spec = load_task(root)
    assert spec.name == "my-comp"
    assert spec.root == root.resolve()
    assert spec.public_dir == (root / "prepared" / "public").resolve()


def test_private_dir_is_found_when_present_and_none_otherwise(tmp_path: Path) -> None:
    with_private = make_task(tmp_path / "a")
    (with_private / "prepared" / "private").mkdir()
    assert load_task(with_private).private_dir == (with_private / "prepared" / "private")
    assert load_task(make_task(tmp_path / "b")).private_dir is None


def test_pointing_at_the_public_folder_finds_the_competition_root(tmp_path: Path) -> None:
    root = make_task(tmp_path / "comp")
    (root / "prepared" / "private").mkdir()
    spec = load_task(root / "prepared" / "public")
    assert spec.root == root
    assert spec.private_dir == root / "prepared" / "private"
    assert spec.name == "comp"


def test_a_plain_folder_with_the_files_is_its_own_root(tmp_path: Path) -> None:
    folder = tmp_path / "flat"
    for name, text in (("train.csv", TRAIN), ("test.csv", TEST), ("sample_submission.csv", SAMPLE)):
        write(folder / name, text)
    write(folder / "task.toml", 'metric = "accuracy"\n')
    spec = load_task(folder)
    assert spec.root == folder and spec.public_dir == folder and spec.private_dir is None


def test_description_is_read_when_present(tmp_path: Path) -> None:
    root = make_task(tmp_path / "comp")
    write(root / "prepared" / "public" / "description.md", "# Hello\nDetails.\n")
    assert load_task(root).description == "# Hello\nDetails.\n"


def test_description_is_generated_when_absent(tmp_path: Path) -> None:
    description = load_task(make_task(tmp_path / "comp")).description
    assert "label" in description and "accuracy" in description
    assert "\n" not in description


def test_invalid_toml_reports_parse_error_and_path(tmp_path: Path) -> None:
    root = make_task(tmp_path / "comp", toml="metric = \n")
    message = error_of(root)
    assert "not valid TOML" in message and str(root / "task.toml") in message


def test_unknown_toml_key_is_named_with_the_allowed_keys(tmp_path: Path) -> None:
    root = make_task(tmp_path / "comp", toml='metric = "accuracy"\nmetrc = "x"\n')
    message = error_of(root)
    assert "'metrc'" in message
    for key in ("metric", "lower_is_better", "target", "id_column", "name"):
        assert key in message


def test_wrong_value_type_names_the_key(tmp_path: Path) -> None:
    root = make_task(tmp_path / "comp", toml='metric = "accuracy"\nlower_is_better = "no"\n')
    message = error_of(root)
    assert "'lower_is_better'" in message and "true or false" in message


def test_missing_metric_says_how_to_give_one(tmp_path: Path) -> None:
    root = make_task(tmp_path / "comp", toml=None)
    message = error_of(root)
    assert "no metric for task comp" in message
    assert 'metric = "roc_auc"' in message and str(root / "task.toml") in message
    assert "--metric" in message and "log_loss" in message


def test_unknown_metric_lists_the_known_ones(tmp_path: Path) -> None:
    message = error_of(make_task(tmp_path / "comp", toml='metric = "f2"\n'))
    assert "'f2'" in message
    for metric in Metric:
        assert metric.value in message


def test_contradictory_direction_is_rejected(tmp_path: Path) -> None:
    root = make_task(tmp_path / "comp", toml='metric = "rmse"\nlower_is_better = false\n')
    message = error_of(root)
    assert "contradicts" in message and "rmse" in message


def test_consistent_direction_is_accepted(tmp_path: Path) -> None:
    root = make_task(tmp_path / "comp", toml='metric = "log_loss"\nlower_is_better = true\n')
    assert load_task(root).lower_is_better is True


def test_class_probability_sample_needs_an_explicit_target(tmp_path: Path) -> None:
    files = {"train.csv": TRAIN, "test.csv": TEST, "sample_submission.csv": "id,a,b\n3,0.5,0.5\n"}
    root = make_task(tmp_path / "comp", toml='metric = "log_loss"\n', files=files)
    message = error_of(root)
    assert "target" in message and "--target" in message and "label" in message


def test_explicit_target_in_toml_is_used(tmp_path: Path) -> None:
    files = {"train.csv": TRAIN, "test.csv": TEST, "sample_submission.csv": "id,a,b\n3,0.5,0.5\n"}
    toml = 'metric = "log_loss"\ntarget = "label"\nname = "Nice"\n'
    spec = load_task(make_task(tmp_path / "comp", toml=toml, files=files))
    assert (spec.target, spec.name, spec.metric) == ("label", "Nice", Metric.LOG_LOSS)


def test_target_that_is_not_a_train_column_is_rejected(tmp_path: Path) -> None:
    root = make_task(tmp_path / "comp", toml='metric = "accuracy"\ntarget = "nope"\n')
    message = error_of(root)
    assert "'nope'" in message and "train.csv" in message


def test_id_column_missing_from_test_is_rejected(tmp_path: Path) -> None:
    files = {"train.csv": TRAIN, "test.csv": "key,f1\n3,0.3\n", "sample_submission.csv": SAMPLE}
    message = error_of(make_task(tmp_path / "comp", files=files))
    assert "id column 'id'" in message and "test.csv" in message


def test_empty_csv_is_reported(tmp_path: Path) -> None:
    files = {"train.csv": TRAIN, "test.csv": "", "sample_submission.csv": SAMPLE}
    message = error_of(make_task(tmp_path / "comp", files=files))
    assert "test.csv" in message and "no header" in message


def test_overrides_win_over_task_toml(tmp_path: Path) -> None:
    root = make_task(tmp_path / "comp", toml='metric = "log_loss"\nname = "from-toml"\n')
    overrides = TaskOverrides(metric="accuracy", name="from-override", target="f1")
    spec = load_task(root, overrides)
    assert (spec.metric, spec.name, spec.target) == (Metric.ACCURACY, "from-override", "f1")


def test_override_supplies_a_missing_metric(tmp_path: Path) -> None:
    spec = load_task(make_task(tmp_path / "comp", toml=None), TaskOverrides(metric="ROC_AUC"))
    assert spec.metric is Metric.ROC_AUC


def test_override_direction_contradiction_is_rejected(tmp_path: Path) -> None:
    message = error_of(make_task(tmp_path / "comp"), TaskOverrides(lower_is_better=True))
    assert "contradicts" in message


def test_spec_round_trips_through_dict(tmp_path: Path) -> None:
    spec = load_task(make_task(tmp_path / "comp"))
    assert type(spec).from_dict(spec.to_dict()) == spec


def test_overriding_metric_drops_the_direction_of_the_toml_metric(tmp_path: Path) -> None:
    root = make_task(tmp_path / "comp", toml='metric = "log_loss"\nlower_is_better = true\n')
    spec = load_task(root, TaskOverrides(metric="accuracy"))
    assert (spec.metric, spec.lower_is_better) == (Metric.ACCURACY, False)


def test_resources_in_task_toml_are_what_its_nodes_ask_and_survive_the_store(
        tmp_path: Path) -> None:
    from mlmaster_daemon.config import Config
    from mlmaster_daemon.execution.ray_executor import execution_for
    from mlmaster_daemon.tasks.spec import TaskSpec

    root = make_task(tmp_path / "comp", toml=(
        'metric = "accuracy"\n[resources]\nnum_cpus = 4\nnum_gpus = 0.5\nmemory_mb = 8000\n'
        'custom = {a100 = 1}\n'))
    spec = load_task(root)
    assert spec.resources == {"num_cpus": 4, "num_gpus": 0.5, "memory_mb": 8000,
                              "custom": {"a100": 1}}
    # As the store keeps a task (JSON) and reads it back on resume.
    again = TaskSpec.from_dict(spec.to_dict())
    execution = execution_for(Config().execution, again)
    assert (execution.ray_num_cpus, execution.ray_num_gpus, execution.ray_memory_mb,
            execution.ray_resources) == (4.0, 0.5, 8000, {"a100": 1.0})
    # A task without [resources] asks what the config says.
    plain = load_task(make_task(tmp_path / "plain"))
    assert execution_for(Config().execution, plain) == Config().execution


@pytest.mark.parametrize(("table", "says"), [
    ("num_gpus = 1.5", "resources.num_gpus: Value error, a fraction of one GPU"),
    ("num_cpus = 0", "resources.num_cpus: Input should be greater than 0"),
    ("gpus = 1", "resources.gpus: Extra inputs are not permitted"),
    ('custom = {GPU = 1}', "set with num_cpus, num_gpus and memory_mb"),
    ('num_cpus = "four"', "resources.num_cpus"),
])
def test_bad_resources_in_task_toml_are_refused_naming_the_key(
        tmp_path: Path, table: str, says: str) -> None:
    root = make_task(tmp_path / "comp", toml=f'metric = "accuracy"\n[resources]\n{table}\n')
    message = error_of(root)
    assert says in message and str(root / "task.toml") in message, message


def test_resources_that_are_not_a_table_are_refused_saying_how_to_write_them(
        tmp_path: Path) -> None:
    root = make_task(tmp_path / "comp", toml='metric = "accuracy"\nresources = 4\n')
    assert "[resources] must be a table, like" in error_of(root)
