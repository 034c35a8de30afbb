"""mle-bench's graders of full-benchmark competitions scored on labels and probabilities: multi-
label micro F1, top-1 error, lwlrap, weighted and bias-weighted AUC, Matthews correlation (the
medical ones are in `mlebench_graders_probabilities`); reproduced as `mlebench_graders`
reproduces Lite's. Families are named by competition id.

Each grade.py names its own columns, so these graders use those names and read `id_column` and
`targets` only through the dispatcher's check that the answers hold them."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from mlmaster_daemon.errors import GradingError
from mlmaster_daemon.tasks.mlebench_graders import FloatArray, Grader, require, same_length

FREESOUND_CLASSES = tuple("""
Accelerating_and_revving_and_vroom Accordion Acoustic_guitar Applause Bark Bass_drum Bass_guitar
Bathtub_(filling_or_washing) Bicycle_bell Burping_and_eructation Bus Buzz Car_passing_by Cheering
Chewing_and_mastication Child_speech_and_kid_speaking Chink_and_clink Chirp_and_tweet Church_bell
Clapping Computer_keyboard Crackle Cricket Crowd Cupboard_open_or_close Cutlery_and_silverware
Dishes_and_pots_and_pans Drawer_open_or_close Drip Electric_guitar Fart Female_singing
Female_speech_and_woman_speaking Fill_(with_liquid) Finger_snapping Frying_(food) Gasp
Glockenspiel Gong Gurgling Harmonica Hi-hat Hiss Keys_jangling Knock Male_singing
Male_speech_and_man_speaking Marimba_and_xylophone Mechanical_fan Meow Microwave_oven Motorcycle
Printer Purr Race_car_and_auto_racing Raindrop Run Scissors Screaming Shatter Sigh
Sink_(filling_or_washing) Skateboard Slam Sneeze Squeak Stream Strum Tap Tick-tock Toilet_flush
Traffic_noise_and_roadway_noise Trickle_and_dribble Walk_and_footsteps Water_tap_and_faucet
Waves_and_surf Whispering Writing Yell Zipper_(clothing)
""".split())
JIGSAW_IDENTITIES = ("male", "female", "homosexual_gay_or_lesbian", "christian", "jewish",
                     "muslim", "black", "white", "psychiatric_or_mental_illness")


def _ids_equal_sorted(sub: pd.DataFrame, ans: pd.DataFrame,
                      column: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Both sorted by `column` (pandas' default sort, as grade.py calls it), refused unless
    the values then agree row by row."""
    s = sub.sort_values(column).reset_index(drop=True)
    a = ans.sort_values(column).reset_index(drop=True)
    if len(s) != len(a) or (s[column].to_numpy() != a[column].to_numpy()).any():
        raise GradingError(f"the submission's {column} values are not the answers' ids")
    return s, a


def _object_values(values: pd.Series) -> npt.NDArray[Any]:
    """The values as pandas 2 holds a text column: Python objects, NaN where blank."""
    return np.asarray(values.to_numpy(dtype=object, na_value=np.nan), dtype=object)


def _as_float(values: pd.Series, where: str) -> FloatArray:
    """`astype(float)` as pandas 2 does it (float() of each text cell)."""
    try:
        return np.asarray(_object_values(values).astype(np.float64))
    except (TypeError, ValueError):
        raise GradingError(f"{where} must hold numbers") from None


# --- multi-label micro F1 ------------------------------------------------------------------


def _label_sets(values: pd.Series, who: str) -> list[list[str]]:
    """Each row's labels split on whitespace, a blank row none (`fillna("").str.split()`);
    refused where pandas' text accessor is: numbers or booleans in the column."""
    cells = _object_values(values)
    if values.dtype.kind in "biufc":
        if pd.isna(cells).all():
            return [[] for _ in cells]
        raise GradingError(f"the {who} labels must be space-separated text")
    rows: list[list[str]] = []
    for cell in cells.tolist():
        if isinstance(cell, str):
            rows.append(cell.split())
        elif pd.isna(cell):
            rows.append([])
        else:
            raise GradingError(f"the {who} labels must be space-separated text")
    return rows


