"""Top-k ensembling: the best nodes' submissions combined row by row (a mean of numbers, a
mean of normalised ranks for ROC AUC, a vote of labels) and scored on the hidden holdout, so
the ensemble is handed in only when the holdout says it is better than the best node.

Every member file is read as text, bounded and never through a link; a member that cannot be
read or does not match the best member's ids and columns refuses the ensemble, never raises.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeAlias

from mlmaster_daemon.errors import GradingError
from mlmaster_daemon.tasks.holdout import HoldoutError, read_text_table, score_holdout
from mlmaster_daemon.tasks.labels import normalise_label, normalise_labels
from mlmaster_daemon.tasks.spec import Metric, TaskSpec

if TYPE_CHECKING:
    # numpy and pandas are imported where used: the daemon imports this module at start and
    # needs neither until a task ends.
    import numpy as np
    import numpy.typing as npt
    import pandas as pd

    FloatArray: TypeAlias = npt.NDArray[np.float64]

__all__ = ["Ensemble", "Member", "NoEnsemble", "beats", "combine", "method_for",
           "normalised_ranks", "write_submission"]

MEAN = "mean"
RANK_MEAN = "rank-mean"
VOTE = "vote"
_AVERAGED = (Metric.LOG_LOSS, Metric.RMSE, Metric.MAE, Metric.RMSLE)
_VOTED = (Metric.ACCURACY, Metric.QWK, Metric.F1, Metric.F1_MICRO, Metric.F1_MACRO)


@dataclass(frozen=True)
class Member:
    """One working node's submission, split: its real-test part and its holdout rows (both
    CSV files, read with `read_text_table`), and the holdout score those rows got."""

    node_id: int
    holdout_metric: float
    real_root: Path
    real_file: str
    holdout_root: Path
    holdout_file: str


@dataclass(frozen=True)
class Ensemble:
    """The combined submission: `real` holds the real-test rows as text cells, with the
    columns and row order of the best member; `holdout_metric` is the combined holdout rows'
    score with the task's metric."""

    members: tuple[int, ...]
    method: str
    holdout_metric: float
    real: pd.DataFrame


@dataclass(frozen=True)
class NoEnsemble:
    """No ensemble for these members, and why, in words a user reads."""

    reason: str


class _Refused(Exception):
    """A member cannot take part; the message names it."""


def method_for(metric: Metric) -> str | None:
    """How `metric`'s predictions are combined, None when they are not."""
    if metric is Metric.ROC_AUC:
        return RANK_MEAN
    if metric in _AVERAGED:
        return MEAN
    if metric in _VOTED:
        return VOTE
    return None


def beats(candidate: float, best: float, lower_is_better: bool) -> bool:
    """Whether `candidate` is strictly better than `best` (beyond float rounding); a score
    that is not finite never
    beats, and any finite score beats one that is not."""
    if not math.isfinite(candidate):
        return False
    if not math.isfinite(best):
        return True
    # Equal up to float rounding (an AUC summed in another order) is not better.
    if math.isclose(candidate, best, rel_tol=1e-12, abs_tol=1e-12):
        return False
    return candidate < best if lower_is_better else candidate > best


def combine(spec: TaskSpec, members: Sequence[Member], private_dir: Path) -> Ensemble | NoEnsemble:
    """The ensemble of `members` (best holdout score first, ties to the lower node id), scored
    with `score_holdout` against the answers in `private_dir`.

    Rows are matched by id (normalised text, so "7" and "7.0" are one id), within the real
    part and within the holdout part separately. ROC AUC averages each column's normalised
    ranks (average ranks for ties over the row count) in each part; log loss and the
    regression metrics average the numbers (class probabilities that sum to 1 still do);
    label metrics take each cell's most frequent label, ties to the best member's. A column
    the metric averages that holds a cell which is not a number is voted instead; a column
    the metric does not read (carried, like the id) is the best member's. A
    `NoEnsemble` says why when there are fewer than 2 members, the metric's predictions cannot
    be combined, or a member cannot be read or does not match the best member."""
    scored = [m for m in members if math.isfinite(m.holdout_metric)]
    if len(scored) < 2:
        return NoEnsemble("fewer than 2 working nodes have a holdout score")
    method = method_for(spec.metric)
    if method is None:
        what = ("map@k predictions are ranked label lists, which are not averaged or voted"
                if spec.metric is Metric.MAP_AT_K else
                "the competition's own grader decides what a prediction is, so its "
                "submissions are not combined")
        return NoEnsemble(f"no ensemble for {spec.metric.value}: {what}")
    ordered = sorted(scored, key=lambda m: (m.holdout_metric if spec.lower_is_better
                                            else -m.holdout_metric, m.node_id))
    try:
        real = _combined([_read(m, m.real_root, m.real_file) for m in ordered],
                         ordered, spec, method, "real test")
        held = _combined([_read(m, m.holdout_root, m.holdout_file) for m in ordered],
                         ordered, spec, method, "holdout")
    except _Refused as exc:
        return NoEnsemble(str(exc))
    try:
        metric = score_holdout(spec, held, private_dir)
    except GradingError as exc:
        return NoEnsemble(f"the combined holdout rows cannot be scored: {exc.message}")
    return Ensemble(members=tuple(m.node_id for m in ordered), method=method,
                    holdout_metric=metric, real=real)


