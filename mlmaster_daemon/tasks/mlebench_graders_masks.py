"""mle-bench's graders of full-benchmark competitions scored on segmentation masks written as run-
length encodings: IoU-threshold precision, Dice, F0.5, Dice with Hausdorff distance; reproduced
as `mlebench_graders` reproduces Lite's. Families are named by competition id.

Masks are kept as runs of flat (column-major) pixel indices, never as images, except the 3-D
volumes the Hausdorff distance needs one at a time: mle-bench decodes every image whole (a
HuBMAP kidney is over a billion pixels), the counts it takes from them are the same.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from mlmaster_daemon.errors import GradingError
from mlmaster_daemon.tasks.mlebench_graders import Grader, require, same_length

IntArray = npt.NDArray[np.int64]
# Below this every start - 1 + length fits an int64, as in mle-bench's numpy arithmetic.
_SMALL = 2**62
_INT64 = 2**63
_UINT64 = 2**64


@dataclass(frozen=True)
class Runs:
    """The pixels an RLE sets in an image of `size` pixels: sorted, disjoint, non-empty
    [start, end) runs of flat column-major indices (mle-bench's `rle_decode` order)."""

    starts: IntArray
    ends: IntArray
    size: int

    @property
    def count(self) -> int:
        return int((self.ends - self.starts).sum())

    def overlap(self, other: Runs) -> int:
        """How many pixels both set."""
        edges = np.concatenate([self.starts, self.ends, other.starts, other.ends])
        steps = np.concatenate([np.ones(len(self.starts), np.int64),
                                -np.ones(len(self.ends), np.int64),
                                np.ones(len(other.starts), np.int64),
                                -np.ones(len(other.ends), np.int64)])
        order = np.argsort(edges, kind="stable")
        edges, depth = edges[order], np.cumsum(steps[order])
        return int((np.diff(edges) * (depth[:-1] == 2)).sum()) if len(edges) else 0

    def mask(self, height: int, width: int) -> npt.NDArray[np.bool_]:
        """The (height, width) image, as mle-bench's `rle_decode` lays it out."""
        change = np.zeros(self.size + 1, np.int64)
        change[self.starts] += 1
        change[self.ends] -= 1
        return (np.cumsum(change[:-1]) > 0).reshape((width, height)).T


def _kind(values: Sequence[int]) -> str:
    """The dtype numpy 1.26 gives a list of positive ints: int64, uint64, float64 (the two
    mixed) or object (any past 2**64)."""
    if max(values) >= _UINT64:
        return "O"
    past_int64 = [v >= _INT64 for v in values]
    return "u" if all(past_int64) else "f" if any(past_int64) else "i"


def _ends_as_numpy_adds(starts: list[int], lengths: list[int]) -> list[int]:
    """`(np.array(starts) - 1) + lengths` as numpy 1.26 computes it, for values past 2**62:
    int64 and uint64 sums wrap, object arrays add exactly, and a float anywhere (int64 mixed
    with uint64) makes run ends that slicing refuses."""
    lows = [s - 1 for s in starts]
    if len(lengths) == 1:
        lengths = lengths * len(lows)
    raw = [lo + n for lo, n in zip(lows, lengths, strict=True)]
    kinds = {_kind(starts), _kind(lengths)}
    if "f" in kinds or kinds == {"i", "u"}:
        raise GradingError("run-length values past 2**63 make non-integer run ends")
    if "O" in kinds:
        return raw
    if kinds == {"u"}:
        return [v % _UINT64 for v in raw]
    return [v - _UINT64 if v >= _INT64 else v for v in raw]


def decode(rle: object, height: object, width: object, who: str) -> Runs:
    """mle-bench's `competitions.utils.rle_decode`: its refusals (a non-string, a non-int
    size, a value that is not an int, unsorted starts, a start or length under 1, pairs that
    overlap or do not pair up) as GradingError, and its leniencies (runs past the image cut or
    ignored, a lone trailing start ignored, a single length shared by two starts)."""
    if not isinstance(rle, str):
        raise GradingError(f"{who}: a mask must be a run-length string, not {rle!r:.40}")
    if not isinstance(height, int) or not isinstance(width, int):
        raise GradingError(f"{who}: image sizes must be whole numbers")
    if height < 0 or width < 0 or height * width >= _SMALL:
        raise GradingError(f"{who}: image size {height}x{width} is impossible")
    size = height * width
    empty = np.zeros(0, np.int64)
    tokens = rle.split()
    if not tokens:
        return Runs(empty, empty, size)
    try:
        values = [int(t) for t in tokens]
    except ValueError:
        raise GradingError(f"{who}: run-length values must be whole numbers") from None
    starts, lengths = values[0::2], values[1::2]
    if starts != sorted(starts):
        raise GradingError(f"{who}: run starts must be sorted")
    if min(starts) < 1 or (lengths and min(lengths) < 1):
        raise GradingError(f"{who}: run starts and lengths must be positive")
    if not lengths:
        return Runs(empty, empty, size)
    if len(lengths) != len(starts) and len(lengths) != 1:
        raise GradingError(f"{who}: run-length values do not come in pairs")
    if max(*starts, *lengths) < _SMALL:
        lows = np.asarray(starts, np.int64) - 1
        highs = lows + np.asarray(lengths, np.int64)
    else:
        highs_list = _ends_as_numpy_adds(starts, lengths)
        lows = np.asarray([min(s - 1, size) for s in starts], np.int64)
        # A negative end counts from the image's end, as a slice's does.
        highs = np.asarray([max(h + size, 0) if h < 0 else min(h, size) for h in highs_list],
                           np.int64)
    lows, highs = np.minimum(lows, size), np.minimum(highs, size)
    kept = highs > lows
    reach = np.maximum.accumulate(np.where(kept, highs, 0))
    if (kept[1:] & (lows[1:] < reach[:-1])).any():
        raise GradingError(f"{who}: runs overlap")
    return Runs(lows[kept], highs[kept], size)


def dice(a: Runs, b: Runs, both_empty: float) -> float:
    """mle-bench's `metrics.dice_coefficient`."""
    total = a.count + b.count
    return both_empty if total == 0 else 2 * a.overlap(b) / total


def _strings_or_blank(values: Sequence[Any], who: str) -> list[str]:
    """`fillna("")`, then every value must be a string."""
    out = ["" if not isinstance(v, str) and pd.isna(v) else v for v in values]
    if not all(isinstance(v, str) for v in out):
        raise GradingError(f"{who} must hold run-length strings (blank for no mask)")
    return out


def _ids_agree_sorted(sub: pd.DataFrame, ans: pd.DataFrame,
                      id_column: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    s = sub.sort_values(id_column).reset_index(drop=True)
    a = ans.sort_values(id_column).reset_index(drop=True)
    if (s[id_column].to_numpy() != a[id_column].to_numpy()).any():
        raise GradingError(f"the submission's {id_column} values are not the answers' ids")
    return s, a


_TGS_SIDE = 101
# np.arange(0.5, 1.0, 0.05), the IoU thresholds of tgs's iou_metric.
_TGS_THRESHOLDS = np.arange(0.5, 1.0, 0.05)


def _tgs_image(truth: Runs, guess: Runs) -> float:
    """tgs's `iou_metric` for one image. Its histograms bin a constant mask's pixels all as
    salt, so an empty prediction counts as a full one once the image holds any salt."""
    salt, predicted = truth.count, guess.count
    if salt == 0:
        return 1.0 if predicted == 0 else 0.0
    if predicted == 0:
        iou = salt / truth.size
    else:
        both = truth.overlap(guess)
        iou = both / (salt + predicted - both)
    return float(np.count_nonzero(iou > _TGS_THRESHOLDS)) / len(_TGS_THRESHOLDS)


def _tgs_salt(sub: pd.DataFrame, ans: pd.DataFrame, id_column: str,
              targets: tuple[str, ...]) -> float:
    """tgs-salt-identification-challenge: exactly the id and mask columns, every cell a
    string once blanks are "", the same ids; the mean over images of the precision at IoU
    thresholds 0.5 to 0.95 of the single salt object."""
    columns = {id_column, targets[0]}
    if set(ans.columns) != columns:
        raise GradingError(f"the answers' columns must be exactly {sorted(columns)}")
    if set(sub.columns) != columns:
        raise GradingError(f"the submission's columns must be exactly {sorted(columns)}")
    same_length(sub, ans)
    for frame, who in ((ans, "the answers"), (sub, "the submission")):
        for column in columns:
            frame[column] = _strings_or_blank(frame[column].tolist(), f"{who}' {column}")
    s, a = _ids_agree_sorted(sub, ans, id_column)
    size = _TGS_SIDE
    guesses = [decode(v, size, size, "the submission") for v in s[targets[0]]]
    truths = [decode(v, size, size, "the answers") for v in a[targets[0]]]
    return float(np.mean([_tgs_image(t, g) for t, g in zip(truths, guesses, strict=True)]))


def _hubmap_kidney(sub: pd.DataFrame, ans: pd.DataFrame, id_column: str,
                   targets: tuple[str, ...]) -> float:
    """hubmap-kidney-segmentation: the submission's `predicted` masks against the answers'
    `encoding` (the answers' column is the one scored, whatever `targets` names), the same set
    of ids and number of rows, paired by sorted id and sized by the answers' width_pixels and
    height_pixels; the mean Dice per image, 1 where both are empty."""
    target = "predicted"
    require(sub, (id_column, target))
    for column in ("encoding", "width_pixels", "height_pixels"):
        if column not in ans.columns:
            raise GradingError(f"the answers have no column {column!r}")
    same_length(sub, ans)
    if set(sub[id_column]) != set(ans[id_column]):
        raise GradingError(f"the submission's {id_column} values are not the answers' ids")
    s = sub.sort_values(id_column).reset_index(drop=True)
    a = ans.sort_values(id_column).reset_index(drop=True)
    guesses = [v if isinstance(v, str) or not pd.isna(v) else "" for v in s[target].tolist()]
    sizes = list(zip(a["height_pixels"].tolist(), a["width_pixels"].tolist(), strict=True))
    scores = []
    for guess, truth, (height, width) in zip(guesses, a["encoding"].tolist(), sizes,
                                              strict=True):
        scores.append(dice(decode(guess, height, width, "the submission"),
                           decode(truth, height, width, "the answers"), 1.0))
    return float(np.mean(scores))


def _image_side(value: Any, who: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError, OverflowError):
        raise GradingError(f"{who}: image sizes must be whole numbers") from None


def _contrails(sub: pd.DataFrame, ans: pd.DataFrame, id_column: str,
               targets: tuple[str, ...]) -> float:
    """google-research-identify-contrails-reduce-global-warming: the id and mask columns
    (others ignored), the same ids, "-" for an empty mask and no blank cell; one Dice over
    the pixels of every image together, all images the same size."""
    target = targets[0]
    expected = {id_column, target, "height", "width"}
    if set(ans.columns) != expected:
        raise GradingError(f"the answers' columns must be exactly {sorted(expected)}")
    require(sub, (id_column, target))
    same_length(sub, ans)
    s, a = _ids_agree_sorted(sub, ans, id_column)
    sizes = [(_image_side(h, "the answers"), _image_side(w, "the answers"))
             for h, w in zip(a["height"].tolist(), a["width"].tolist(), strict=True)]
    truths = [decode("" if v == "-" else v, h, w, "the answers")
              for v, (h, w) in zip(a[target].tolist(), sizes, strict=True)]
    guesses = [decode("" if v == "-" else v, h, w, "the submission")
               for v, (h, w) in zip(s[target].tolist(), sizes, strict=True)]
    if len(set(sizes)) > 1:
        raise GradingError("the answers' images are not all one size")
    predicted = sum(g.count for g in guesses)
    total = predicted + sum(t.count for t in truths)
    if total == 0:
        return float("nan")
    both = sum(t.overlap(g) for t, g in zip(truths, guesses, strict=True))
    return 2 * both / total


_VESUVIUS_BETA2 = 0.5**2


def _f05(truth: Runs, guess: Runs) -> float:
    """scikit-learn's binary fbeta_score(beta=0.5) from the counts: 0 where it is
    undefined (no ink either side)."""
    hits = truth.overlap(guess)
    denominator = _VESUVIUS_BETA2 * truth.count + guess.count
    return 0.0 if denominator == 0 else (1 + _VESUVIUS_BETA2) * hits / denominator


def _vesuvius_ink(sub: pd.DataFrame, ans: pd.DataFrame, id_column: str,
                  targets: tuple[str, ...]) -> float:
    """vesuvius-challenge-ink-detection: rows paired by position, exactly the id and mask
    columns, the same id on each pair, a mask string (rows first, as the answers' width and
    height give); the mean F0.5 of the ink pixels per row."""
    target = targets[0]
    same_length(sub, ans)
    if len(sub) == 0:
        return float("nan")
    expected = {id_column, target, "width", "height"}
    if set(ans.columns) != expected:
        raise GradingError(f"the answers' columns must be exactly {sorted(expected)}")
    if len(sub.columns) != 2 or not {id_column, target} <= set(sub.columns):
        raise GradingError(f"the submission's columns must be exactly {id_column} and "
                           f"{target}")
    scores = []
    rows = zip(sub[id_column].tolist(), sub[target].tolist(), ans[id_column].tolist(),
               ans[target].tolist(), ans["width"].tolist(), ans["height"].tolist(), strict=True)
    for guess_id, guess, truth_id, truth, width, height in rows:
        if not guess_id == truth_id:
            raise GradingError(f"the submission's {id_column} {guess_id!r:.40} is not the "
                               f"answers' {truth_id!r:.40} in that row")
        across = _image_side(width, "the answers")
        down = _image_side(height, "the answers")
        # Decoded as a width x height image then transposed: the same flat runs, row-major.
        scores.append(_f05(decode(truth, across, down, "the answers"),
                           decode(guess, across, down, "the submission")))
    return float(np.mean(scores))


_UW_DICE_WEIGHT = 0.4
_UW_HAUSDORFF_WEIGHT = 0.6


@dataclass(frozen=True)
class _Slice:
    runs: Runs
    height: int
    width: int


def _volumes(slices: list[_Slice], ids: list[Any],
             who: str) -> list[list[tuple[str, list[_Slice]]]]:
    """uw's `group_masks_by_day`, before any mask is drawn: the rows sorted by id (stable),
    rows of one slice id joined, slices of one case and day ("<case_day>_slice_...")
    stacked in that order. Ids must be strings, masks of a slice or day one size."""
    if not all(isinstance(i, str) for i in ids):
        raise GradingError(f"{who}'s ids must be strings like case1_day2_slice_0003")
    by_slice: dict[str, list[_Slice]] = {}
    for index in sorted(range(len(ids)), key=lambda k: ids[k]):
        by_slice.setdefault(ids[index], []).append(slices[index])
    by_day: dict[str, list[tuple[str, list[_Slice]]]] = {}
    for slice_id, parts in by_slice.items():
        by_day.setdefault(slice_id.split("_slice_")[0], []).append((slice_id, parts))
    for day in by_day.values():
        if len({(p.height, p.width) for _, parts in day for p in parts}) > 1:
            raise GradingError(f"{who}'s masks of one case and day differ in size")
    return list(by_day.values())


def _volume(day: list[tuple[str, list[_Slice]]]) -> npt.NDArray[np.uint8]:
    return np.stack([np.logical_or.reduce([p.runs.mask(p.height, p.width) for p in parts])
                     for _, parts in day]).astype(np.uint8)


def _directed_hausdorff(source: npt.NDArray[np.float64],
                        target: npt.NDArray[np.float64]) -> float:
    """scipy's `directed_hausdorff(source, target)[0]`, the farthest any source point lies
    from its nearest target point, found with a k-d tree: the same distances, without
    directed_hausdorff's scan, which takes hours on a day's worth of overlapping masks."""
    from scipy.spatial import cKDTree  # type: ignore[import-untyped]

    nearest, _ = cKDTree(target).query(source, k=1)
    return float(np.max(nearest))


def _hausdorff(predicted: npt.NDArray[np.uint8], true: npt.NDArray[np.uint8]) -> float:
    """uw's `hausdorff_distance`: symmetric, on pixel coordinates scaled by the true volume's
    shape, over the unit cube's diagonal; NaN when both are empty, 1 when one is or the
    prediction is over ten times larger."""
    guessed, real = int(predicted.sum()), int(true.sum())
    if guessed == 0 and real == 0:
        return float("nan")
    if np.array_equal(predicted, true):
        return 0.0
    if guessed == 0 or real == 0 or guessed > 10 * real:
        return 1.0
    scale = true.shape
    real_points = np.argwhere(true) / scale
    guessed_points = np.argwhere(predicted) / scale
    distance = max(_directed_hausdorff(real_points, guessed_points),
                   _directed_hausdorff(guessed_points, real_points))
    return float(distance / np.sqrt(3))


def _uw_gi_tract(sub: pd.DataFrame, ans: pd.DataFrame, id_column: str,
                 targets: tuple[str, ...]) -> float:
    """uw-madison-gi-tract-image-segmentation: id, class and mask columns; rows paired by
    position (extra rows ignored, none checked against the answers' ids) and sized by the
    answers' image_height and image_width; 0.4 x the mean Dice per row (both empty skipped)
    + 0.6 x (1 - the mean Hausdorff distance per case and day, all classes joined)."""
    target = targets[0]
    for column in ("image_height", "image_width"):
        if column not in ans.columns:
            raise GradingError(f"the answers have no column {column!r}")
    require(sub, (id_column, "class", target))
    heights = ans["image_height"].astype(np.int64).tolist()
    widths = ans["image_width"].astype(np.int64).tolist()
    paired = min(len(sub), len(ans))
    guessed = [v if isinstance(v, str) or not pd.isna(v) else ""
               for v in sub[target].tolist()[:paired]]
    truth = [v if isinstance(v, str) or not pd.isna(v) else "" for v in ans[target].tolist()]
    guesses = [_Slice(decode(v, h, w, "the submission"), h, w)
               for v, h, w in zip(guessed, heights, widths, strict=False)]
    truths = [_Slice(decode(v, h, w, "the answers"), h, w)
              for v, h, w in zip(truth, heights, widths, strict=True)]
    guessed_days = _volumes(guesses, sub[id_column].tolist()[:paired], "the submission")
    true_days = _volumes(truths, ans[id_column].tolist(), "the answers")
    dice_per_row = np.array([dice(g.runs, t.runs, float("nan"))
                             for g, t in zip(guesses, truths, strict=False)], np.float64)
    distances = np.array([_hausdorff(_volume(g), _volume(t))
                          for g, t in zip(guessed_days, true_days, strict=False)], np.float64)
    return float(_UW_DICE_WEIGHT * _nanmean(dice_per_row)
                 + _UW_HAUSDORFF_WEIGHT * (1 - _nanmean(distances)))


def _nanmean(values: npt.NDArray[np.float64]) -> float:
    kept = values[~np.isnan(values)]
    return float(kept.mean()) if len(kept) else float("nan")


GRADERS: dict[str, Grader] = {
    "tgs-salt-identification-challenge": _tgs_salt,
    "hubmap-kidney-segmentation": _hubmap_kidney,
    "google-research-identify-contrails-reduce-global-warming": _contrails,
    "vesuvius-challenge-ink-detection": _vesuvius_ink,
    "uw-madison-gi-tract-image-segmentation": _uw_gi_tract,
}
