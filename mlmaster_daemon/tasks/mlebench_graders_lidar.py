"""mle-bench's grader of 3d-object-detection-for-autonomous-vehicles: mean average precision of
3D boxes over IoU thresholds 0.5 to 0.95 (its grade.py and mAP_evaluation.py), reproduced as
`mlebench_graders_detection` reproduces the 2D ones, whose prediction-string parsing it shares."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from mlmaster_daemon.errors import GradingError
from mlmaster_daemon.tasks.mlebench_graders import FloatArray, Grader, require, same_length
from mlmaster_daemon.tasks.mlebench_graders_detection import (
    IntArray,
    ids_agree,
    prediction_numbers,
    prediction_text,
)

# 3d-object-detection-for-autonomous-vehicles: 3D mAP over IoU 0.5 to 0.95

_THRESHOLDS = np.array([0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95])
_PAIRS_PER_CHUNK = 1 << 20


class _Boxes:
    """Every object of one side's prediction strings, parsed as grade.parse_row parses them,
    and the geometry mAP_evaluation.Box3D gives it: per object its row, class name, score,
    base rectangle (5 closed corners), z range and volume, and whether Box3D accepts it."""

    def __init__(self, cells: Sequence[Any], who: str) -> None:
        self.who = who
        rows: list[int] = []
        numbers: list[FloatArray] = [np.zeros(0)]
        self.names: list[str] = []
        for row, cell in enumerate(cells):
            text = prediction_text(cell, who)
            if text.strip() == "":
                continue
            tokens = text.split(" ")
            if len(tokens) % 9:
                raise GradingError(f"{who}: a PredictionString is not groups of 9 values "
                                   "(confidence x y z width length height yaw class): "
                                   f"{text[:80]!r}")
            self.names += tokens[8::9]
            rows += [row] * (len(tokens) // 9)
            del tokens[8::9]
            numbers.append(np.array(prediction_numbers(tokens, who)))
        self.row = np.array(rows, dtype=np.int64)
        values = np.concatenate(numbers).reshape(-1, 8)
        self.score = values[:, 0]
        cos: list[float] = []
        sin: list[float] = []
        for yaw in values[:, 7].tolist():
            half = (yaw or 0.0) / 2.0  # Quaternion(axis=[0, 0, 1], radians=0.0) takes 0.0
            try:
                cos.append(math.cos(half))
            except ValueError:
                raise GradingError(f"{who}: a yaw of {yaw} has no rotation") from None
            sin.append(math.sin(half))
        w, z = np.array(cos, dtype=np.float64), np.array(sin, dtype=np.float64)
        quaternion = np.stack([w, 0.0 * z, 0.0 * z, z], axis=1)
        self._shape(values[:, 1:4], values[:, 4:7], quaternion)

    def _shape(self, centre: FloatArray, size: FloatArray, q: FloatArray) -> None:
        self.nan = np.isnan(centre).any(axis=1) | np.isnan(size).any(axis=1) \
            | np.isnan(q).any(axis=1)
        self.flat = ~(size > 0).all(axis=1)
        with np.errstate(all="ignore"):
            cos, sin = _rotation_cos_sin(q)
            x, y = centre[:, 0], centre[:, 1]
            half_w, half_l = size[:, 0] / 2, size[:, 1] / 2
            p0 = (x + half_l * cos + half_w * sin, y + half_l * sin - half_w * cos)
            p1 = (x + half_l * cos - half_w * sin, y + half_l * sin + half_w * cos)
            p2 = (x - half_l * cos - half_w * sin, y - half_l * sin + half_w * cos)
            p3 = (x - half_l * cos + half_w * sin, y - half_l * sin - half_w * cos)
            square = np.ones(len(x), dtype=bool)
            for a, b, c in ((p0, p1, p3), (p1, p0, p2), (p2, p1, p3), (p3, p0, p2)):
                dot = (b[0] - a[0]) * (c[0] - a[0]) + (b[1] - a[1]) * (c[1] - a[1])
                square &= np.isclose(dot, 0)
            self.skew = ~square
            self.corners = np.stack([np.stack(p, axis=1) for p in (p0, p1, p2, p3, p0)], axis=1)
            self.low, self.high = self.corners.min(axis=1), self.corners.max(axis=1)
            self.z_min = centre[:, 2] - size[:, 2] / 2
            self.z_max = centre[:, 2] + size[:, 2] / 2
            self.volume = size[:, 0] * size[:, 1] * size[:, 2]

    def check(self, used: npt.NDArray[np.bool_]) -> None:
        """Box3D's refusals, for the objects the metric builds boxes of."""
        for bad, why in ((self.nan, "a NaN position, size or yaw"),
                         (self.flat, "a size that is not positive"),
                         (self.skew, "a base that is not a rectangle in floating point "
                                     "(sizes or coordinates too large)")):
            if (bad & used).any():
                raise GradingError(f"{self.who}: a box of a scored class has {why}")


