"""Resolve a competition folder into a validated `TaskSpec`.

Accepts either the competition root (holding `prepared/public`, MLE-bench layout) or the
public folder itself. Settings come from, lowest first: the entry of a known MLE-bench
competition (tasks/data/mlebench.toml, by the folder's name), `task.toml` in the competition
root, then the submit's overrides. Only the header lines of CSV/TSV tables are read here (of
a table kept in a zip archive too), so multi-GB folders load fast; training data that is not a
table (images, audio, JSON) is fine, the scripts see all of `public/`.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlmaster_daemon.errors import InvalidTaskDir
from mlmaster_daemon.tasks import archives, registry, task_toml
from mlmaster_daemon.tasks.spec import PROJECT_METRICS, Metric, TaskOverrides, TaskSpec
from mlmaster_daemon.tasks.task_toml import read_task_toml

TRAIN_FILE = "train.csv"
TEST_FILE = "test.csv"
TASK_TOML = task_toml.TASK_TOML
# Every name MLE-bench's prepared competitions use for the sample submission.
SAMPLE_SUBMISSION_NAMES = (
    "sample_submission.csv",
    "sampleSubmission.csv",
    "sample_submission_null.csv",
    "randomPredictions.csv",
    "kaggle_sample_submission.csv",
)
# Bounds on what is read of a user's files at submit: a header line, and the description.
MAX_HEADER_BYTES = 1024 * 1024
MAX_DESCRIPTION_BYTES = 256 * 1024
KNOWN_METRICS = ", ".join(m.value for m in Metric)


@dataclass(frozen=True)
class _Headers:
    """Header lines of the public CSV files ([] for a file that is absent or not CSV)."""

    public: Path
    sample_name: str
    train: list[str]
    test: list[str]
    sample: list[str]


def load_task(task_dir: str | Path, overrides: TaskOverrides | None = None) -> TaskSpec:
    """Load and check the competition at `task_dir`; non-None `overrides` win over task.toml,
    which wins over the known competition's entry.

    Raises `InvalidTaskDir` whose message names the problem and how to fix it.
    """
    path = Path(task_dir).expanduser()
    if not path.exists():
        shown = str(path) if path.is_absolute() else f"{path} (that is, {path.absolute()})"
        raise InvalidTaskDir(f"task folder {shown} does not exist: check the path and try again")
    if not path.is_dir():
        raise InvalidTaskDir(
            f"task path {path} is a file, not a folder: pass the competition folder "
            "(the one holding prepared/public) or its public folder"
        )
    path = path.resolve()
    root, public = _locate(path)
    private = root / "prepared" / "private"
    toml_settings = read_task_toml(root)
    competition_id = str(toml_settings.get("competition_id") or root.name)
    known = registry.lookup(competition_id)
    settings = _known_settings(known)
    settings.update(toml_settings)
    given = _override_values(overrides)
    if "metric" in given and "lower_is_better" not in given:
        # the direction given with a metric belongs to that metric, not to an overriding one
        settings.pop("lower_is_better", None)
    settings.update(given)
    if known is not None and known.unsupported and not {"metric", "id_column"} & set(
            toml_settings):
        raise InvalidTaskDir(
            f"MLE-bench competition {known.id} cannot be run here yet: {known.unsupported}; "
            f"describe it in {root / TASK_TOML} (metric, id_column, target) to run it anyway "
            "with a metric the project has"
        )
    name = str(settings.get("name") or root.name or "task")
    metric = _resolve_metric(settings.get("metric"), name, root, known)
    lower_is_better = _resolve_direction(settings.get("lower_is_better"), metric, root, known)

    if known is None:
        _check_required_files(public, private, settings)
    train_file = _data_file(public, settings.get("train_file"), TRAIN_FILE)
    test_file = _data_file(public, settings.get("test_file"), TEST_FILE)
    sample_name = _sample_submission(public, private, settings.get("sample_submission"))
    headers = _Headers(
        public=public,
        sample_name=sample_name,
        train=_csv_header_or_none(public, train_file),
        test=_csv_header_or_none(public, test_file),
        sample=read_csv_header(public / sample_name),
    )
    id_column = str(settings.get("id_column") or headers.sample[0])
    targets = tuple(str(t) for t in settings.get("targets") or ())
    target = _resolve_target(settings.get("target") or settings.get("label")
                             or (targets[0] if targets else None), id_column, headers, root)
    if len(targets) <= 1 and targets in ((), (target,)):
        # One scored column that is the training label too: `target` says it.
        targets = ()
    _check_columns(headers, id_column, target, targets, strict=known is None)
    group = (settings.get("holdout") or {}).get("group_column")
    if group is not None and headers.train and group not in headers.train:
        raise InvalidTaskDir(f"{root / TASK_TOML}: [holdout] group_column {group!r} is not a "
                             f"column of {train_file}; name one of its columns or remove it")

    return TaskSpec(
        name=name,
        root=root,
        public_dir=public,
        private_dir=private if private.is_dir() else None,
        description=_read_description(public, name, target, metric, lower_is_better),
        metric=metric,
        lower_is_better=lower_is_better,
        target=target,
        id_column=id_column,
        train_file=train_file,
        test_file=test_file,
        sample_submission_file=sample_name,
        targets=targets,
        map_k=int(settings.get("map_k") or 5),
        competition_id=known.id if known is not None else None,
        resources=dict(settings.get("resources") or {}),
        holdout=dict(settings.get("holdout") or {}),
    )


def _known_settings(known: registry.Competition | None) -> dict[str, Any]:
    """A known competition's entry as task.toml settings."""
    if known is None:
        return {}
    settings: dict[str, Any] = {"id_column": known.id_column, "map_k": known.map_k}
    if known.metric is not None:
        settings["metric"] = known.metric.value
    if known.targets:
        settings["targets"] = list(known.targets)
    if known.label:
        settings["label"] = known.label
    for key, value in (("train_file", known.train_file), ("test_file", known.test_file),
                       ("sample_submission", known.sample)):
        if value is not None:
            settings[key] = value
    return settings


