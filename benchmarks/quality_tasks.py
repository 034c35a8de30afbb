"""Seeded tabular competitions for `bench_quality.py`, built offline in a folder the daemon
accepts: `task.toml`, `prepared/public/` (train.csv, test.csv, sample_submission.csv,
description.md) and `prepared/private/test.csv` (the held-out answers, never in public/).

task           metric     rows  features                                      target
digits         log_loss   1797  64 numeric (8x8 pixel intensities 0-16)       10 classes 0-9
breast_cancer  roc_auc     569  30 numeric (5% missing in 3),                 binary, 37% positive
                                1 categorical (3 levels)
churn          roc_auc   20000  12 numeric (8% missing in 4), 2 categorical   binary, ~11% positive,
                                (30 and 5 levels)                             2% labels flipped
segments       accuracy   6000  16 numeric (5% missing in 3), 2 categorical   4 named classes,
                                (6 and 12 levels)                             10% labels flipped
default_risk   log_loss   4000  59 numeric (10 informative, 10 redundant),    binary, ~31% positive,
                                1 categorical (8 levels)                      5% labels flipped
prices         rmse      12000  20 numeric (5% missing in 4), 2 categorical   real: linear, sine and
                                (15 districts, 4 qualities)                   product terms, noise
demand         mae        8000  10 numeric (4% missing in 3), 2 categorical   positive, log-normal,
                                (25 stores, 7 weekdays)                       2% outliers x5

digits and breast_cancer are scikit-learn's bundled datasets (breast_cancer is the one under
1k rows: it is bundled and real, so it stays); the rest come from `make_classification` /
`make_regression` with categorical columns binned from informative features (their level
names shuffled, so a level's code carries no order), missing cells and noise added. A quarter
of the rows (stratified for classification) is the test split; its labels go only to
prepared/private/test.csv. The same name and seed give the same files.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pandas as pd
from sklearn.datasets import load_breast_cancer, load_digits, make_classification, make_regression
from sklearn.model_selection import train_test_split

from mlmaster_daemon.tasks.spec import Metric

ID_COLUMN = "id"
TEST_FRACTION = 0.25

Table = tuple[pd.DataFrame, pd.Series]
FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class QualityTask:
    """One benchmark competition: how its table is made and how it is scored."""

    name: str
    metric: Metric
    target: str
    summary: str
    make: Callable[[int], Table]


def _categorical(values: FloatArray, levels: int, prefix: str,
                 rng: np.random.Generator) -> pd.Series:
    """`values` binned into `levels` quantile bins named in a shuffled order."""
    bins = pd.qcut(values, q=levels, labels=False, duplicates="drop")
    names = np.array([f"{prefix}{k:02d}" for k in rng.permutation(levels)], dtype=object)
    return pd.Series(names[np.asarray(bins, dtype=np.int64)], dtype=object)


def _punch_holes(frame: pd.DataFrame, columns: list[str], fraction: float,
                 rng: np.random.Generator) -> pd.DataFrame:
    """`frame` with about `fraction` of the cells of each of `columns` emptied."""
    holed = frame.copy()
    for column in columns:
        if pd.api.types.is_numeric_dtype(holed[column]):
            holed[column] = holed[column].astype(np.float64)
        holed.loc[rng.random(len(holed)) < fraction, column] = np.nan
    return holed


def _numeric_frame(features: FloatArray, start: int = 0) -> pd.DataFrame:
    columns = [f"x{k:02d}" for k in range(start, start + features.shape[1])]
    return pd.DataFrame(np.round(features, 5), columns=columns)


def _digits(seed: int) -> Table:
    bunch = load_digits(as_frame=True)
    return bunch.data.astype(np.int64), bunch.target.astype(np.int64)


def _breast_cancer(seed: int) -> Table:
    rng = np.random.default_rng(seed)
    bunch = load_breast_cancer(as_frame=True)
    frame = bunch.data.rename(columns=lambda c: str(c).replace(" ", "_"))
    frame["area_band"] = _categorical(frame["mean_area"].to_numpy(), 3, "band", rng)
    frame = _punch_holes(frame, ["mean_texture", "worst_smoothness", "area_error"], 0.05, rng)
    # scikit-learn codes malignant as 0; the competition asks for the malignant probability
    return frame, (bunch.target == 0).astype(np.int64)


def _churn(seed: int) -> Table:
    rng = np.random.default_rng(seed)
    x, y = make_classification(n_samples=20_000, n_features=14, n_informative=6,
                               n_redundant=3, weights=[0.9], flip_y=0.02, class_sep=0.8,
                               shuffle=False, random_state=seed)
    frame = _numeric_frame(x[:, 2:], start=2)
    frame["region"] = _categorical(x[:, 0], 30, "r", rng)
    frame["plan"] = _categorical(x[:, 1], 5, "p", rng)
    frame = _punch_holes(frame, ["x02", "x05", "x09", "x12"], 0.08, rng)
    return frame, pd.Series(y.astype(np.int64))


def _segments(seed: int) -> Table:
    rng = np.random.default_rng(seed)
    x, y = make_classification(n_samples=6_000, n_features=18, n_informative=8,
                               n_redundant=2, n_classes=4, n_clusters_per_class=2,
                               flip_y=0.10, shuffle=False, random_state=seed)
    frame = _numeric_frame(x[:, 2:], start=2)
    frame["channel"] = _categorical(x[:, 0], 6, "ch", rng)
    frame["city"] = _categorical(x[:, 1], 12, "city", rng)
    frame = _punch_holes(frame, ["x03", "x08", "x14"], 0.05, rng)
    names = np.array(["alpha", "beta", "gamma", "delta"], dtype=object)
    return frame, pd.Series(names[y], dtype=object)


def _default_risk(seed: int) -> Table:
    rng = np.random.default_rng(seed)
    x, y = make_classification(n_samples=4_000, n_features=60, n_informative=10,
                               n_redundant=10, weights=[0.7], flip_y=0.05,
                               shuffle=False, random_state=seed)
    frame = _numeric_frame(x[:, 1:], start=1)
    frame["grade"] = _categorical(x[:, 0], 8, "g", rng)
    return frame, pd.Series(y.astype(np.int64))


def _prices(seed: int) -> Table:
    rng = np.random.default_rng(seed)
    x, y = make_regression(n_samples=12_000, n_features=20, n_informative=8, noise=15.0,
                           shuffle=False, random_state=seed)
    district = rng.integers(0, 15, size=len(y))
    quality = rng.integers(0, 4, size=len(y))
    y = (y + 60.0 * np.sin(2.0 * x[:, 0]) + 30.0 * x[:, 1] * x[:, 2]
         + rng.normal(0.0, 40.0, size=15)[district] + 25.0 * quality)
    frame = _numeric_frame(x)
    frame["district"] = pd.Series([f"d{k:02d}" for k in district], dtype=object)
    frame["quality"] = pd.Series(np.array(["poor", "fair", "good", "best"],
                                          dtype=object)[quality])
    frame = _punch_holes(frame, ["x03", "x07", "x11", "x15"], 0.05, rng)
    return frame, pd.Series(np.round(y, 2))


def _demand(seed: int) -> Table:
    rng = np.random.default_rng(seed)
    x, linear = make_regression(n_samples=8_000, n_features=10, n_informative=5, noise=0.0,
                                shuffle=False, random_state=seed)
    store = rng.integers(0, 25, size=len(linear))
    weekday = rng.integers(0, 7, size=len(linear))
    log_demand = (0.6 * (linear - linear.mean()) / linear.std()
                  + rng.normal(0.0, 0.5, size=25)[store]
                  + np.array([0.0, -0.1, -0.1, 0.0, 0.2, 0.5, 0.4])[weekday]
                  + rng.normal(0.0, 0.3, size=len(linear)))
    demand = 20.0 * np.exp(log_demand)
    outliers = rng.random(len(demand)) < 0.02
    demand[outliers] *= 5.0
    frame = _numeric_frame(x)
    frame["store"] = pd.Series([f"s{k:02d}" for k in store], dtype=object)
    days = np.array(["mon", "tue", "wed", "thu", "fri", "sat", "sun"], dtype=object)
    frame["weekday"] = pd.Series(days[weekday])
    frame = _punch_holes(frame, ["x01", "x04", "x08"], 0.04, rng)
    return frame, pd.Series(np.round(demand, 2))


TASKS: dict[str, QualityTask] = {task.name: task for task in (
    QualityTask("digits", Metric.LOG_LOSS, "digit",
                "1797 rows, 64 numeric, 10 classes", _digits),
    QualityTask("breast_cancer", Metric.ROC_AUC, "malignant",
                "569 rows, 30 numeric + 1 categorical, missing cells", _breast_cancer),
    QualityTask("churn", Metric.ROC_AUC, "churned",
                "20000 rows, 12 numeric + 2 categorical, missing, 10% positive", _churn),
    QualityTask("segments", Metric.ACCURACY, "segment",
                "6000 rows, 16 numeric + 2 categorical, missing, 4 classes, 10% label noise",
                _segments),
    QualityTask("default_risk", Metric.LOG_LOSS, "defaulted",
                "4000 rows, 59 numeric + 1 categorical, 30% positive, label noise",
                _default_risk),
    QualityTask("prices", Metric.RMSE, "price",
                "12000 rows, 20 numeric + 2 categorical, missing, nonlinear", _prices),
    QualityTask("demand", Metric.MAE, "units",
                "8000 rows, 10 numeric + 2 categorical, missing, skewed with outliers",
                _demand),
)}


def build_task(name: str, dest: Path, seed: int = 0) -> Path:
    """Write competition `name` into the absent or empty folder `dest`; returns `dest`.

    Raises KeyError for an unknown name and FileExistsError when `dest` holds files.
    """
    task = TASKS[name]
    if dest.exists() and any(dest.iterdir()):
        raise FileExistsError(f"{dest} is not empty: pick a new folder")
    features, labels = task.make(seed)
    rng = np.random.default_rng(seed + 1)
    frame = features.assign(**{task.target: labels.to_numpy()})
    frame.insert(0, ID_COLUMN, rng.permutation(len(frame)) + 1)
    is_classification = not task.metric.is_regression
    train, test = train_test_split(frame, test_size=TEST_FRACTION, random_state=seed,
                                   stratify=labels if is_classification else None)
    train = train.sort_values(ID_COLUMN)
    test = test.sort_values(ID_COLUMN)

    public = dest / "prepared" / "public"
    private = dest / "prepared" / "private"
    public.mkdir(parents=True, exist_ok=True)
    private.mkdir(parents=True, exist_ok=True)
    sample = _sample_submission(task, train, test)
    _write_csv(train, public / "train.csv")
    _write_csv(test.drop(columns=[task.target]), public / "test.csv")
    _write_csv(sample, public / "sample_submission.csv")
    _write_csv(test[[ID_COLUMN, task.target]], private / "test.csv")
    (public / "description.md").write_text(_description(task, train, test, sample),
                                           encoding="utf-8")
    (dest / "task.toml").write_text(
        f'metric = "{task.metric.value}"\n'
        f"lower_is_better = {str(task.metric.lower_is_better).lower()}\n"
        f'target = "{task.target}"\n'
        f'id_column = "{ID_COLUMN}"\n', encoding="utf-8")
    return dest


def _sample_submission(task: QualityTask, train: pd.DataFrame,
                       test: pd.DataFrame) -> pd.DataFrame:
    """A valid, uninformed submission: priors, the majority class or the train mean."""
    ids = test[ID_COLUMN].to_numpy()
    labels = train[task.target]
    if task.metric.is_regression:
        return pd.DataFrame({ID_COLUMN: ids, task.target: round(float(labels.mean()), 4)})
    shares = labels.value_counts(normalize=True)
    if task.metric.needs_probabilities and len(shares) > 2:
        columns = {str(label): round(float(shares[label]), 6)
                   for label in sorted(shares.index.tolist())}
        return pd.DataFrame({ID_COLUMN: ids, **columns})
    if task.metric.needs_probabilities:
        positive = max(shares.index.tolist())
        return pd.DataFrame({ID_COLUMN: ids, task.target: round(float(shares[positive]), 6)})
    return pd.DataFrame({ID_COLUMN: ids, task.target: shares.idxmax()})


def _write_csv(frame: pd.DataFrame, path: Path) -> None:
    frame.to_csv(path, index=False, lineterminator="\n")


def _description(task: QualityTask, train: pd.DataFrame, test: pd.DataFrame,
                 sample: pd.DataFrame) -> str:
    features = [c for c in train.columns if c not in (ID_COLUMN, task.target)]
    categorical = [c for c in features if not pd.api.types.is_numeric_dtype(train[c])]
    missing = [c for c in features if train[c].isna().any()]
    direction = "lower" if task.metric.lower_is_better else "higher"
    if task.metric.is_regression:
        target_text = "a number"
    else:
        target_text = "one of " + ", ".join(str(v) for v in sorted(train[task.target].unique()))
    if task.metric.needs_probabilities and len(sample.columns) > 2:
        submission_text = "one column per class holds its predicted probability"
    elif task.metric.needs_probabilities:
        submission_text = (f"`{task.target}` is the predicted probability of class "
                           f"{max(train[task.target].unique())}")
    else:
        submission_text = f"`{task.target}` is the prediction"
    example = sample.head(2).to_csv(index=False, lineterminator="\n").rstrip("\n")
    return "\n".join([
        f"# {task.name}",
        "",
        f"A tabular competition: {task.summary}.",
        "",
        "## Files",
        "",
        f"- `train.csv`: {len(train)} rows with `{ID_COLUMN}`, {len(features)} features and "
        f"the target `{task.target}` ({target_text}).",
        f"- `test.csv`: {len(test)} rows with `{ID_COLUMN}` and the same features.",
        "- `sample_submission.csv`: a valid submission in the expected format.",
        "",
        "## Columns",
        "",
        f"Categorical (text): {', '.join(categorical) or 'none'}; every other feature is "
        f"numeric. Columns with empty cells: {', '.join(missing) or 'none'}.",
        "",
        "## Evaluation",
        "",
        f"Scored with `{task.metric.value}`; {direction} is better.",
        "",
        "## Submission format",
        "",
        f"One row per `{ID_COLUMN}` in test.csv; {submission_text}:",
        "",
        "```",
        example,
        "...",
        "```",
        "",
    ])
