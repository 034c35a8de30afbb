"""Small real competitions built offline from datasets bundled with scikit-learn.

Each example is laid out like an MLE-bench competition (`prepared/public`, `prepared/private`,
`task.toml`) and made a little messy (missing values, a categorical column) so that solutions
must handle what real data throws at them. The same name and seed give byte-identical files.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pandas as pd
from sklearn.datasets import load_breast_cancer, load_diabetes, load_wine

from mlmaster_daemon.errors import InvalidRequest
from mlmaster_daemon.tasks.spec import Metric

ID_COLUMN = "id"
TEST_FRACTION = 0.25
MISSING_FRACTION = 0.05
CATEGORY_MISSING_FRACTION = 0.03
MESSY_COLUMNS = 3
BANDS = ("low", "mid", "high")
LEADERBOARD_FILE = "leaderboard.csv"
LEADERBOARD_TEAMS = 60


@dataclass(frozen=True)
class ExampleInfo:
    """What an example competition is about and how it is scored."""

    name: str
    description: str
    metric: Metric
    target: str


@dataclass(frozen=True)
class _Recipe:
    info: ExampleInfo
    title: str
    overview: str
    target_help: str
    submission_help: str
    band_source: str
    load: Callable[[], tuple[pd.DataFrame, pd.Series]]
    # The first team's score on the bundled leaderboard (the last one scores the sample's).
    leaderboard_best: float


def _snake_case(name: str) -> str:
    return re.sub(r"[^0-9a-z]+", "_", name.lower()).strip("_")


def _load_breast_cancer() -> tuple[pd.DataFrame, pd.Series]:
    bunch = load_breast_cancer(as_frame=True)
    features = bunch.data.rename(columns=_snake_case)
    # sklearn codes malignant as 0; the competition asks for the malignant probability
    target = (bunch.target == 0).astype(np.int64)
    return features, target


def _load_wine() -> tuple[pd.DataFrame, pd.Series]:
    bunch = load_wine(as_frame=True)
    names = [str(name) for name in bunch.target_names]
    target = pd.Series([names[code] for code in bunch.target], dtype=object)
    return bunch.data.rename(columns=_snake_case), target


def _load_diabetes() -> tuple[pd.DataFrame, pd.Series]:
    bunch = load_diabetes(as_frame=True, scaled=False)
    return bunch.data.rename(columns=_snake_case), bunch.target.round().astype(np.int64)


_RECIPES: dict[str, _Recipe] = {
    "breast_cancer": _Recipe(
        info=ExampleInfo(
            name="breast_cancer",
            description="Binary classification: is a breast mass malignant? (roc_auc)",
            metric=Metric.ROC_AUC,
            target="target",
        ),
        title="Breast Cancer Diagnosis",
        overview=(
            "Each row describes the cell nuclei seen in a digitised image of a fine needle "
            "aspirate of a breast mass. Predict the probability that the mass is malignant."
        ),
        target_help="1 if the mass is malignant, 0 if benign",
        submission_help="`target` is the predicted probability that the mass is malignant",
        band_source="mean_area",
        load=_load_breast_cancer,
        leaderboard_best=0.998,
    ),
    "wine": _Recipe(
        info=ExampleInfo(
            name="wine",
            description="Multiclass classification: which cultivar made a wine? (log_loss)",
            metric=Metric.LOG_LOSS,
            target="cultivar",
        ),
        title="Wine Cultivar Recognition",
        overview=(
            "Each row is the chemical analysis of a wine grown in the same region of Italy "
            "by one of three cultivars. Predict the probability of each cultivar."
        ),
        target_help="the cultivar: class_0, class_1 or class_2",
        submission_help="one column per cultivar holds its predicted probability",
        band_source="alcohol",
        load=_load_wine,
        leaderboard_best=0.01,
    ),
    "diabetes": _Recipe(
        info=ExampleInfo(
            name="diabetes",
            description="Regression: disease progression one year after baseline (rmse)",
            metric=Metric.RMSE,
            target="progression",
        ),
        title="Diabetes Progression",
        overview=(
            "Each row holds baseline measurements of a diabetes patient (age, sex, body mass "
            "index, blood pressure and six blood serum measurements s1-s6). Predict a "
            "quantitative measure of disease progression one year after baseline."
        ),
        target_help="disease progression one year after baseline (a number)",
        submission_help="`progression` is the predicted progression",
        band_source="bmi",
        load=_load_diabetes,
        leaderboard_best=50.0,
    ),
}

EXAMPLES: dict[str, ExampleInfo] = {name: recipe.info for name, recipe in _RECIPES.items()}


def build_example(name: str, dest: Path, seed: int = 0) -> Path:
    """Write example competition `name` into the empty or absent folder `dest`; returns `dest`.

    Raises `InvalidRequest` for an unknown name or a `dest` that exists and is not empty.
    """
    recipe = _RECIPES.get(name)
    if recipe is None:
        raise InvalidRequest(
            f"unknown example {name!r}: choose one of {', '.join(sorted(_RECIPES))}"
        )
    dest = Path(dest)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise InvalidRequest(
            f"{dest} already exists and is not empty: pick a new folder or remove it first"
        )
    rng = np.random.default_rng(seed)
    features, labels = recipe.load()
    features = _make_messy(features, recipe.band_source, rng)
    target = recipe.info.target
    frame = features.assign(**{target: labels.to_numpy()})
    frame.insert(0, ID_COLUMN, rng.permutation(len(frame)))
    is_classification = not recipe.info.metric.is_regression
    test_mask = _split(labels, is_classification, rng)
    train = frame[~test_mask].sort_values(ID_COLUMN)
    test = frame[test_mask].sort_values(ID_COLUMN)
    sample = _sample_submission(recipe.info, train, test)

    public = dest / "prepared" / "public"
    private = dest / "prepared" / "private"
    public.mkdir(parents=True, exist_ok=True)
    private.mkdir(parents=True, exist_ok=True)
    _write_csv(train, public / "train.csv")
    _write_csv(test.drop(columns=[target]), public / "test.csv")
    _write_csv(sample, public / "sample_submission.csv")
    _write_csv(test[[ID_COLUMN, target]], private / "test.csv")
    (public / "description.md").write_text(
        _description(recipe, train, test, sample), encoding="utf-8"
    )
    (dest / "task.toml").write_text(_task_toml(recipe.info), encoding="utf-8")
    _write_csv(_leaderboard(recipe, test[[ID_COLUMN, target]], sample), dest / LEADERBOARD_FILE)
    return dest


def _leaderboard(recipe: _Recipe, answers: pd.DataFrame, sample: pd.DataFrame) -> pd.DataFrame:
    """A small made-up leaderboard, best first, so `mlmaster grade` shows medals: teams from
    `leaderboard_best` down to the sample submission's score, most of them near the top."""
    from mlmaster_daemon.tasks.metrics import score

    info = recipe.info
    baseline = score(info.metric, answers, sample, ID_COLUMN, info.target)
    steps = (np.arange(LEADERBOARD_TEAMS) / (LEADERBOARD_TEAMS - 1)) ** 2
    scores = recipe.leaderboard_best + (baseline - recipe.leaderboard_best) * steps
    return pd.DataFrame({"teamName": [f"team {n + 1}" for n in range(LEADERBOARD_TEAMS)],
                         "score": scores.round(5)})