def write_submission(frame: pd.DataFrame, path: Path) -> None:
    """`frame` as CSV at `path` (no index, "\\n" line ends), written to a temporary file in
    the same folder and renamed over `path`, so a reader sees the old file or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.",
                                         suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8", newline="") as out:
            frame.to_csv(out, index=False, lineterminator="\n")
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _read(member: Member, root: Path, relative: str) -> pd.DataFrame:
    try:
        return read_text_table(root, relative)
    except HoldoutError as exc:
        raise _Refused(f"node {member.node_id}'s submission cannot be used: "
                       f"{exc.message}") from None


def _combined(frames: list[pd.DataFrame], members: list[Member], spec: TaskSpec,
              method: str, part: str) -> pd.DataFrame:
    """The members' rows of one part combined, in the first frame's row order and columns;
    columns the metric does not read (carried, like an id) are the first frame's."""
    first = frames[0]
    id_column = spec.id_column
    if id_column not in first.columns:
        raise _Refused(f"node {members[0].node_id}'s {part} rows have no id column "
                       f"{id_column!r}")
    ids = normalise_labels(first[id_column])
    if len(set(ids)) != len(ids):
        raise _Refused(f"node {members[0].node_id}'s {part} rows repeat ids")
    aligned = [first]
    for member, frame in zip(members[1:], frames[1:], strict=True):
        if sorted(frame.columns) != sorted(first.columns):
            raise _Refused(f"node {member.node_id}'s {part} columns {list(frame.columns)} are "
                           f"not node {members[0].node_id}'s {list(first.columns)}")
        position = {ident: row for row, ident in enumerate(normalise_labels(frame[id_column]))}
        if len(position) != len(frame) or set(position) != set(ids):
            raise _Refused(f"node {member.node_id}'s {part} ids are not node "
                           f"{members[0].node_id}'s")
        rows = frame.iloc[[position[ident] for ident in ids]][list(first.columns)]
        aligned.append(rows.reset_index(drop=True))
    out = first.reset_index(drop=True).copy()
    for column in _predictions(spec, list(first.columns)):
        out[column] = _column([frame[column].tolist() for frame in aligned], method)
    return out


def _predictions(spec: TaskSpec, columns: list[str]) -> list[str]:
    """The columns the metric reads: the scored ones, else (a probability column per class,
    named by the class) every column but the id, as submission validation reads them."""
    scored = [c for c in spec.scored_columns if c in columns]
    return scored or [c for c in columns if c != spec.id_column]


def _column(cells: list[list[str]], method: str) -> list[str]:
    """One column's combined cells, from each member's cells (best member first)."""
    if method == VOTE:
        return _vote(cells)
    numbers = _numbers(cells)
    if numbers is None:
        # A label or a blank among the numbers: the cells are labels here, not scores.
        return _vote(cells)
    if method == RANK_MEAN:
        import numpy as np

        numbers = np.vstack([normalised_ranks(row) for row in numbers])
    return [repr(float(value)) for value in numbers.mean(axis=0)]


def normalised_ranks(values: FloatArray) -> FloatArray:
    """Each value's rank among `values` (1 for the smallest, ties their average rank) over
    the count, so every rank lies in (0, 1]."""
    import numpy as np
    import pandas as pd

    ranks = pd.Series(values).rank(method="average").to_numpy(dtype=np.float64)
    return ranks / len(values)


def _numbers(cells: list[list[str]]) -> FloatArray | None:
    """The cells as a members-by-rows array of finite floats (read as grading reads them),
    None if any cell is not one."""
    import numpy as np
    import pandas as pd

    numbers = np.vstack([pd.to_numeric(pd.Series(row, dtype=str), errors="coerce")
                         .to_numpy(dtype=np.float64) for row in cells])
    return numbers if np.isfinite(numbers).all() else None


def _vote(cells: list[list[str]]) -> list[str]:
    """Per row, the label most members wrote ("1" and "1.0" are one label), written as the
    first member holding it wrote it; a tie goes to the label of the best member among those
    tied (the earliest member)."""
    voted = []
    for row in zip(*cells, strict=True):
        counts: dict[str, int] = {}
        first_text: dict[str, str] = {}
        for cell in row:
            label = normalise_label(cell)
            counts[label] = counts.get(label, 0) + 1
            first_text.setdefault(label, cell)
        most = max(counts.values())
        # dicts keep insertion order, so the first label reaching `most` is the best member's.
        winner = next(label for label, count in counts.items() if count == most)
        voted.append(first_text[winner])
    return voted