def _multilabel_micro_f1(sub: pd.DataFrame, ans: pd.DataFrame, id_column: str,
                         label: str) -> float:
    """MultiLabelBinarizer over the answers' labels (others predicted are dropped), then
    f1_score(average="micro"): 2·TP / (true labels + predicted labels)."""
    require(sub, (id_column, label))
    same_length(sub, ans)
    s, a = _ids_equal_sorted(sub, ans, id_column)
    truth = _label_sets(a[label], "answers'")
    if any(not labels for labels in truth):
        # The blank row's NaN joins the classes, and sorting NaN with text fails.
        raise GradingError("the answers have a row without labels")
    guesses = _label_sets(s[label], "submission's")
    classes = {c for labels in truth for c in labels}
    if len(classes) < 2:
        # One class makes a one-column indicator matrix, which f1_score takes for a sparse
        # binary target and refuses.
        raise GradingError("the answers must hold at least two distinct labels")
    hits = true_count = guessed_count = 0
    for right, guess in zip(truth, guesses, strict=True):
        actual, predicted = set(right), set(guess) & classes
        hits += len(actual & predicted)
        true_count += len(actual)
        guessed_count += len(predicted)
    return float(2 * hits / (true_count + guessed_count))


def _imet(sub: pd.DataFrame, ans: pd.DataFrame, id_column: str,
          targets: tuple[str, ...]) -> float:
    return _multilabel_micro_f1(sub, ans, "id", "attribute_ids")


def _plant_pathology_2021(sub: pd.DataFrame, ans: pd.DataFrame, id_column: str,
                          targets: tuple[str, ...]) -> float:
    return _multilabel_micro_f1(sub, ans, "image", "labels")


# --- top-1 error ---------------------------------------------------------------------------


def _first_label(cell: object) -> int:
    """int(y) for a whole number (booleans included), else int() of the text's first word."""
    if isinstance(cell, int):
        return int(cell)
    if not isinstance(cell, str):
        raise GradingError("the submission's predicted labels must be whole numbers or text")
    words = cell.split()
    if not words:
        raise GradingError("the submission has a blank predicted label")
    try:
        return int(words[0])
    except ValueError:
        raise GradingError(f"the submission's label {words[0][:40]!r} is not a whole "
                           "number") from None


def _inaturalist(sub: pd.DataFrame, ans: pd.DataFrame, id_column: str,
                 targets: tuple[str, ...]) -> float:
    """1 - accuracy of the first label of each row, rows paired by sorted id."""
    same_length(sub, ans)
    require(sub, ("id", "predicted"))
    s, a = _ids_equal_sorted(sub, ans, "id")
    try:
        truth = [int(y) for y in a["predicted"].tolist()]
    except (TypeError, ValueError, OverflowError):
        raise GradingError("the answers' labels must be whole numbers") from None
    guesses = [_first_label(y) for y in _object_values(s["predicted"]).tolist()]
    if any(abs(v) >= 2**63 for v in (*truth, *guesses)):
        raise GradingError("a label is too large a number")
    right = np.asarray(truth, dtype=np.int64) == np.asarray(guesses, dtype=np.int64)
    return float(1 - right.mean())


# --- lwlrap --------------------------------------------------------------------------------


def _freesound(sub: pd.DataFrame, ans: pd.DataFrame, id_column: str,
               targets: tuple[str, ...]) -> float:
    """label_ranking_average_precision_score over the rows with a label, each weighted by its
    number of labels; the columns exactly fname then the 80 classes in order."""
    from sklearn.metrics import label_ranking_average_precision_score

    same_length(sub, ans)
    if len(sub.columns) == 0 or sub.columns[0] != "fname":
        raise GradingError("the submission's first column must be fname")
    if tuple(sub.columns[1:]) != FREESOUND_CLASSES:
        raise GradingError("the submission's columns after fname must be the 80 classes of "
                           "the sample submission, in its order")
    if ans.columns[0] != "fname" or tuple(ans.columns[1:]) != FREESOUND_CLASSES:
        raise GradingError("the answers' columns must be fname and the 80 classes")
    s, a = _ids_equal_sorted(sub, ans, "fname")
    classes = list(FREESOUND_CLASSES)
    try:
        scores = s[classes].apply(pd.to_numeric).to_numpy(dtype=np.float64)
    except (TypeError, ValueError):
        raise GradingError("the submission's class scores must be numbers") from None
    truth = a[classes].apply(pd.to_numeric).to_numpy(dtype=np.float64)
    weight = (truth > 0).sum(axis=1)
    rows = np.flatnonzero(weight > 0)
    if not np.isfinite(scores[rows]).all():
        # Clips without a label are left out before scikit-learn checks the scores.
        raise GradingError("the submission has missing or infinite scores")
    return float(label_ranking_average_precision_score(
        truth[rows] > 0, scores[rows], sample_weight=weight[rows]))