def _make_messy(features: pd.DataFrame, band_source: str, rng: np.random.Generator) -> pd.DataFrame:
    """Features with a low/mid/high band column and some missing cells, seeded."""
    messy = features.copy()
    band = pd.qcut(features[band_source], q=len(BANDS), labels=list(BANDS)).astype(object)
    band[rng.random(len(band)) < CATEGORY_MISSING_FRACTION] = np.nan
    messy[f"{band_source}_band"] = band
    numeric = list(features.columns)
    chosen = sorted(rng.choice(len(numeric), size=MESSY_COLUMNS, replace=False).tolist())
    for index in chosen:
        column = numeric[index]
        messy[column] = messy[column].astype(np.float64)
        messy.loc[rng.random(len(messy)) < MISSING_FRACTION, column] = np.nan
    return messy


def _split(labels: pd.Series, stratify: bool, rng: np.random.Generator) -> npt.NDArray[np.bool_]:
    """Boolean mask of test rows: a seeded 75/25 split, per class when `stratify`."""
    mask = np.zeros(len(labels), dtype=bool)
    groups = labels.to_numpy() if stratify else np.zeros(len(labels))
    for group in sorted(set(groups.tolist()), key=str):
        members = np.flatnonzero(groups == group)
        chosen = rng.permutation(members)[: round(len(members) * TEST_FRACTION)]
        mask[chosen] = True
    return mask


