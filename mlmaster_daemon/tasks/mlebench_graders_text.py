"""mle-bench's graders of full-benchmark competitions scored on strings compared as text:
Levenshtein distances, word Jaccard, Kendall tau of cell orders, micro F1 over predicted tokens;
reproduced as `mlebench_graders` reproduces Lite's. Families are named by competition id.

Each grade.py works on values as pandas 2 reads them: its `astype(str)` writes a blank as
"nan" and a float with its ".0", and anything that is not text where it calls a string method
(or Levenshtein) fails, which mle-bench scores as an invalid submission; so do these."""

from __future__ import annotations

import json
from bisect import bisect_right, insort
from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd

from mlmaster_daemon.errors import GradingError
from mlmaster_daemon.tasks.mlebench_graders import Grader, require, same_length, sorted_by_id

# tensorflow2-question-answering: the submission's answer column and the answers' annotations
# (test.jsonl's records), named in its grade.py whatever the registry's targets say.
PREDICTION_STRING = "PredictionString"
ANNOTATIONS = "annotations"


def _missing(value: Any) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value))


def _as_text(values: pd.Series) -> list[str]:
    """pandas 2's `astype(str)`: a missing value is "nan", a float keeps its ".0"."""
    return ["nan" if _missing(v) else str(v) for v in values.tolist()]


def _blank_as_empty(values: pd.Series) -> list[Any]:
    """`fillna("")`: a missing value becomes "", everything else stays what pandas read."""
    return ["" if _missing(v) else v for v in values.tolist()]


def _texts(values: Iterable[Any], where: str) -> list[str]:
    """The values, refused unless every one is text (a blank cell or a number is not)."""
    listed = list(values)
    for value in listed:
        if not isinstance(value, str):
            raise GradingError(f"{where} must hold text in every row (found {value!r})")
    return listed


def _paired(sub: pd.DataFrame, ans: pd.DataFrame, id_column: str,
            target: str) -> tuple[pd.Series, pd.Series]:
    """The submission's and the answers' `target` columns on rows paired by id: the same
    number of rows, both sorted by id, the ids then equal row by row."""
    require(sub, (id_column, target))
    same_length(sub, ans)
    s, a = sorted_by_id(sub, ans, id_column)
    return s[target], a[target]


def _levenshtein_mean(truth: list[str], guess: list[str]) -> float:
    from Levenshtein import distance

    return float(np.mean([distance(t, g) for t, g in zip(truth, guess, strict=True)]))


def _mean_levenshtein(sub: pd.DataFrame, ans: pd.DataFrame, id_column: str,
                      targets: tuple[str, ...]) -> float:
    """billion-word-imputation: mean Levenshtein distance of the sentences as read; a blank
    or numeric sentence cannot be measured and is refused."""
    guess, truth = _paired(sub, ans, id_column, targets[0])
    return _levenshtein_mean(_texts(truth.tolist(), f"answers column {targets[0]!r}"),
                             _texts(guess.tolist(), f"submission column {targets[0]!r}"))


def _mean_levenshtein_as_text(sub: pd.DataFrame, ans: pd.DataFrame, id_column: str,
                              targets: tuple[str, ...]) -> float:
    """bms-molecular-translation: mean Levenshtein distance of the values written as text
    (a blank is "nan")."""
    guess, truth = _paired(sub, ans, id_column, targets[0])
    return _levenshtein_mean(_as_text(truth), _as_text(guess))


def _whole_numbers(text: str, where: str) -> list[int]:
    try:
        return [int(token) for token in text.split()]
    except ValueError:
        raise GradingError(f"{where} must be whole numbers separated by spaces (got "
                           f"{text[:80]!r})") from None