def _rotation_cos_sin(q: FloatArray) -> tuple[FloatArray, FloatArray]:
    """Quaternion(q).rotation_matrix[0, 0] and [1, 0]: normalised unless within 1e-14 of
    unit, then pyquaternion's 4x4 product (the same matmul, so the same rounding)."""
    norm2 = (q * q).sum(axis=1)
    scale = np.where((np.abs(1.0 - norm2) >= 1e-14) & (np.sqrt(norm2) > 0),
                     np.sqrt(norm2), 1.0)
    w, x, y, z = (q / scale[:, None]).T
    left = np.stack([np.stack([w, -x, -y, -z], 1), np.stack([x, w, -z, y], 1),
                     np.stack([y, z, w, -x], 1), np.stack([z, -y, x, w], 1)], 1)
    right = np.stack([np.stack([w, -x, -y, -z], 1), np.stack([x, w, z, -y], 1),
                      np.stack([y, -z, w, x], 1), np.stack([z, y, -x, w], 1)], 1)
    product = np.matmul(left, right.transpose(0, 2, 1))
    return product[:, 1, 1], product[:, 2, 1]


def _pair_ious(guess: _Boxes, g: IntArray, truth: _Boxes, t: IntArray) -> FloatArray:
    """Box3D.get_iou of guess g[i] with true box t[i]."""
    import shapely  # type: ignore[import-untyped]

    # GEOS gives an empty intersection for disjoint envelopes; only the rest are overlaid.
    touching = np.nonzero((guess.low[g] <= truth.high[t]).all(axis=1)
                          & (truth.low[t] <= guess.high[g]).all(axis=1))[0]
    area = np.zeros(len(g))
    if len(touching):
        try:
            area[touching] = shapely.area(shapely.intersection(
                shapely.polygons(guess.corners[g[touching]]),
                shapely.polygons(truth.corners[t[touching]])))
        except shapely.errors.GEOSException as exc:
            raise GradingError(f"a box's base cannot be intersected ({exc})") from None
    with np.errstate(all="ignore"):
        # builtin max(other, self) / min(other, self) as Box3D calls them, NaN included
        low = np.where(guess.z_min[g] > truth.z_min[t], guess.z_min[g], truth.z_min[t])
        high = np.where(guess.z_max[g] < truth.z_max[t], guess.z_max[g], truth.z_max[t])
        overlap = np.where(high - low > 0, high - low, 0.0) * area
        iou: FloatArray = np.clip(
            overlap / (guess.volume[g] + truth.volume[t] - overlap), 0, 1)
    return iou


def _segment_sums(values: FloatArray, starts: IntArray, lengths: IntArray) -> FloatArray:
    """np.sum of each values[start:start + length] (rows of one length summed together, which
    numpy adds in the same pairwise order as a lone 1-D sum)."""
    sums = np.zeros(len(starts))
    for length in np.unique(lengths).tolist():
        which = np.nonzero(lengths == length)[0]
        sums[which] = values[starts[which][:, None] + np.arange(length)[None, :]].sum(axis=1)
    return sums


