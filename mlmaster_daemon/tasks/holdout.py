"""A hidden holdout: labelled train rows the node scripts never see, mixed into their test
table under fresh ids, split back out of each submission and scored with the task's metric.

Every table is read as text (bounded, never through a link), so the rows the view keeps are
the original rows cell for cell and a submission's real part is written as the node wrote it.
"""

from __future__ import annotations

import io
import json
import os
import random
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from mlmaster_daemon import untrusted
from mlmaster_daemon.errors import GradingError
from mlmaster_daemon.tasks.holdout_ids import HoldoutError, fresh_ids, id_order, is_sorted
from mlmaster_daemon.tasks.labels import normalise_labels
from mlmaster_daemon.tasks.spec import Metric, TaskSpec

if TYPE_CHECKING:
    import pandas as pd

# A holdout under this many rows scores too noisily to choose by; a train under this many
# rows loses too much by giving a tenth away.
MIN_HOLDOUT_ROWS = 30
MIN_TRAIN_ROWS = 100
MAX_TABLE_BYTES = 2 * 1024**3
ANSWERS_FILE = "holdout_answers.csv"
ID_MAP_FILE = "holdout_ids.csv"
PLAN_FILE = "holdout_plan.json"
COLUMNS_FILE = "holdout_columns.json"

__all__ = ["HoldoutError", "HoldoutPlan", "Refusal", "build_view", "load_plan", "plan",
           "read_text_table", "score_holdout", "split_submission"]


@dataclass(frozen=True)
class Refusal:
    """No holdout for this task, and why, in words a user reads."""

    reason: str