def _gesture_error_rate(sub: pd.DataFrame, ans: pd.DataFrame, id_column: str,
                        targets: tuple[str, ...]) -> float:
    """multi-modal-gesture-recognition: the Levenshtein distances between the gesture number
    sequences, summed over the rows and divided by the number of gestures in the answers."""
    from Levenshtein import distance

    target = targets[0]
    guess, truth = _paired(sub, ans, id_column, target)
    truth_sequences = [_whole_numbers(t, f"answers column {target!r}") for t in _as_text(truth)]
    guess_sequences = [_whole_numbers(g, f"submission column {target!r}")
                       for g in _as_text(guess)]
    distances = sum(distance(t, g) for t, g in zip(truth_sequences, guess_sequences,
                                                     strict=True))
    gestures = sum(len(t) for t in truth_sequences)
    with np.errstate(divide="ignore", invalid="ignore"):
        # numpy's division, as mle-bench's: no gestures at all gives inf or nan, not an error.
        return float(np.float64(distances) / gestures)


def _word_sets(values: pd.Series, where: str) -> list[set[str]]:
    return [set(text.lower().split()) for text in _texts(_blank_as_empty(values), where)]


def _binarized(truth: list[set[str]] | list[list[str]], guess: list[set[str]] | list[list[str]],
               classes: list[str], what: str) -> tuple[Any, Any]:
    """Both sides as sparse indicator matrices over `classes` (tokens outside them dropped).
    scikit-learn refuses sparse targets of fewer than two columns (not multilabel then)."""
    import warnings

    from sklearn.preprocessing import MultiLabelBinarizer

    if len(classes) < 2:
        raise GradingError(f"{what} hold fewer than two distinct words, which scikit-learn's "
                           "multilabel score cannot take")
    binarizer = MultiLabelBinarizer(classes=classes, sparse_output=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tokens the classes lack are dropped, as intended
        return binarizer.fit_transform(truth), binarizer.transform(guess)


def _word_jaccard_samples(sub: pd.DataFrame, ans: pd.DataFrame, id_column: str,
                          targets: tuple[str, ...]) -> float:
    """chaii-hindi-and-tamil-question-answering: per row, the Jaccard index of the lowercased
    word sets (0 where both are empty), averaged over the rows by scikit-learn's
    `jaccard_score(average="samples")`."""
    from sklearn.metrics import jaccard_score

    target = targets[0]
    guess, truth = _paired(sub, ans, id_column, target)
    guess_words = _word_sets(guess, f"submission column {target!r}")
    truth_words = _word_sets(truth, f"answers column {target!r}")
    words = sorted(set().union(*truth_words, *guess_words))
    y_true, y_pred = _binarized(truth_words, guess_words, words, "the answers and submission")
    return float(jaccard_score(y_true, y_pred, average="samples", zero_division=0.0))


def _word_jaccard_mean(sub: pd.DataFrame, ans: pd.DataFrame, id_column: str,
                       targets: tuple[str, ...]) -> float:
    """tweet-sentiment-extraction: the mean over rows of the Jaccard index of the lowercased
    word sets (a blank is ""); a row where both are empty divides by zero and is refused."""
    target = targets[0]
    guess, truth = _paired(sub, ans, id_column, target)
    guess_text = [str(v) for v in _blank_as_empty(guess)]
    truth_text = [str(v) for v in _blank_as_empty(truth)]
    scores = []
    for row, (g, t) in enumerate(zip(guess_text, truth_text, strict=True)):
        guessed, true = set(g.lower().split()), set(t.lower().split())
        common = len(guessed & true)
        union = len(guessed) + len(true) - common
        if union == 0:
            raise GradingError(f"row {row} (by sorted {id_column}) has no words in either the "
                               "submission or the answers: its Jaccard index divides by zero")
        scores.append(common / union)
    return float(np.mean(scores))


def _inversions(ranks: list[int]) -> int:
    """Pairs i < j with ranks[i] > ranks[j]."""
    seen: list[int] = []
    count = 0
    for position, rank in enumerate(ranks):
        count += position - bisect_right(seen, rank)
        insort(seen, rank)
    return count


def _kendall_tau_cell_order(sub: pd.DataFrame, ans: pd.DataFrame, id_column: str,
                            targets: tuple[str, ...]) -> float:
    """AI4Code: the same number of rows and set of ids, rows paired after sorting by id, each
    order holding as many cells as the other; Kendall tau summed over the notebooks. As
    mle-bench's, it ranks each answer cell by its first place in the submission's order."""
    target = targets[0]
    same_length(sub, ans)
    require(sub, (id_column, target))
    if set(sub[id_column]) != set(ans[id_column]):
        raise GradingError(f"the submission's {id_column} values are not the answers' ids")
    s = sub.assign(**{target: _as_text(sub[target])}).sort_values(id_column)
    a = ans.assign(**{target: _as_text(ans[target])}).sort_values(id_column)
    inversions = 0
    most = 0
    for notebook, submitted, answered in zip(s[id_column].tolist(), s[target].tolist(),
                                              a[target].tolist(), strict=True):
        order, truth = submitted.split(), answered.split()
        if len(order) != len(truth):
            raise GradingError(f"notebook {notebook!r}: the submission orders {len(order)} "
                               f"cells, the answers {len(truth)}")
        place: dict[str, int] = {}
        for index, cell in enumerate(order):
            place.setdefault(cell, index)
        unknown = [cell for cell in truth if cell not in place]
        if unknown:
            raise GradingError(f"notebook {notebook!r}: the submission's order lacks cell "
                               f"{unknown[0]!r}")
        inversions += _inversions([place[cell] for cell in truth])
        most += len(order) * (len(order) - 1)
    if most == 0:
        raise GradingError("no notebook has two cells to order: Kendall tau divides by zero")
    return 1 - 4 * inversions / most


def _annotation(cell: Any, notebook: str) -> dict[str, Any]:
    """The first annotation of an answers row (a list of objects, or its JSON text)."""
    annotations = cell
    if isinstance(cell, str):
        try:
            annotations = json.loads(cell)
        except ValueError:
            raise GradingError(f"the answers' annotations of {notebook} are not JSON") from None
    if not isinstance(annotations, list) or not annotations \
            or not isinstance(annotations[0], dict):
        raise GradingError(f"the answers of {notebook} have no annotation")
    first: dict[str, Any] = annotations[0]
    return first


def _spans(annotation: dict[str, Any], kind: str) -> list[object]:
    """The predictions that count as right for the long or the short answer: token spans
    (start, end), and YES or NO."""
    try:
        if kind == "long":
            long_answer = annotation["long_answer"]
            if long_answer["start_token"] == -1:
                return []
            return [(int(long_answer["start_token"]), int(long_answer["end_token"]))]
        right: list[object] = [(int(short["start_token"]), int(short["end_token"]))
                               for short in annotation["short_answers"]]
        if annotation["yes_no_answer"] != "NONE":
            right.append(annotation["yes_no_answer"])
        return right
    except (KeyError, TypeError, ValueError, OverflowError):
        raise GradingError("the answers' annotations lack the long_answer, short_answers or "
                           "yes_no_answer fields mle-bench reads") from None


def _parsed_prediction(text: str) -> object:
    """"start:end" as a token span, "YES", "NO" or "" as they are; anything else refused."""
    parts = text.split(":")
    if len(parts) == 2:
        try:
            return int(parts[0]), int(parts[1])
        except ValueError:
            raise GradingError(f"prediction {text[:80]!r} is not START:END token numbers") \
                from None
    if text in ("YES", "NO", ""):
        return text
    raise GradingError(f"prediction {text[:80]!r} is none of START:END, YES, NO or blank")


def _answer_spans_micro_f1(sub: pd.DataFrame, ans: pd.DataFrame, id_column: str,
                           targets: tuple[str, ...]) -> float:
    """tensorflow2-question-answering: a row <id>_long and <id>_short per answered example.
    A prediction is a positive; it is true when it is one of the annotated answers, and a
    blank is a false negative where an answer exists. Micro F1 over the rows.

    The answers are test.jsonl's records, one a row, as `pd.read_json(path, lines=True,
    dtype=False)` reads them: `id_column` and the `annotations` list (or its JSON text)."""
    from sklearn.metrics import f1_score

    if len(sub) != 2 * len(ans):
        raise GradingError(f"the submission has {len(sub)} rows, it needs two (_long and "
                           f"_short) for each of the {len(ans)} answered examples")
    require(sub, (id_column, PREDICTION_STRING))
    if ANNOTATIONS not in ans.columns:
        raise GradingError(f"the answers have no column {ANNOTATIONS!r}: grade against "
                           "test.jsonl as `mlebench prepare` writes it")
    ids = [str(v) for v in _blank_as_empty(sub[id_column])]
    predictions = [str(v).strip() for v in _blank_as_empty(sub[PREDICTION_STRING])]
    examples = [f"{v}" for v in ans[id_column].tolist()]
    expected = {f"{e}_{kind}" for e in examples for kind in ("long", "short")}
    if set(ids) != expected:
        raise GradingError(f"the submission's {id_column} values must be each answered "
                           "example's id with _long and with _short")
    if len(set(ids)) != len(ids):
        raise GradingError(f"the submission repeats {id_column} values")
    annotations = {e: _annotation(cell, e)
                   for e, cell in zip(examples, ans[ANNOTATIONS].tolist(), strict=True)}
    y_true, y_pred = [], []
    for row_id, text in zip(ids, predictions, strict=True):
        prediction = _parsed_prediction(text)
        kind = "long" if row_id.endswith("_long") else "short"
        # mle-bench cuts the id at the first "_long" or "_short" it holds.
        example = row_id.split(f"_{kind}")[0]
        if example not in annotations:
            raise GradingError(f"{row_id!r} names no answered example")
        right = _spans(annotations[example], kind)
        y_pred.append(1 if text else 0)
        y_true.append(int(prediction in right) if prediction else int(bool(right)))
    if not y_true:
        return 0.0  # scikit-learn 1.5.1, which mle-bench pins, scores no rows as 0
    return float(f1_score(y_true=np.array(y_true), y_pred=np.array(y_pred), average="micro"))


def _tag_micro_f1(sub: pd.DataFrame, ans: pd.DataFrame, id_column: str,
                  targets: tuple[str, ...]) -> float:
    """facebook-recruiting-iii-keyword-extraction: rows paired by id; micro F1 of the
    space-separated tags over the tags the answers use (others in the submission are
    dropped), by scikit-learn on the indicator matrices."""
    from sklearn.metrics import f1_score

    target = targets[0]
    guess, truth = _paired(sub, ans, id_column, target)
    truth_tags = [t.split() for t in _texts(_blank_as_empty(truth),
                                            f"answers column {target!r}")]
    guess_tags = [g.split() for g in _texts(_blank_as_empty(guess),
                                            f"submission column {target!r}")]
    classes = sorted({tag for tags in truth_tags for tag in tags})
    y_true, y_pred = _binarized(truth_tags, guess_tags, classes, "the answers")
    return float(f1_score(y_true=y_true, y_pred=y_pred, average="micro"))


GRADERS: dict[str, Grader] = {
    "billion-word-imputation": _mean_levenshtein,
    "bms-molecular-translation": _mean_levenshtein_as_text,
    "multi-modal-gesture-recognition": _gesture_error_rate,
    "chaii-hindi-and-tamil-question-answering": _word_jaccard_samples,
    "tweet-sentiment-extraction": _word_jaccard_mean,
    "AI4Code": _kendall_tau_cell_order,
    "tensorflow2-question-answering": _answer_spans_micro_f1,
    "facebook-recruiting-iii-keyword-extraction": _tag_micro_f1,
}