def _data_file(public: Path, configured: Any, usual: str) -> str:
    """The data file's name under public/: the configured one (which must exist), else the
    usual name when present; "" when there is none."""
    if configured is None:
        return usual if (public / usual).is_file() else ""
    name = str(configured)
    if not name or (public / name).is_file():
        return name
    # The same table zipped or unzipped (`mlebench prepare` keeps some only as archives).
    other = archives.table_name(name) if archives.is_archive(name) else name + ".zip"
    if (public / other).is_file():
        return other
    raise InvalidTaskDir(f"{public / name} does not exist; fix the file name in task.toml "
                         "or prepare the competition again")


def _csv_header_or_none(public: Path, name: str) -> list[str]:
    if not name or not archives.is_table(name):
        return []
    return table_header(public, name)


def table_header(public: Path, name: str) -> list[str]:
    """The column names of the table `name` under `public/`, plain or zipped."""
    if not archives.is_archive(name):
        return read_csv_header(public / name, archives.separator(name))
    try:
        head = archives.read_head(public, name, MAX_HEADER_BYTES)
    except OSError as exc:
        raise InvalidTaskDir(f"cannot read {public / name}: {exc}; fix or replace it") from exc
    return _parse_header(head, public / name, archives.separator(name))


def _sample_submission(public: Path, private: Path, configured: Any) -> str:
    """The sample submission, relative to public/. A few MLE-bench competitions keep it only in
    private/ (the public copy is an archive); then the grader's copy is used from there."""
    names = [str(configured)] if configured else list(SAMPLE_SUBMISSION_NAMES)
    for name in names:
        if (public / name).is_file():
            return name
    for name in names:
        if (private / name).is_file():
            return f"../private/{name}"
    found = sorted(p.name for p in private.glob("*sample_submission*.csv")) \
        if private.is_dir() else []
    if found:
        return f"../private/{found[0]}"
    raise InvalidTaskDir(
        f"{public} has no sample submission (looked for {' or '.join(names)}); add one showing "
        "the expected format, or name it with `sample_submission = \"...\"` in task.toml"
    )


def read_csv_header(path: Path, delimiter: str = ",") -> list[str]:
    """The column names on the first line of the CSV at `path`. Reads at most
    MAX_HEADER_BYTES: a file whose first line is longer (a 2 GB file without a line break)
    is refused, never read whole."""
    try:
        with path.open("rb") as handle:
            head = handle.read(MAX_HEADER_BYTES + 1)
    except OSError as exc:
        raise InvalidTaskDir(
            f"cannot read the header of {path}: {exc}; fix or replace the file"
        ) from exc
    return _parse_header(head, path, delimiter)