@dataclass(frozen=True)
class HoldoutPlan:
    """Which train rows (0-based data rows of the train table) form the holdout."""

    seed: int
    fraction: float
    rows: tuple[int, ...]
    label_columns: tuple[str, ...]
    group_column: str | None = None

    def to_json(self) -> str:
        return json.dumps({"seed": self.seed, "fraction": self.fraction, "rows": list(self.rows),
                           "label_columns": list(self.label_columns),
                           "group_column": self.group_column}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> HoldoutPlan:
        raw = json.loads(text)
        return cls(seed=int(raw["seed"]), fraction=float(raw["fraction"]),
                   rows=tuple(int(r) for r in raw["rows"]),
                   label_columns=tuple(str(c) for c in raw["label_columns"]),
                   group_column=raw.get("group_column"))


def load_plan(private_dir: Path) -> HoldoutPlan | None:
    """The plan `build_view` saved in `private_dir` (a resumed task keeps its split), or None
    when there is none. Raises `HoldoutError` for a file that is not a plan."""
    try:
        raw = untrusted.read_bounded(private_dir, PLAN_FILE, MAX_TABLE_BYTES)
    except FileNotFoundError:
        return None
    except (OSError, untrusted.UnsafeFile) as exc:
        raise HoldoutError(f"cannot read the holdout plan in {private_dir}: {exc}") from None
    try:
        return HoldoutPlan.from_json(raw.decode("utf-8"))
    except (ValueError, KeyError, TypeError) as exc:
        raise HoldoutError(f"{private_dir / PLAN_FILE} is not a holdout plan: {exc}") from None


def read_text_table(root: Path, relative: str, max_bytes: int = MAX_TABLE_BYTES) -> pd.DataFrame:
    """The CSV `root/relative` with every cell as its text ("" for an empty cell), read
    without following links and refused over `max_bytes`. Raises `HoldoutError`."""
    import pandas as pd

    try:
        data = untrusted.read_bounded(root, relative, max_bytes)
        frame: pd.DataFrame = pd.read_csv(io.BytesIO(data), dtype=str, keep_default_na=False)
    except untrusted.UnsafeFile as exc:
        raise HoldoutError(f"{root / relative} cannot be read safely ({exc.strerror})") from None
    except (OSError, ValueError, UnicodeDecodeError, pd.errors.ParserError,
            pd.errors.EmptyDataError) as exc:
        raise HoldoutError(f"cannot read {root / relative} as CSV: {exc}") from None
    return frame


def plan(spec: TaskSpec, *, seed: int, fraction: float = 0.1, group_column: str | None = None,
         min_holdout_rows: int = MIN_HOLDOUT_ROWS,
         min_train_rows: int = MIN_TRAIN_ROWS) -> HoldoutPlan | Refusal:
    """The holdout for `spec`: `fraction` of the labelled train rows, stratified by the label
    for a classification metric, whole groups of `group_column` when one is named, drawn
    from `seed` (same spec and seed, same plan). A `Refusal` says why a task gets none."""
    if spec.metric is Metric.COMPETITION:
        return Refusal("the competition's own grader scores whole submission files against "
                       "its answers; splitting them is not supported yet")
    for name in (spec.train_file, spec.test_file, spec.sample_submission_file):
        if not name.lower().endswith(".csv"):
            return Refusal(f"{name} is not a CSV table: a holdout needs tabular train and test")
        if ".." in Path(name).parts or Path(name).is_absolute():
            return Refusal(f"{name} lies outside the public folder: the nodes' view of the "
                           "data holds the public folder's files only")
    if not 0.0 < fraction < 0.5:
        return Refusal(f"the holdout fraction must lie in (0, 0.5), got {fraction}")
    try:
        train = read_text_table(spec.public_dir, spec.train_file)
    except HoldoutError as exc:
        return Refusal(exc.message)
    labels = spec.scored_columns
    missing = [c for c in labels if c not in train.columns]
    if missing:
        return Refusal(f"the train table has no column {missing[0]!r} to hold answers out of")
    if group_column is not None and group_column not in train.columns:
        return Refusal(f"the train table has no group column {group_column!r}")
    labelled = [i for i, row in enumerate(zip(*(train[c] for c in labels), strict=True))
                if all(cell.strip() for cell in row)]
    size = round(fraction * len(labelled))
    if size < min_holdout_rows or len(labelled) - size < min_train_rows:
        return Refusal(f"{len(labelled)} labelled rows are too few: a holdout needs at least "
                       f"{min_holdout_rows} rows and at least {min_train_rows} left to train on")
    rng = random.Random(seed)
    if group_column is not None:
        chosen = _grouped(train[group_column].tolist(), labelled, size, rng)
    elif not spec.metric.is_regression and len(labels) == 1 and spec.metric is not Metric.MAP_AT_K:
        chosen = _stratified(train[labels[0]].tolist(), labelled, size, rng)
    else:
        chosen = rng.sample(labelled, size)
    return HoldoutPlan(seed=seed, fraction=fraction, rows=tuple(sorted(chosen)),
                       label_columns=labels, group_column=group_column)


def _stratified(values: list[str], labelled: list[int], size: int,
                rng: random.Random) -> list[int]:
    """`size` rows, each class's share of them within one row of its share of `labelled`."""
    by_class: dict[str, list[int]] = {}
    for row in labelled:
        by_class.setdefault(values[row], []).append(row)
    classes = sorted(by_class)
    quotas = {c: len(by_class[c]) * size / len(labelled) for c in classes}
    counts = {c: int(quotas[c]) for c in classes}
    # Largest remainders first, ties in class order: the total is exactly `size`.
    for c in sorted(classes, key=lambda c: counts[c] - quotas[c])[:size - sum(counts.values())]:
        counts[c] += 1
    return [row for c in classes for row in rng.sample(by_class[c], counts[c])]


def _grouped(groups: list[str], labelled: list[int], size: int,
             rng: random.Random) -> list[int]:
    """Whole groups, drawn in a seeded order until they hold at least `size` rows."""
    members: dict[str, list[int]] = {}
    for row, group in enumerate(groups):
        members.setdefault(group, []).append(row)
    labelled_set = set(labelled)
    names = sorted(members)
    rng.shuffle(names)
    chosen: list[int] = []
    for name in names:
        if len(chosen) >= size:
            break
        if all(row in labelled_set for row in members[name]):
            chosen.extend(members[name])
    return chosen


@dataclass(frozen=True)
class _Tables:
    train: pd.DataFrame
    test: pd.DataFrame
    sample: pd.DataFrame


def build_view(spec: TaskSpec, holdout: HoldoutPlan, view_dir: Path,
               private_dir: Path) -> TaskSpec:
    """Write the folder the node scripts see in place of `spec.public_dir` into `view_dir`
    (replaced when it exists): train without the holdout rows; test and sample submission
    with the holdout's features under fresh ids, interleaved; every other public file as a
    hard link (a copy across filesystems). The holdout's answers, the id map and the plan go
    to `private_dir` only. The same inputs give the same bytes. Returns the view's spec.
    Raises `HoldoutError` for a link in the public folder or ids that cannot be extended."""
    import pandas as pd

    tables = _Tables(read_text_table(spec.public_dir, spec.train_file),
                     read_text_table(spec.public_dir, spec.test_file),
                     read_text_table(spec.public_dir, spec.sample_submission_file))
    id_column = spec.id_column
    for name, frame in (("test", tables.test), ("sample submission", tables.sample)):
        if id_column not in frame.columns:
            raise HoldoutError(f"the {name} has no id column {id_column!r}")
    if sorted(tables.sample[id_column]) != sorted(tables.test[id_column]):
        raise HoldoutError("the sample submission's ids are not the test's ids")
    if holdout.rows and max(holdout.rows) >= len(tables.train):
        raise HoldoutError("the plan names rows the train table does not have: plan again")
    kept = tables.train.drop(index=list(holdout.rows))
    held = tables.train.iloc[list(holdout.rows)]
    absent = [c for c in tables.test.columns if c != id_column and c not in held.columns]
    if absent:
        raise HoldoutError(f"the test column {absent[0]!r} is not in train")
    visible = set(tables.test[id_column]) | (
        set(kept[id_column]) if id_column in kept.columns else set())
    rng = random.Random(f"{holdout.seed}:view")
    new_ids = fresh_ids(tables.test[id_column].tolist(), visible, len(held), rng)
    features = held[[c for c in tables.test.columns if c != id_column]].copy()
    features.insert(list(tables.test.columns).index(id_column), id_column, new_ids)
    combined = pd.concat([tables.test, features[list(tables.test.columns)]], ignore_index=True)
    if is_sorted(tables.test[id_column].tolist()):
        order = id_order(combined[id_column].tolist())
    else:
        order = list(range(len(combined)))
        rng.shuffle(order)
    view_test = combined.iloc[order].reset_index(drop=True)
    sample_rows = {ident: i for i, ident in enumerate(tables.sample[id_column])}
    donors = [rng.randrange(len(tables.sample)) for _ in new_ids]
    source = dict(zip(new_ids, donors, strict=True))
    picks = [sample_rows.get(ident, source.get(ident, 0)) for ident in view_test[id_column]]
    view_sample = tables.sample.iloc[picks].reset_index(drop=True)
    view_sample[id_column] = view_test[id_column].to_numpy()

    if view_dir.is_symlink():
        raise HoldoutError(f"{view_dir} is a link: give the view a folder of its own")
    if view_dir.exists():
        shutil.rmtree(view_dir)
    _mirror(spec.public_dir, view_dir,
            skip={spec.train_file, spec.test_file, spec.sample_submission_file})
    for name, frame in ((spec.train_file, kept), (spec.test_file, view_test),
                        (spec.sample_submission_file, view_sample)):
        _write(frame, view_dir / name)
    private_dir.mkdir(parents=True, exist_ok=True)
    answers = held[list(holdout.label_columns)].copy()
    answers.insert(0, id_column, new_ids)
    _write(answers, private_dir / ANSWERS_FILE)
    real = pd.DataFrame({"id": tables.sample[id_column], "part": "test",
                         "position": range(len(tables.sample))})
    fresh = pd.DataFrame({"id": new_ids, "part": "holdout", "position": range(len(new_ids))})
    _write(pd.concat([real, fresh], ignore_index=True), private_dir / ID_MAP_FILE)
    (private_dir / COLUMNS_FILE).write_text(json.dumps(list(tables.sample.columns)) + "\n",
                                           encoding="utf-8")
    (private_dir / PLAN_FILE).write_text(holdout.to_json() + "\n", encoding="utf-8")
    return replace(spec, public_dir=view_dir, private_dir=private_dir)


def _write(frame: pd.DataFrame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False, lineterminator="\n")


def _mirror(source: Path, target: Path, skip: set[str], prefix: str = "") -> None:
    """Every file and folder below `source` into `target`, links refused, files hard-linked
    (copied across filesystems), except the relative paths in `skip`."""
    target.mkdir(parents=True, exist_ok=True)
    with os.scandir(source) as entries:
        for entry in sorted(entries, key=lambda e: e.name):
            relative = prefix + entry.name
            if entry.is_symlink():
                raise HoldoutError(f"{source / entry.name} is a link: the public folder must "
                                   "hold the files themselves")
            if entry.is_dir(follow_symlinks=False):
                _mirror(Path(entry.path), target / entry.name, skip, relative + "/")
            elif entry.is_file(follow_symlinks=False) and relative not in skip:
                try:
                    os.link(entry.path, target / entry.name, follow_symlinks=False)
                except OSError:
                    with untrusted.open_file(source, entry.name) as handle, \
                            open(target / entry.name, "wb") as out:
                        shutil.copyfileobj(handle, out)
            elif relative not in skip:
                raise HoldoutError(f"{source / entry.name} is neither a file nor a folder")


def split_submission(view_spec: TaskSpec, submission_path: Path, real_out_path: Path,
                     max_bytes: int = MAX_TABLE_BYTES) -> pd.DataFrame:
    """Split a node's submission to the view: the real test rows, in the original sample's
    order and with its columns, written to `real_out_path` as the node wrote them; the
    holdout rows returned (text cells, fresh ids). Raises `HoldoutError` naming the problem
    (missing, repeated or unknown ids, other columns) for a submission that cannot be split."""
    if view_spec.private_dir is None:
        raise HoldoutError("the view's spec has no private folder holding the id map")
    submission = read_text_table(submission_path.parent, submission_path.name, max_bytes)
    # The columns come from the private copy: the view is the nodes' to read, never to trust.
    try:
        saved = untrusted.read_bounded(view_spec.private_dir, COLUMNS_FILE, MAX_TABLE_BYTES)
        columns = [str(c) for c in json.loads(saved)]
    except (OSError, ValueError, untrusted.UnsafeFile) as exc:
        raise HoldoutError(f"cannot read the sample's columns in {view_spec.private_dir}: "
                           f"{exc}") from None
    id_map = read_text_table(view_spec.private_dir, ID_MAP_FILE)
    if sorted(submission.columns) != sorted(columns):
        raise HoldoutError(f"the submission's columns {list(submission.columns)} are not the "
                           f"sample submission's {columns}")
    submitted = normalise_labels(submission[view_spec.id_column])
    expected = normalise_labels(id_map["id"])
    position = {ident: row for row, ident in enumerate(submitted)}
    problems = []
    if len(position) != len(submitted):
        problems.append("it repeats ids")
    missing = [ident for ident in expected if ident not in position]
    if missing:
        problems.append(f"{len(missing)} id(s) have no row, such as {missing[0]!r}")
    extra = set(submitted) - set(expected)
    if extra:
        problems.append(f"{len(extra)} id(s) are not in the test table, such as "
                        f"{sorted(extra)[0]!r}")
    if problems:
        raise HoldoutError("the submission cannot be split: " + "; ".join(problems))
    parts = id_map["part"].tolist()
    real = [position[i] for i, part in zip(expected, parts, strict=True) if part == "test"]
    held = [position[i] for i, part in zip(expected, parts, strict=True) if part == "holdout"]
    real_out_path.parent.mkdir(parents=True, exist_ok=True)
    real_rows = submission.iloc[real][columns].reset_index(drop=True)
    # Ids as the original sample writes them ("7", not a node's "7.0").
    real_rows[view_spec.id_column] = [i for i, part in zip(id_map["id"], parts, strict=True)
                                      if part == "test"]
    _write(real_rows, real_out_path)
    return submission.iloc[held][columns].reset_index(drop=True)


def score_holdout(spec: TaskSpec, holdout_rows: pd.DataFrame, private_dir: Path) -> float:
    """The task's metric on `holdout_rows` (as `split_submission` returns them) against the
    answers in `private_dir`, with grading's metric functions. Raises `GradingError`."""
    import pandas as pd

    from mlmaster_daemon.tasks.metrics import score
    from mlmaster_daemon.tasks.validation import ONLY_BLANKS_MISSING

    text = holdout_rows.to_csv(index=False, lineterminator="\n")
    options = dict(ONLY_BLANKS_MISSING)
    if int(pd.__version__.split(".")[0]) < 3:
        options["float_precision"] = "round_trip"
    submission = pd.read_csv(io.StringIO(text), **options)
    try:
        answers_text = untrusted.read_bounded(private_dir, ANSWERS_FILE, MAX_TABLE_BYTES)
    except (OSError, untrusted.UnsafeFile) as exc:
        raise GradingError(f"cannot read the holdout answers in {private_dir}: {exc}") from None
    answers = pd.read_csv(io.BytesIO(answers_text), **options)
    columns = spec.scored_columns
    target = columns if len(columns) > 1 else columns[0]
    return score(spec.metric, answers, submission, spec.id_column, target, k=spec.map_k)
