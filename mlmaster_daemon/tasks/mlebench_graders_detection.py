"""mle-bench's graders of full-benchmark competitions scored on boxes and points: mean average
precision over IoU thresholds (2D and 3D), character-detection F1; reproduced as
`mlebench_graders` reproduces Lite's. Families are named by competition id.

Each grade.py names its columns itself, so the names below are mle-bench's, not the
registry's. Prediction strings are parsed with Python's `float`, as mle-bench parses them, and
any cell that does not parse, or a blank where mle-bench calls a string method, is refused.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterator, Sequence
from types import ModuleType
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from mlmaster_daemon.errors import GradingError
from mlmaster_daemon.tasks.mlebench_graders import FloatArray, Grader, require, same_length

IntArray = npt.NDArray[np.int64]


def _ids_agree(sub_ids: pd.Series, ans_ids: pd.Series, column: str) -> None:
    """Refused unless the sorted ids agree position by position (`!=` on the raw values)."""
    if (sub_ids.to_numpy() != ans_ids.to_numpy()).any():
        raise GradingError(f"the submission's {column} values are not the answers' ids")


def _text(cell: Any, who: str) -> str:
    if not isinstance(cell, str):
        raise GradingError(f"{who}: every prediction string must be text, not {cell!r}")
    return cell


def _numbers(tokens: Sequence[str], who: str) -> list[float]:
    try:
        return list(map(float, tokens))
    except ValueError:
        raise GradingError(f"{who}: a prediction string holds a value that is not a "
                           f"number ({' '.join(tokens[:12])[:80]!r})") from None


# kuzushiji-recognition: F1 of points inside same-label boxes


def _page_counts(guess: Any, truth: Any) -> tuple[int, int, int]:
    """kuzushiji_metric.score_page: true positives, false positives, false negatives."""
    if pd.isna(truth) and pd.isna(guess):
        return 0, 0, 0
    if pd.isna(truth):
        return 0, len(guess.split(" ")) // 3, 0
    truth = _text(truth, "the answers")
    if pd.isna(guess):
        return 0, 0, len(truth.split(" ")) // 5
    boxes = truth.split(" ")
    if len(boxes) % 5:
        raise GradingError("the answers hold a malformed label string")
    box_label = np.array(boxes[0::5])
    x_min = np.array(_numbers(boxes[1::5], "the answers"))
    y_min = np.array(_numbers(boxes[2::5], "the answers"))
    x_max = x_min + np.array(_numbers(boxes[3::5], "the answers"))
    y_max = y_min + np.array(_numbers(boxes[4::5], "the answers"))
    points = guess.split(" ")
    label = np.array(points[0::3])
    x = np.array([float(t) for t in points[1::3]])
    y = np.array([float(t) for t in points[2::3]])
    unused = np.ones(len(label), dtype=bool)
    # Points grouped by label (numpy's string equality, as the metric compares them); each box
    # takes the first unused point of its label strictly inside it.
    order = np.argsort(label, kind="stable")
    labels, starts = np.unique(label[order], return_index=True)
    ends = np.append(starts[1:], len(order))
    found = np.searchsorted(labels, box_label)
    tp = fn = 0
    for b in range(len(box_label)):
        k = int(found[b])
        if k == len(labels) or labels[k] != box_label[b]:
            fn += 1
            continue
        near = order[starts[k]:ends[k]]
        inside = near[unused[near] & (x_min[b] < x[near]) & (x_max[b] > x[near])
                      & (y_min[b] < y[near]) & (y_max[b] > y[near])]
        if len(inside):
            tp += 1
            unused[inside[0]] = False
        else:
            fn += 1
    return tp, int(unused.sum()), fn


def _kuzushiji_f1(sub: pd.DataFrame, ans: pd.DataFrame, id_column: str,
                  targets: tuple[str, ...]) -> float:
    """kuzushiji-recognition: one row per page, pages matched by sorted image_id; a point
    counts when its label matches a box it lies strictly inside, each point used once;
    micro F1 over every page."""
    same_length(sub, ans)
    require(sub, ("image_id", "labels"))
    s = sub.sort_values("image_id").reset_index(drop=True)
    a = ans.sort_values("image_id").reset_index(drop=True)
    _ids_agree(s["image_id"], a["image_id"], "image_id")
    guesses = s["labels"].tolist()
    for guess in guesses:
        if pd.isna(guess):
            continue
        tokens = _text(guess, "labels").split(" ")
        if len(tokens) % 3:
            raise GradingError(f"a labels string is not 'label X Y' triples: {guess[:80]!r}")
        _numbers(tokens[1::3] + tokens[2::3], "labels")
    tp = fp = fn = 0
    for guess, truth in zip(guesses, a["labels"].tolist(), strict=True):
        page = _page_counts(guess, truth)
        tp, fp, fn = tp + page[0], fp + page[1], fn + page[2]
    if tp + fp == 0 or tp + fn == 0:
        return 0.0
    precision, recall = tp / (tp + fp), tp / (tp + fn)
    if precision > 0 and recall > 0:
        return 2 * precision * recall / (precision + recall)
    return 0.0


# siim-covid19-detection: VOC-style mAP at IoU > 0.5 over six classes

_Box = tuple[str, float, float, float, float, float]


def _siim_boxes(cell: Any, who: str) -> list[_Box]:
    tokens = _text(cell, who).strip().split()
    if len(tokens) % 6:
        raise GradingError(f"{who}: a PredictionString is not 'label confidence xmin ymin "
                           f"xmax ymax' groups: {cell[:80]!r}")
    boxes = []
    for i in range(0, len(tokens), 6):
        c, x0, y0, x1, y1 = _numbers(tokens[i + 1:i + 6], who)
        boxes.append((tokens[i], c, x0, y0, x1, y1))
    return boxes


def _iou_2d(a: Sequence[float], b: Sequence[float]) -> float:
    """grade.calculate_iou, with its builtin max/min (their NaN behaviour included)."""
    width = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _siim_pairs(guesses: list[list[_Box]], truths: list[list[_Box]],
                name: str) -> tuple[list[int], list[float]]:
    """(is a true box, confidence) for one class over every image, as calculate_map lists them."""
    y_true: list[int] = []
    y_score: list[float] = []
    for boxes, gts in zip(guesses, truths, strict=True):
        gt_boxes = [gt[2:] for gt in gts if gt[0] == name]
        boxes.sort(key=lambda box: box[1], reverse=True)  # in place and again per class
        matched = [False] * len(gt_boxes)
        before = len(y_true)
        for box in boxes:
            if box[0] != name:
                continue
            best, best_at = 0.0, -1
            for i, gt in enumerate(gt_boxes):
                if matched[i]:
                    continue
                iou = _iou_2d(box[2:], gt)
                if iou > best and iou > 0.5:
                    best, best_at = iou, i
            y_true.append(1 if best_at != -1 else 0)
            y_score.append(box[1])
            if best_at != -1:
                matched[best_at] = True
        missed = matched.count(False)
        y_true += [1] * missed
        y_score += [0.0] * missed
        if len(y_true) == before:
            y_true.append(0)
            y_score.append(0.0)
    return y_true, y_score


def _siim_map(sub: pd.DataFrame, ans: pd.DataFrame, id_column: str,
              targets: tuple[str, ...]) -> float:
    """siim-covid19-detection: rows matched by sorted id; per class of the answers, greedy
    matching at IoU > 0.5 by confidence, missed boxes scored 0 and an image with neither a
    box nor a guess one negative at 0; average_precision_score per class, then the mean."""
    from sklearn.metrics import average_precision_score

    same_length(sub, ans)
    require(sub, ("id",))
    require(sub, ("PredictionString",))
    s, a = sub.sort_values("id"), ans.sort_values("id")
    _ids_agree(s["id"], a["id"], "id")
    guesses = [_siim_boxes(c, "PredictionString") for c in s["PredictionString"].tolist()]
    truths = [_siim_boxes(c, "the answers") for c in a["PredictionString"].tolist()]
    if not guesses:
        return 0.0
    aps = []
    for name in sorted({box[0] for boxes in truths for box in boxes}):
        y_true, y_score = _siim_pairs(guesses, truths, name)
        if all(y == 1 for y in y_true):
            raise GradingError(f"class {name!r} has no negative pair, so mle-bench's average "
                               "precision is undefined (its grader fails on it)")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            aps.append(float(average_precision_score(y_true, y_score)))
    return float(np.mean(aps)) if aps else 0.0


# vinbigdata-chest-xray-abnormalities-detection: COCO AP at IoU 0.4

_VINBIG_BOX = ("x_min", "y_min", "x_max", "y_max")


def _vinbig_predictions(sub: pd.DataFrame, image_index: dict[Any, int]) -> list[dict[str, Any]]:
    """VinBigDataEval.__gen_predictions: the submission's rows in their order, six numbers a
    box (class, score, then x_min y_min x_max y_max passed on as COCO's x y w h)."""
    found: list[dict[str, Any]] = []
    for image_id, cell in zip(sub["image_id"].tolist(), sub["PredictionString"].tolist(),
                              strict=True):
        values = np.array(_numbers(_text(cell, "PredictionString").split(" "),
                                   "PredictionString"))
        if len(values) % 6:
            raise GradingError("a PredictionString is not 'class score x_min y_min x_max "
                               f"y_max' groups: {cell[:80]!r}")
        boxes = values.reshape(-1, 6)
        try:
            classes = [int(c) for c in boxes[:, 0].tolist()]
        except (ValueError, OverflowError):
            raise GradingError("a PredictionString's class is not a finite number") from None
        areas = (boxes[:, 4] - boxes[:, 2]) * (boxes[:, 5] - boxes[:, 3])
        for box, category, area in zip(boxes, classes, areas, strict=True):
            found.append({"id": len(found), "image_id": image_index[image_id],
                          "category_id": category, "bbox": box[2:6], "segmentation": [],
                          "ignore": 0, "area": area, "iscrowd": 0, "score": box[1]})
    return found


@contextlib.contextmanager
def _silenced(*modules: ModuleType) -> Iterator[None]:
    """The modules' print() does nothing meanwhile. pycocotools reports progress on stdout,
    which carries the daemon's logs, written by other threads too: so not a stdout redirect."""
    for module in modules:
        module.print = _no_print  # type: ignore[attr-defined]
    try:
        yield
    finally:
        for module in modules:
            vars(module).pop("print", None)


def _no_print(*args: object, **kwargs: object) -> None:
    del args, kwargs


def _vinbig_map(sub: pd.DataFrame, ans: pd.DataFrame, id_column: str,
                targets: tuple[str, ...]) -> float:
    """vinbigdata-chest-xray-abnormalities-detection: the same set of image ids (rows may
    repeat); pycocotools' COCOeval, one IoU threshold of 0.4, on the answers' boxes, and
    its AP over all areas at 100 detections (stats[0])."""
    import pycocotools.coco  # type: ignore[import-untyped]
    import pycocotools.cocoeval  # type: ignore[import-untyped]

    for column in ("class_id", *_VINBIG_BOX, "image_id"):
        if column not in ans.columns:
            raise GradingError(f"the answers have no column {column!r}")
    for column in _VINBIG_BOX:
        if ans[column].isna().any():
            raise GradingError(f"the answers have blank {column} values")
    require(sub, ("PredictionString",))
    require(sub, ("image_id",))
    if set(sub["image_id"]) != set(ans["image_id"]):
        raise GradingError("the submission's image_id values are not the answers' image ids")
    codes, uniques = pd.factorize(ans["image_id"], sort=False)
    image_index = {image_id: i for i, image_id in enumerate(uniques.tolist())}
    truth = ans.iloc[np.argsort(codes, kind="stable")]
    box = truth[list(_VINBIG_BOX)]
    areas = (box["x_max"] - box["x_min"]) * (box["y_max"] - box["y_min"])
    annotations = [
        {"id": k, "image_id": int(image), "category_id": category, "bbox": np.array(bbox),
         "segmentation": [], "ignore": 0, "area": area, "iscrowd": 0}
        for k, (image, category, bbox, area) in enumerate(zip(
            np.sort(codes, kind="stable").tolist(), truth["class_id"].tolist(),
            box.to_numpy().tolist(), areas.tolist(), strict=True))]
    images = [{"id": i} for i in range(len(uniques))]
    categories = [{"id": c, "name": c, "supercategory": "none"}
                  for c in np.unique(ans["class_id"].to_numpy()).tolist()]
    predictions = _vinbig_predictions(sub, image_index)
    with _silenced(pycocotools.coco, pycocotools.cocoeval), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        truth_set, guess_set = pycocotools.coco.COCO(), pycocotools.coco.COCO()
        truth_set.dataset = {"type": "instances", "images": images, "categories": categories,
                             "annotations": annotations}
        guess_set.dataset = {"images": list(images), "categories": list(categories),
                             "annotations": predictions}
        truth_set.createIndex()
        guess_set.createIndex()
        evaluation = pycocotools.cocoeval.COCOeval(truth_set, guess_set, "bbox")
        evaluation.params.imgIds = sorted(truth_set.getImgIds())
        evaluation.params.useCats = True
        evaluation.params.iouThrs = np.array([0.4])
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return float(evaluation.stats[0])


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
            text = _text(cell, who)
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
            numbers.append(np.array(_numbers(tokens, who)))
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
    _ids_agree(s["Id"], a["Id"], "Id")
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
    "kuzushiji-recognition": _kuzushiji_f1,
    "siim-covid19-detection": _siim_map,
    "vinbigdata-chest-xray-abnormalities-detection": _vinbig_map,
    "3d-object-detection-for-autonomous-vehicles": _lyft_map,
}