def _parse_header(head: bytes, path: Path, delimiter: str) -> list[str]:
    """The column names on the first line of `head`, the first bytes of the table `path`."""
    end = head.find(b"\n")
    if end < 0 and len(head) > MAX_HEADER_BYTES:
        raise InvalidTaskDir(
            f"the first line of {path} is longer than {MAX_HEADER_BYTES // 1024} KiB: a CSV must "
            "start with a header line of column names; fix or replace the file")
    line = (head if end < 0 else head[:end]).decode("utf-8-sig", errors="replace")
    try:
        header = next(csv.reader([line], delimiter=delimiter), None)
    except csv.Error as exc:
        raise InvalidTaskDir(
            f"cannot read the header of {path}: {exc}; fix or replace the file"
        ) from exc
    if not header or not any(col.strip() for col in header):
        raise InvalidTaskDir(
            f"{path} is empty or has no header line: it must start with column names"
        )
    return [col.strip() for col in header]


def _locate(path: Path) -> tuple[Path, Path]:
    """(competition root, public folder) for a folder given by the user."""
    nested = path / "prepared" / "public"
    if nested.is_dir():
        return path, nested
    if (path / TRAIN_FILE).is_file() or any((path / n).is_file() for n in SAMPLE_SUBMISSION_NAMES):
        root = path.parent.parent if path.parent.name == "prepared" else path
        return root, path
    raise InvalidTaskDir(
        f"no competition files found in {path}: looked for {nested}/ (MLE-bench layout) and "
        f"for {path / TRAIN_FILE}; point at the competition folder holding prepared/public, "
        "or at the folder holding train.csv, test.csv and sample_submission.csv"
    )


def _check_required_files(public: Path, private: Path, settings: dict[str, Any]) -> None:
    """An unknown competition needs its train and test tables (unless task.toml names others)
    and a sample submission; raises naming every missing file."""
    missing = [name for key, name in (("train_file", TRAIN_FILE), ("test_file", TEST_FILE))
               if key not in settings and not (public / name).is_file()]
    try:
        _sample_submission(public, private, settings.get("sample_submission"))
    except InvalidTaskDir:
        missing.append(str(settings.get("sample_submission") or
                           " or ".join(SAMPLE_SUBMISSION_NAMES)))
    if missing:
        raise InvalidTaskDir(
            f"{public} is missing required file(s): {'; '.join(missing)}; "
            "add them to that folder (train.csv with the target, test.csv without it, "
            "and a sample submission showing the expected format)"
        )


def _override_values(overrides: TaskOverrides | None) -> dict[str, Any]:
    if overrides is None:
        return {}
    values = {
        "metric": overrides.metric,
        "lower_is_better": overrides.lower_is_better,
        "target": overrides.target,
        "id_column": overrides.id_column,
        "name": overrides.name,
    }
    for key, value in values.items():
        if isinstance(value, str) and not value.strip():
            raise InvalidTaskDir(f"the given {key} is empty: pass a non-empty value or omit it")
    return {key: value for key, value in values.items() if value is not None}


def _resolve_metric(value: Any, name: str, root: Path,
                    known: registry.Competition | None) -> Metric:
    if value is None:
        raise InvalidTaskDir(
            f'no metric for task {name}: add `metric = "roc_auc"` to {root / TASK_TOML} '
            f"or pass --metric (one of {KNOWN_METRICS})"
        )
    try:
        metric = Metric(str(value).strip().lower())
    except ValueError:
        raise InvalidTaskDir(
            f"unknown metric {value!r} for task {name}: use one of {KNOWN_METRICS}"
        ) from None
    if metric is Metric.COMPETITION and (known is None or known.grader is None):
        raise InvalidTaskDir(
            f'metric "competition" means a known MLE-bench competition\'s own grader, and task '
            f"{name} is not one (`mlmaster competitions` lists them; set competition_id in "
            f"{root / TASK_TOML} if the folder is one under another name): use one of "
            f"{', '.join(m.value for m in PROJECT_METRICS)}"
        )
    return metric