# --- weighted AUC (alaska2) ----------------------------------------------------------------


def _with_tpr_points(fpr: FloatArray, tpr: FloatArray,
                     points: tuple[float, ...]) -> tuple[FloatArray, FloatArray]:
    """Each TPR in `points` missing from the curve is added before the first larger TPR,
    its FPR interpolated from the point before (the last point when it is the first)."""
    for point in points:
        if (tpr == point).any():
            continue
        larger = np.flatnonzero(tpr > point)
        if larger.size == 0:
            continue
        i = int(larger[0])
        before = i - 1 if i > 0 else len(tpr) - 1
        x = fpr[before] + (fpr[i] - fpr[before]) * (point - tpr[before]) / (tpr[i] - tpr[before])
        fpr, tpr = np.insert(fpr, i, x), np.insert(tpr, i, point)
    return fpr, tpr


def _alaska2(sub: pd.DataFrame, ans: pd.DataFrame, id_column: str,
             targets: tuple[str, ...]) -> float:
    """The ROC curve's area between TPR 0 and 0.4 weighted 2, between 0.4 and 1 weighted 1,
    each slice closed at FPR 1; normalised by 1.4."""
    from sklearn.metrics import auc, roc_curve

    same_length(sub, ans)
    require(sub, ("Id", "Label"))
    s = sub.sort_values("Id")
    a = ans.sort_values("Id")
    if (s["Id"].to_numpy() != a["Id"].to_numpy()).any():
        raise GradingError("the submission's Id values are not the answers' ids")
    guess = _as_float(s["Label"], "submission column 'Label'")
    truth = _as_float(a["Label"], "answers column 'Label'")
    if np.isnan(truth).any() or np.isnan(guess).any():
        raise GradingError("the submission has missing labels")
    if not np.isfinite(guess).all():
        raise GradingError("the submission has infinite labels")
    fpr, tpr, _ = roc_curve(truth, guess, pos_label=1)
    fpr, tpr = _with_tpr_points(np.asarray(fpr), np.asarray(tpr), (0.0, 0.4, 1.0))
    bounds, weights = [0.0, 0.4, 1.0], [2, 1]
    total = 0.0
    for low, high, weight in zip(bounds[:-1], bounds[1:], weights, strict=True):
        inside = (low <= tpr) & (tpr <= high)
        if not inside.any():
            continue
        xs = np.concatenate([fpr[inside], [1]])
        ys = np.concatenate([tpr[inside], [high]]) - low
        total += float(auc(xs, ys)) * weight
    return float(total / np.dot(np.array(bounds[1:]) - np.array(bounds[:-1]), weights))


# --- bias-weighted AUC (jigsaw) ------------------------------------------------------------


def _at_least_half(values: pd.Series, where: str) -> npt.NDArray[np.int64]:
    """`apply(lambda x: 1 if x >= 0.5 else 0)`: missing is 0, text is refused."""
    if values.dtype.kind in "biuf":
        return (values.to_numpy(dtype=np.float64, na_value=np.nan) >= 0.5).astype(np.int64)
    cells = _object_values(values)
    try:
        return np.array([1 if x >= 0.5 else 0 for x in cells.tolist()], dtype=np.int64)
    except TypeError:
        raise GradingError(f"{where} must hold numbers") from None


