"""mle-bench's graders of full-benchmark competitions scored on boxes and points: mean average
precision over IoU thresholds (2D; 3D boxes are in `mlebench_graders_lidar`), character-detection
F1; reproduced as
`mlebench_graders` reproduces Lite's. Families are named by competition id.

Each grade.py names its columns itself, so the names below are mle-bench's, not the
registry's. Prediction strings are parsed with Python's `float`, as mle-bench parses them, and
any cell that does not parse, or a blank where mle-bench calls a string method, is refused.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Sequence
from types import ModuleType
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from mlmaster_daemon.errors import GradingError
from mlmaster_daemon.tasks.mlebench_graders import Grader, require, same_length

IntArray = npt.NDArray[np.int64]


def ids_agree(sub_ids: pd.Series, ans_ids: pd.Series, column: str) -> None:
    """Refused unless the sorted ids agree position by position (`!=` on the raw values)."""
    if (sub_ids.to_numpy() != ans_ids.to_numpy()).any():
        raise GradingError(f"the submission's {column} values are not the answers' ids")


def prediction_text(cell: Any, who: str) -> str:
    if not isinstance(cell, str):
        raise GradingError(f"{who}: every prediction string must be text, not {cell!r}")
    return cell


def prediction_numbers(tokens: Sequence[str], who: str) -> list[float]:
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
    truth = prediction_text(truth, "the answers")
    if pd.isna(guess):
        return 0, 0, len(truth.split(" ")) // 5
    boxes = truth.split(" ")
    if len(boxes) % 5:
        raise GradingError("the answers hold a malformed label string")
    box_label = np.array(boxes[0::5])
    x_min = np.array(prediction_numbers(boxes[1::5], "the answers"))
    y_min = np.array(prediction_numbers(boxes[2::5], "the answers"))
    x_max = x_min + np.array(prediction_numbers(boxes[3::5], "the answers"))
    y_max = y_min + np.array(prediction_numbers(boxes[4::5], "the answers"))
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
    ids_agree(s["image_id"], a["image_id"], "image_id")
    guesses = s["labels"].tolist()
    for guess in guesses:
        if pd.isna(guess):
            continue
        tokens = prediction_text(guess, "labels").split(" ")
        if len(tokens) % 3:
            raise GradingError(f"a labels string is not 'label X Y' triples: {guess[:80]!r}")
        prediction_numbers(tokens[1::3] + tokens[2::3], "labels")
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
    tokens = prediction_text(cell, who).strip().split()
    if len(tokens) % 6:
        raise GradingError(f"{who}: a PredictionString is not 'label confidence xmin ymin "
                           f"xmax ymax' groups: {cell[:80]!r}")
    boxes = []
    for i in range(0, len(tokens), 6):
        c, x0, y0, x1, y1 = prediction_numbers(tokens[i + 1:i + 6], who)
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
    ids_agree(s["id"], a["id"], "id")
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
        values = np.array(prediction_numbers(prediction_text(cell, "PredictionString").split(" "),
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


GRADERS: dict[str, Grader] = {
    "kuzushiji-recognition": _kuzushiji_f1,
    "siim-covid19-detection": _siim_map,
    "vinbigdata-chest-xray-abnormalities-detection": _vinbig_map,
}