def _resolve_direction(value: Any, metric: Metric, root: Path,
                       known: registry.Competition | None) -> bool:
    if metric is Metric.COMPETITION:
        assert known is not None  # _resolve_metric refuses it otherwise
        natural_lower, named = known.lower_is_better, f"{known.id}'s own metric ({known.scoring})"
    else:
        natural_lower, named = metric.lower_is_better, f"metric {metric.value}"
    if value is None or bool(value) == natural_lower:
        return natural_lower
    natural = "lower" if natural_lower else "higher"
    raise InvalidTaskDir(
        f"lower_is_better = {str(bool(value)).lower()} contradicts {named}, "
        f"for which {natural} is better: remove lower_is_better from {root / TASK_TOML} "
        "(or the override) or fix the metric"
    )


def _resolve_target(value: Any, id_column: str, headers: _Headers, root: Path) -> str:
    if value is not None:
        return str(value)
    others = [col for col in headers.sample if col != id_column]
    if len(headers.sample) == 2 and len(others) == 1 and (
            others[0] in headers.train or not headers.train):
        return others[0]
    candidates = [col for col in headers.train if col not in headers.test]
    hint = ""
    if candidates:
        hint = f" (columns of train.csv absent from test.csv: {_listing(candidates)})"
    raise InvalidTaskDir(
        f"target is missing and cannot be inferred: the sample submission's columns "
        f"({', '.join(headers.sample)}) do not name a train.csv column; add "
        f'`target = "<column of train.csv>"` to {root / TASK_TOML} or pass --target{hint}'
    )


def _check_columns(headers: _Headers, id_column: str, target: str, targets: tuple[str, ...],
                   strict: bool) -> None:
    """The columns the task names must exist. A known competition's entry is trusted about
    its training data (which may not be a table); its sample submission is still checked."""
    public = headers.public
    problems = []
    if strict and headers.train:
        problems += [f"target {t!r} is not a column of {public / TRAIN_FILE}"
                     for t in targets or (target,) if t not in headers.train]
    if strict and headers.test and id_column not in headers.test:
        problems.append(f"id column {id_column!r} is not a column of {public / TEST_FILE}")
    if id_column not in headers.sample:
        problems.append(
            f"id column {id_column!r} is not a column of {public / headers.sample_name}"
        )
    problems += [f"target {t!r} is not a column of {public / headers.sample_name}"
                 for t in targets if t not in headers.sample]
    if problems:
        raise InvalidTaskDir(
            "; ".join(problems) + "; fix `target`/`targets`/`id_column` in task.toml (or the "
            f"overrides) to name existing columns (train.csv has: {_listing(headers.train)})"
        )


def _listing(columns: list[str], limit: int = 30) -> str:
    """Column names for a message, shortened for very wide files."""
    more = f", ... ({len(columns) - limit} more)" if len(columns) > limit else ""
    return ", ".join(columns[:limit]) + more


def count_rows(path: Path) -> int:
    """Data rows of a CSV by counting line breaks (quoted line breaks count too), read in
    chunks: memory stays small whatever the file holds."""
    lines = 0
    last = b"\n"
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            lines += chunk.count(b"\n")
            last = chunk[-1:]
    return max(lines + (0 if last == b"\n" else 1) - 1, 0)


def _read_description(public: Path, name: str, target: str, metric: Metric,
                      lower_is_better: bool) -> str:
    """description.md, cut at MAX_DESCRIPTION_BYTES (prompts use far less; a huge file is
    stored and sent nowhere whole)."""
    path = public / "description.md"
    if path.is_file():
        try:
            with path.open("rb") as handle:
                raw = handle.read(MAX_DESCRIPTION_BYTES + 1)
                size = os.fstat(handle.fileno()).st_size
        except OSError as exc:
            raise InvalidTaskDir(f"cannot read {path}: {exc}") from exc
        text = raw[:MAX_DESCRIPTION_BYTES].decode("utf-8", errors="replace")
        if len(raw) > MAX_DESCRIPTION_BYTES:
            text += (f"\n\n[description cut at {MAX_DESCRIPTION_BYTES // 1024} KiB of "
                     f"{size / 1024 / 1024:.1f} MiB; the whole text is input/description.md]")
        return text
    direction = "lower" if lower_is_better else "higher"
    return (
        f"Competition {name}: predict `{target}` for each row of test.csv from the features "
        f"in train.csv; scored by {metric.value} ({direction} is better)."
    )
