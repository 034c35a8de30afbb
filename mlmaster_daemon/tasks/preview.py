"""A bounded text summary of a task's public data, for prompts."""

from __future__ import annotations

import io
import itertools
from pathlib import Path

import pandas as pd

from mlmaster_daemon.errors import InvalidTaskDir
from mlmaster_daemon.tasks import archives
from mlmaster_daemon.tasks.spec import TaskSpec

TRUNCATION_MARKER = "\n... [preview truncated]"
MAX_ROWS_READ = 20_000
MAX_BYTES_READ = 64 * 1024 * 1024
MAX_FILES = 30
MAX_COUNTED = 100_000
MAX_COLUMNS = 40
MAX_CLASSES = 20
_READ_ERRORS = (OSError, ValueError, InvalidTaskDir, pd.errors.ParserError,
                pd.errors.EmptyDataError)


def data_preview(spec: TaskSpec, max_chars: int = 6000) -> str:
    """Files with sizes, train shape, per-column dtype/missing/unique, the target's
    distribution (or summary for regression) and the first rows, never over `max_chars`.

    Reads only the public folder; statistics come from at most the first 20,000 train rows.
    """
    sections = [
        _files_section(spec.public_dir),
        _train_section(spec),
        _test_section(spec),
    ]
    return _bounded("\n\n".join(sections), max_chars)


def _bounded(text: str, max_chars: int) -> str:
    if len(text) <= max_chars:
        return text
    if max_chars <= len(TRUNCATION_MARKER):
        return TRUNCATION_MARKER[: max(max_chars, 0)]
    return text[: max_chars - len(TRUNCATION_MARKER)] + TRUNCATION_MARKER


def _human_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GB"


def _count(folder: Path) -> str:
    """How many entries `folder` holds, counted up to MAX_COUNTED (a folder of millions of
    images is not walked to the end for a preview)."""
    found = sum(1 for _ in itertools.islice(folder.iterdir(), MAX_COUNTED + 1))
    return f"{MAX_COUNTED}+" if found > MAX_COUNTED else str(found)


def _files_section(public: Path) -> str:
    entries = sorted(itertools.islice(public.iterdir(), MAX_COUNTED + 1), key=lambda p: p.name)
    # Scripts read the data at ./input/; where the daemon keeps it is none of the model's
    # business (a task's holdout view lives in the daemon's state folder).
    lines = ["Files in ./input/:"]
    for entry in entries[:MAX_FILES]:
        try:
            if entry.is_dir():
                lines.append(f"  {entry.name}/ (folder, {_count(entry)} entries)")
            else:
                lines.append(f"  {entry.name} ({_human_size(entry.stat().st_size)})")
        except OSError as exc:
            lines.append(f"  {entry.name} (unreadable: {exc.strerror})")
    if len(entries) > MAX_FILES:
        more = f"{MAX_COUNTED}+" if len(entries) > MAX_COUNTED else str(len(entries))
        lines.append(f"  ... and {more} in all")
    return "\n".join(lines)


def _read_head(public: Path, name: str) -> tuple[pd.DataFrame, int]:
    """Up to MAX_ROWS_READ rows of the table `name` (a CSV/TSV, or one inside a zip archive;
    from at most its first MAX_BYTES_READ bytes, so one endless line cannot fill memory) and
    its total row count."""
    head = archives.read_head(public, name, MAX_BYTES_READ)
    whole = len(head) <= MAX_BYTES_READ
    if not whole:
        # Parse only whole lines; the rest is counted, not read.
        head = head[: head.rfind(b"\n") + 1]
        if not head:
            raise ValueError(f"its first line is longer than {MAX_BYTES_READ // 2**20} MiB")
    frame = pd.read_csv(io.BytesIO(head), nrows=MAX_ROWS_READ, sep=archives.separator(name))
    if whole and len(frame) < MAX_ROWS_READ:
        return frame, len(frame)
    return frame, archives.count_rows(public, name)


def _is_table(name: str) -> bool:
    return archives.is_table(name)


def _train_section(spec: TaskSpec) -> str:
    if not _is_table(spec.train_file):
        where = f" ({spec.train_file})" if spec.train_file else ""
        return (f"No training table{where}: the training data are the files under input/ "
                "listed above; read them as their format needs.")
    try:
        train, rows = _read_head(spec.public_dir, spec.train_file)
    except _READ_ERRORS as exc:
        return f"Could not read {spec.train_file}: {exc}"
    sampled = "" if rows == len(train) else f" (statistics from the first {len(train)} rows)"
    lines = [f"{spec.train_file}: {rows} rows x {train.shape[1]} columns{sampled}", "Columns:"]
    for column in train.columns[:MAX_COLUMNS]:
        values = train[column]
        lines.append(
            f"  {column}: {values.dtype}, missing {int(values.isna().sum())}, "
            f"unique {values.nunique()}"
        )
    if train.shape[1] > MAX_COLUMNS:
        lines.append(f"  ... and {train.shape[1] - MAX_COLUMNS} more columns")
    lines.append(_target_summary(spec, train))
    head = train.head(3).to_string(index=False, max_cols=12, max_colwidth=30)
    lines.extend(["First 3 rows:", head])
    return "\n".join(lines)


def _target_summary(spec: TaskSpec, train: pd.DataFrame) -> str:
    if spec.target not in train.columns:
        return f"Target {spec.target!r} is not a column of {spec.train_file}."
    values = train[spec.target]
    if spec.metric.is_regression:
        summary = pd.to_numeric(values, errors="coerce").describe().to_string()
        return f"Target {spec.target} (regression) summary:\n{summary}"
    counts = values.value_counts(dropna=False)
    lines = [f"Target {spec.target} distribution ({len(counts)} classes):"]
    for label, count in counts.head(MAX_CLASSES).items():
        lines.append(f"  {label}: {count} ({count / len(values):.1%})")
    if len(counts) > MAX_CLASSES:
        lines.append(f"  ... and {len(counts) - MAX_CLASSES} more classes")
    return "\n".join(lines)


def _test_section(spec: TaskSpec) -> str:
    lines = []
    if not _is_table(spec.test_file):
        lines.append("No test table: the test items are the ids of the sample submission, "
                     "their data the files under input/.")
    else:
        try:
            test, rows = _read_head(spec.public_dir, spec.test_file)
            lines.append(f"{spec.test_file}: {rows} rows x {test.shape[1]} columns")
        except _READ_ERRORS as exc:
            lines.append(f"Could not read {spec.test_file}: {exc}")
    try:
        sample = pd.read_csv(spec.public_dir / spec.sample_submission_file, nrows=2)
        text = sample.to_csv(index=False, lineterminator="\n").rstrip("\n")
        lines.append(f"{spec.sample_submission_file} (first rows):\n{text}")
    except _READ_ERRORS as exc:
        lines.append(f"Could not read {spec.sample_submission_file}: {exc}")
    return "\n".join(lines)