def _best_overlaps(guess: _Boxes, g: IntArray, truth: _Boxes, t_sorted: IntArray,
                   t_start: IntArray, t_count: IntArray) -> tuple[FloatArray, IntArray]:
    """For each guess g[i] against the true boxes of its class, np.max and np.argmax of the
    IoUs (NaN wins both, as in numpy), in chunks of pairs."""
    best = np.empty(len(g))
    best_at = np.empty(len(g), dtype=np.int64)
    done = 0
    while done < len(g):
        reach = np.cumsum(t_count[done:])
        stop = done + max(1, int(np.searchsorted(reach, _PAIRS_PER_CHUNK, side="right")))
        counts = t_count[done:stop]
        starts = np.cumsum(counts) - counts
        local = np.arange(int(counts.sum())) - np.repeat(starts, counts)
        pair_g = np.repeat(g[done:stop], counts)
        pair_t = t_sorted[np.repeat(t_start[done:stop], counts) + local]
        iou = _pair_ious(guess, pair_g, truth, pair_t)
        top = np.maximum.reduceat(iou, starts)
        top_each = np.repeat(top, counts)
        first = (iou == top_each) | (np.isnan(iou) & np.isnan(top_each))
        best[done:stop] = top
        best_at[done:stop] = np.minimum.reduceat(np.where(first, local, len(local)), starts)
        done = stop
    return best, best_at