def _sample_submission(info: ExampleInfo, train: pd.DataFrame, test: pd.DataFrame) -> pd.DataFrame:
    ids = test[ID_COLUMN].to_numpy()
    if info.metric is Metric.LOG_LOSS:
        classes = sorted(str(label) for label in train[info.target].unique())
        uniform = {label: np.full(len(ids), 1.0 / len(classes)) for label in classes}
        return pd.DataFrame({ID_COLUMN: ids, **uniform})
    if info.metric.is_regression:
        baseline = round(float(train[info.target].mean()), 4)
        return pd.DataFrame({ID_COLUMN: ids, info.target: np.full(len(ids), baseline)})
    return pd.DataFrame({ID_COLUMN: ids, info.target: np.full(len(ids), 0.5)})


def _write_csv(frame: pd.DataFrame, path: Path) -> None:
    # a fixed line terminator keeps the bytes identical on every platform
    frame.to_csv(path, index=False, lineterminator="\n")


def _task_toml(info: ExampleInfo) -> str:
    return (
        f'metric = "{info.metric.value}"\n'
        f"lower_is_better = {str(info.metric.lower_is_better).lower()}\n"
        f'target = "{info.target}"\n'
        f'id_column = "{ID_COLUMN}"\n'
    )


def _description(
    recipe: _Recipe, train: pd.DataFrame, test: pd.DataFrame, sample: pd.DataFrame
) -> str:
    info = recipe.info
    target = info.target
    features = [c for c in train.columns if c not in (ID_COLUMN, target)]
    column_lines = [f"- `{ID_COLUMN}`: unique row identifier."]
    for column in features:
        if train[column].dtype == object or pd.api.types.is_string_dtype(train[column]):
            kind = f"categorical ({', '.join(BANDS)})"
        else:
            kind = "numeric"
        column_lines.append(f"- `{column}`: {kind}.")
    column_lines.append(f"- `{target}` (train.csv only): {recipe.target_help}.")
    direction = "lower" if info.metric.lower_is_better else "higher"
    example = sample.head(2).to_csv(index=False, lineterminator="\n").rstrip("\n")
    return "\n".join(
        [
            f"# {recipe.title}",
            "",
            "## Overview",
            "",
            recipe.overview,
            "",
            "## Files",
            "",
            f"- `train.csv`: {len(train)} rows with `{ID_COLUMN}`, {len(features)} features "
            f"and the target `{target}`.",
            f"- `test.csv`: {len(test)} rows with `{ID_COLUMN}` and the same features; "
            f"predict `{target}` for each row.",
            "- `sample_submission.csv`: a valid submission in the correct format.",
            "",
            "## Columns",
            "",
            *column_lines,
            "",
            "Some feature values are missing (empty cells).",
            "",
            "## Evaluation",
            "",
            f"Submissions are scored with `{info.metric.value}`, "
            f"{_metric_text(info.metric)}; {direction} is better.",
            "",
            "## Submission format",
            "",
            f"One row per `{ID_COLUMN}` in test.csv; {recipe.submission_help}. "
            "The file must look like this:",
            "",
            "```",
            example,
            "...",
            "```",
            "",
        ]
    )


def _metric_text(metric: Metric) -> str:
    texts = {
        Metric.ACCURACY: "accuracy (the fraction of correctly predicted labels)",
        Metric.ROC_AUC: "the area under the ROC curve of the predicted probability of class 1",
        Metric.LOG_LOSS: "multiclass log loss of the predicted class probabilities "
        "(clipped to [1e-15, 1 - 1e-15] and normalised to sum to 1 per row)",
        Metric.RMSE: "root mean squared error",
        Metric.MAE: "mean absolute error",
        Metric.RMSLE: "root mean squared logarithmic error (of log(1 + value); values >= 0)",
        Metric.QWK: "quadratic weighted kappa between the predicted and true integer labels",
        Metric.MAP_AT_K: "mean average precision at k of up to k space-separated labels per "
        "row, best guess first",
        Metric.F1: "the F1 score of the positive class (the largest label)",
        Metric.F1_MICRO: "the F1 score micro-averaged over all labels",
        Metric.F1_MACRO: "the unweighted mean of the per-label F1 scores",
    }
    return texts[metric]