def _jigsaw_unintended_bias(sub: pd.DataFrame, ans: pd.DataFrame, id_column: str,
                            targets: tuple[str, ...]) -> float:
    """ROC AUC of the predictions cut at 0.5 against the toxicity cut at 0.5, weighted 1/4,
    plus 1/4 of the power mean (p = -5) over the nine identities of each of the subgroup,
    BPSN and BNSP AUCs. The prediction column is `prediction`, or `toxicity` alone."""
    from sklearn.metrics import roc_auc_score

    require(sub, ("id",))
    has_prediction, has_toxicity = "prediction" in sub.columns, "toxicity" in sub.columns
    if not has_prediction and not has_toxicity:
        raise GradingError("the submission has no column 'prediction'")
    if has_prediction and has_toxicity:
        raise GradingError("the submission has both 'prediction' and 'toxicity' columns")
    s, a = _ids_equal_sorted(sub, ans, "id")
    predicted = _at_least_half(s["prediction" if has_prediction else "toxicity"],
                               "the submission's predictions")
    toxic = _at_least_half(a["toxicity"], "answers column 'toxicity'")
    missing = [c for c in JIGSAW_IDENTITIES if c not in a.columns]
    if missing:
        raise GradingError(f"the answers have no identity column(s) {', '.join(missing)}")
    ids = a["id"]

    def auc(rows: npt.NDArray[np.bool_]) -> float:
        # The submission's rows are picked by id, as grade.py picks them.
        picked = s["id"].isin(ids[rows]).to_numpy()
        if len(np.unique(toxic[rows])) != 2:
            # scikit-learn 1.5 refuses (later ones return NaN).
            raise GradingError("an identity subgroup of the answers holds only toxic or only "
                               "non-toxic comments, so its ROC AUC is undefined")
        return float(roc_auc_score(toxic[rows], predicted[picked]))

    bias = []
    for identity in JIGSAW_IDENTITIES:
        mentioned = _at_least_half(a[identity], f"answers column {identity!r}") == 1
        bias.append([auc(mentioned),
                     auc((mentioned & (toxic == 0)) | (~mentioned & (toxic == 1))),
                     auc((mentioned & (toxic == 1)) | (~mentioned & (toxic == 0)))])
    with np.errstate(divide="ignore"):
        # An AUC of 0 makes its power infinite and the mean 0, as in numpy.
        means = (np.sum(np.asarray(bias) ** -5.0, axis=0) / len(JIGSAW_IDENTITIES)) ** (1 / -5)
    overall = auc(np.ones(len(toxic), dtype=bool))
    return float(0.25 * overall + sum(0.25 * float(m) for m in means))


# --- Matthews correlation (nfl-player-contact-detection) -----------------------------------


def _nfl_player_contact(sub: pd.DataFrame, ans: pd.DataFrame, id_column: str,
                        targets: tuple[str, ...]) -> float:
    """matthews_corrcoef of the contact labels, rows paired by sorted contact_id."""
    from sklearn.metrics import matthews_corrcoef

    require(sub, ("contact_id", "contact"))
    if set(sub["contact_id"]) != set(ans["contact_id"]):
        raise GradingError("the submission's contact_id values are not the answers' ids")
    same_length(sub, ans)
    s = sub.sort_values("contact_id")
    a = ans.sort_values("contact_id")
    return float(matthews_corrcoef(_labels(a["contact"]), _labels(s["contact"])))


def _labels(values: pd.Series) -> npt.NDArray[Any]:
    """Numbers as they are, text as pandas 2's object column (scikit-learn's label checks
    then see what mle-bench's saw)."""
    return values.to_numpy() if values.dtype.kind in "biuf" else _object_values(values)


GRADERS: dict[str, Grader] = {
    "imet-2020-fgvc7": _imet,
    "plant-pathology-2021-fgvc8": _plant_pathology_2021,
    "inaturalist-2019-fgvc6": _inaturalist,
    "freesound-audio-tagging-2019": _freesound,
    "alaska2-image-steganalysis": _alaska2,
    "jigsaw-unintended-bias-in-toxicity-classification": _jigsaw_unintended_bias,
    "nfl-player-contact-detection": _nfl_player_contact,
}