def _class_aps(best: FloatArray, best_at: IntArray, group: IntArray,
               n_true: FloatArray) -> FloatArray:
    """recall_precision's AP per (threshold, class group), the guesses in score order within
    contiguous groups: each guess is a hit when its best overlap passes the threshold and a
    true positive when no earlier guess of the group hit the same true box."""
    n = len(best)
    hit = best[None, :] > _THRESHOLDS[:, None]
    by_box = np.lexsort((best_at, group))
    new = np.ones(n, dtype=bool)
    new[1:] = (group[by_box][1:] != group[by_box][:-1]) | (best_at[by_box][1:]
                                                            != best_at[by_box][:-1])
    start = np.maximum.accumulate(np.where(new, np.arange(n), 0))
    hit_by_box = hit[:, by_box]
    before: IntArray = np.cumsum(hit_by_box, axis=1) - hit_by_box
    true = np.empty_like(hit)
    true[:, by_box] = hit_by_box & (before - before[:, start] == 0)
    opens = np.ones(n, dtype=bool)
    opens[1:] = group[1:] != group[:-1]
    group_start = np.maximum.accumulate(np.where(opens, np.arange(n), 0))
    total = np.cumsum(true, axis=1, dtype=np.float64)
    tp = total - (total - true)[:, group_start]
    recall = tp / n_true[None, :]
    precision = tp / np.maximum(np.arange(n) - group_start + 1.0, np.finfo(np.float64).eps)
    # The envelope (suffix max within a group), exact: precisions ranked, the rank keyed
    # by group so one running max over the reversed guesses stays inside each group.
    levels, rank = np.unique(precision, return_inverse=True)
    rank = rank.reshape(precision.shape)
    lane = (group.max(initial=0) - group)[::-1].astype(np.int64) * (len(levels) + 1)
    running = np.maximum.accumulate(rank[:, ::-1] + lane[None, :], axis=1) - lane[None, :]
    envelope = levels[running[:, ::-1]]
    previous = np.where(opens[None, :], 0.0, np.roll(recall, 1, axis=1))
    step = recall != previous
    closes = np.append(opens[1:], True)
    # get_ap's terms, each group's in order, then its (1 - last recall) * 0 when not at 1
    terms = np.where(step, (recall - previous) * envelope, 0.0)
    last = closes[None, :] & (recall != 1.0)
    t_index, position = np.nonzero(step | last)
    extra = last[t_index, position] & step[t_index, position]
    keys = np.concatenate([t_index * n + position, t_index[extra] * n + position[extra]])
    order = np.lexsort((np.arange(len(keys)) >= len(t_index), keys))
    values = np.concatenate([np.where(step[t_index, position], terms[t_index, position], 0.0),
                             np.zeros(int(extra.sum()))])[order]
    segment = (keys[order] // n) * n + group_start[keys[order] % n]
    starts = np.nonzero(np.append(True, segment[1:] != segment[:-1]))[0]
    lengths = np.diff(np.append(starts, len(segment)))
    sums = _segment_sums(values, starts, lengths)
    aps = np.zeros((len(_THRESHOLDS), int(group.max(initial=-1)) + 1))
    aps[segment[starts] // n, group[segment[starts] % n]] = sums
    return aps


def _lyft_map(sub: pd.DataFrame, ans: pd.DataFrame, id_column: str,
              targets: tuple[str, ...]) -> float:
    """3d-object-detection-for-autonomous-vehicles: rows matched by sorted Id (a blank
    submission string is no boxes); per sample, per class of its true boxes, the Lyft
    devkit's AP at IoU thresholds 0.5 to 0.95 of boxes' 3D overlap; the mean over samples
    and thresholds of each sample's mean over classes."""
    same_length(sub, ans)
    require(sub, ("Id",))
    require(sub, ("PredictionString",))
    s, a = sub.sort_values("Id"), ans.sort_values("Id")
    ids_agree(s["Id"], a["Id"], "Id")
    guess = _Boxes([c if isinstance(c, str) or not pd.isna(c) else ""
                    for c in s["PredictionString"].tolist()], "PredictionString")
    truth = _Boxes(a["PredictionString"].tolist(), "the answers")
    # Every (sample, class) of the true boxes in sorted order: the classes each sample's
    # mean runs over; a guess of any other class is never scored.
    classes = sorted(set(zip(truth.row.tolist(), truth.names, strict=True)))
    class_of = {key: i for i, key in enumerate(classes)}
    t_class = np.array([class_of[k] for k in zip(truth.row.tolist(), truth.names,
                                                   strict=True)], dtype=np.int64)
    g_class = np.array([class_of.get(k, -1) for k in zip(guess.row.tolist(), guess.names,
                                                          strict=True)], dtype=np.int64)
    scored = np.zeros(len(classes), dtype=bool)
    scored[g_class[g_class >= 0]] = True
    guess.check(g_class >= 0)
    truth.check(scored[t_class] if len(t_class) else np.zeros(0, dtype=bool))
    tokens = a["Id"].tolist()
    if any(not isinstance(tokens[r], str) for r in set(guess.row[g_class >= 0].tolist())):
        raise GradingError("an Id is not text")
    g = np.nonzero(g_class >= 0)[0]
    g = g[np.lexsort((-guess.score[g], g_class[g]))]
    g = _python_score_order(g, g_class, guess.score)
    t_sorted = np.argsort(t_class, kind="stable")
    t_count = np.bincount(t_class, minlength=len(classes))
    t_start = np.cumsum(t_count) - t_count
    aps = np.zeros((len(_THRESHOLDS), len(classes)))
    if len(g):
        best, best_at = _best_overlaps(guess, g, truth, t_sorted, t_start[g_class[g]],
                                       t_count[g_class[g]])
        group = np.unique(g_class[g], return_inverse=True)[1].reshape(-1)
        found = _class_aps(best, best_at, group, t_count[g_class[g]].astype(np.float64))
        aps[:, np.unique(g_class[g])] = found
    class_row = np.array([row for row, _ in classes], dtype=np.int64)
    per_row = np.bincount(class_row, minlength=len(tokens))
    first = np.cumsum(per_row) - per_row
    sample_maps = np.empty((len(tokens), len(_THRESHOLDS)))
    with np.errstate(all="ignore"):
        for k in range(len(_THRESHOLDS)):  # np.mean of each sample's classes (NaN if none)
            sample_maps[:, k] = _segment_sums(aps[k], first, per_row) / per_row
    return float(np.mean(sample_maps.ravel()))


def _python_score_order(g: IntArray, g_class: IntArray, score: FloatArray) -> IntArray:
    """Within a class whose scores hold a NaN, the order Python's sorted(reverse=True) gives
    (numpy's sort places NaN differently)."""
    nan_classes = np.unique(g_class[g][np.isnan(score[g])])
    for c in nan_classes.tolist():
        at = np.nonzero(g_class[g] == c)[0]
        members = sorted(g[at].tolist())
        keys = score[members].tolist()
        g[at] = [members[i] for i in sorted(range(len(members)), key=keys.__getitem__,
                                            reverse=True)]
    return g


GRADERS: dict[str, Grader] = {
    "3d-object-detection-for-autonomous-vehicles": _lyft_map,
}
