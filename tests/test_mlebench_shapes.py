"""Every known MLE-bench competition's folder as its `prepare.py` (openai/mle-bench 783b15a)
leaves it: the public files under their names (archives, image folders, JSON), the sample
submission where the config points, and hidden answers with the columns prepare.py writes
(one-hot class columns, whole rows of -1, unscored classes, blanks). Used by the conformance
tests; the rows are small and seeded."""

from __future__ import annotations

import csv
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mlmaster_daemon.tasks.registry import lookup

ROWS = 40
DOGS = lookup("dog-breed-identification").targets  # type: ignore[union-attr]
LEAVES = lookup("leaf-classification").targets  # type: ignore[union-attr]
RANZCR = lookup("ranzcr-clip-catheter-line-classification").targets  # type: ignore[union-attr]
JIGSAW = ("toxic", "severe_toxic", "obscene", "threat", "insult", "identity_hate")
PADDY = ("blast", "brown_spot", "hispa", "normal", "tungro")
SEEDLINGS = ("Black-grass", "Charlock", "Cleavers", "Maize", "Sugar beet")


@dataclass(frozen=True)
class Shape:
    """How one competition's prepared folder looks and how mle-bench grades it (`kind`)."""

    cid: str
    kind: str
    id_column: str
    targets: tuple[str, ...]
    ids: Callable[[int], list[Any]]
    answers: str = "private/test.csv"
    sample: str = "public/sample_submission.csv"
    sample_value: Any = 0.5
    public: tuple[str, ...] = ()
    # Answers columns prepare.py keeps that are not scored (features, unscored classes).
    extra: dict[str, Callable[[int], list[Any]]] = field(default_factory=dict)
    labels: tuple[Any, ...] = (0, 1)


def _hex(n: int) -> list[Any]:
    return [f"{(i * 2654435761) % 16**10:010x}" for i in range(n)]


def _ints(n: int) -> list[Any]:
    return list(range(1, n + 1))


SHAPES = [
    Shape("aerial-cactus-identification", "auc", "id", ("has_cactus",),
          lambda n: [f"{h}.jpg" for h in _hex(n)], public=("train.csv", "train.zip", "test.zip")),
    Shape("aptos2019-blindness-detection", "qwk", "id_code", ("diagnosis",), _hex,
          sample_value=0, labels=(0, 1, 2, 3, 4),
          public=("train.csv", "test.csv", "train_images/", "test_images/")),
    Shape("denoising-dirty-documents", "rmse", "id", ("value",),
          lambda n: [f"{1 + i // 8}_{1 + i % 8 // 2}_{1 + i % 2}" for i in range(n)],
          answers="private/answers.csv", sample="public/sampleSubmission.csv", sample_value=1,
          public=("train/", "test/", "train_cleaned/")),
    Shape("detecting-insults-in-social-commentary", "auc", "Comment", ("Insult",),
          lambda n: [f"you are number {i}" for i in range(n)],
          sample="public/sample_submission_null.csv", sample_value=0,
          extra={"Date": lambda n: ["" if i % 3 else f"2012{i:04d}120000Z" for i in range(n)],
                 "Usage": lambda n: ["PrivateTest"] * n},
          public=("train.csv", "test.csv")),
    Shape("dog-breed-identification", "one_hot", "id", DOGS, _hex, sample_value=1 / 120,
          public=("labels.csv", "train/", "test/")),
    Shape("dogs-vs-cats-redux-kernels-edition", "binary_log_loss", "id", ("label",), _ints,
          answers="private/answers.csv",
          public=("train/", "test/", "train.zip", "test.zip")),
    Shape("histopathologic-cancer-detection", "auc", "id", ("label",), _hex,
          answers="private/answers.csv", sample_value=0,
          public=("train/", "test/", "train_labels.csv")),
    Shape("jigsaw-toxic-comment-classification-challenge", "jigsaw", "id", JIGSAW, _hex,
          public=("train.csv", "test.csv")),
    Shape("leaf-classification", "one_hot", "id", LEAVES, _ints, sample_value=1 / 99,
          public=("train.csv", "test.csv", "images/")),
    Shape("mlsp-2013-birds", "auc", "Id", ("Probability",),
          lambda n: [(i // 19) * 100 + i % 19 for i in range(n)],
          answers="private/answers.csv", sample_value=0,
          public=("essential_data/", "supplemental_data/")),
    Shape("new-york-city-taxi-fare-prediction", "rmse", "key", ("fare_amount",),
          lambda n: [f"2015-01-{1 + i % 28:02d} 13:08:24.{i:07d}" for i in range(n)],
          sample_value=11.35, extra={"passenger_count": lambda n: [1 + i % 4 for i in range(n)]},
          public=("labels.csv", "test.csv", "GCP-Coupons-Instructions.rtf")),
    Shape("nomad2018-predict-transparent-conductors", "rmsle", "id",
          ("formation_energy_ev_natom", "bandgap_energy_ev"), _ints,
          extra={"spacegroup": lambda n: [12 + i % 3 for i in range(n)]},
          public=("train.csv", "test.csv", "train/", "test/")),
    Shape("plant-pathology-2020-fgvc7", "auc_columns", "image_id",
          ("healthy", "multiple_diseases", "rust", "scab"),
          lambda n: [f"Test_{i}" for i in range(n)], sample_value=0.25,
          public=("train.csv", "test.csv", "images/")),
    Shape("random-acts-of-pizza", "auc", "request_id", ("requester_received_pizza",),
          lambda n: [f"t3_{h[:6]}" for h in _hex(n)], sample="public/sampleSubmission.csv",
          sample_value=0, public=("train.json", "test.json", "train.zip", "test.zip")),
    Shape("ranzcr-clip-catheter-line-classification", "auc", "StudyInstanceUID", RANZCR,
          lambda n: [f"1.2.826.0.1.3680043.8.498.{10**6 + i}" for i in range(n)],
          sample_value=0,
          extra={"CVC - Normal": lambda n: [i % 2 for i in range(n)],
                 "Swan Ganz Catheter Present": lambda n: [i % 5 == 0 for i in range(n)],
                 "PatientID": _hex},
          public=("train.csv", "train_annotations.csv", "train/", "test/")),
    Shape("siim-isic-melanoma-classification", "auc", "image_name", ("target",),
          lambda n: [f"ISIC_{i:07d}" for i in range(n)], sample_value=0,
          extra={"sex": lambda n: ["male", "female"] * (n // 2)},
          public=("train.csv", "test.csv", "train/", "test/", "jpeg/", "tfrecords/")),
    Shape("spooky-author-identification", "one_hot", "id", ("EAP", "HPL", "MWS"),
          lambda n: [f"id{i:05d}" for i in range(n)], sample_value=None,
          public=("train.csv", "test.csv")),
    Shape("tabular-playground-series-dec-2021", "accuracy", "Id", ("Cover_Type",), _ints,
          sample_value=2, labels=(1, 2, 3, 4, 7), public=("train.csv", "test.csv"),
          extra={"Elevation": lambda n: [2000 + i for i in range(n)]}),
    Shape("tabular-playground-series-may-2022", "auc", "id", ("target",), _ints,
          public=("train.csv", "test.csv")),
    Shape("text-normalization-challenge-english-language", "text", "id", ("after",),
          lambda n: [f"{i // 4}_{i % 4}" for i in range(n)], answers="private/answers.csv",
          sample="private/sample_submission.csv", sample_value=None,
          labels=("a", "None", "NA", "one", "1", "007", "twelve", "x y"),
          public=("en_train.csv.zip", "en_test_2.csv.zip", "en_sample_submission_2.csv.zip")),
    Shape("text-normalization-challenge-russian-language", "text", "id", ("after",),
          lambda n: [f"{i // 4}_{i % 4}" for i in range(n)], answers="private/answers.csv",
          sample="private/sample_submission.csv", sample_value=None,
          labels=("и", "None", "NA", "один", "1", "007", "сто", "два слова"),
          public=("ru_train.csv.zip", "ru_test_2.csv.zip", "ru_sample_submission_2.csv.zip")),
    Shape("the-icml-2013-whale-challenge-right-whale-redux", "auc", "clip", ("probability",),
          lambda n: [f"20090404_000000_{i:03d}s0ms_Test{i}.aif" for i in range(n)],
          sample="public/sampleSubmission.csv", sample_value=0,
          public=("train2.zip", "test2.zip")),
    Shape("invasive-species-monitoring", "auc", "name", ("invasive",), _ints,
          answers="private/answers.csv", sample="private/sample_submission.csv",
          public=("sample_submission.csv.zip", "train_labels.csv.zip", "train.7z", "test.7z")),
    Shape("ml2021spring-hw2", "accuracy", "Id", ("ClassId",), lambda n: list(range(n)),
          answers="private/answers.csv", sample="public/sampleSubmission.csv", sample_value=0,
          labels=tuple(range(39)), public=("timit_11/timit_11/train_11.npy",)),
    Shape("movie-review-sentiment-analysis-kernels-only", "accuracy", "PhraseId",
          ("Sentiment",), lambda n: list(range(156061, 156061 + n)),
          answers="private/answers.csv", sample="public/sampleSubmission.csv", sample_value=2,
          labels=(0, 1, 2, 3, 4), extra={"SentenceId": lambda n: [8545 + i // 5 for i in range(n)]},
          public=("train.tsv.zip", "test.tsv.zip")),
    Shape("paddy-disease-classification", "paddy", "image_id", ("label",),
          lambda n: [f"{200001 + i}.jpg" for i in range(n)], sample_value=None, labels=PADDY,
          extra={"variety": lambda n: ["ADT45"] * n,
                 "age": lambda n: [45 + i % 30 for i in range(n)]},
          public=("train.csv", "train_images/", "test_images/")),
    Shape("plant-seedlings-classification", "f1_micro", "file", ("species",),
          lambda n: [f"{h[:9]}.png" for h in _hex(n)], answers="private/answers.csv",
          sample_value="Sugar beet", labels=SEEDLINGS, public=("train/", "test/")),
    Shape("playground-series-s3e18", "auc_columns", "id", ("EC1", "EC2"),
          lambda n: list(range(14838, 14838 + n)),
          extra={"EC3": lambda n: [i % 2 for i in range(n)]}, public=("train.csv", "test.csv")),
    Shape("spaceship-titanic", "accuracy", "PassengerId", ("Transported",),
          lambda n: [f"{i:04d}_01" for i in range(n)], sample_value=False, labels=(False, True),
          extra={"HomePlanet": lambda n: ["Earth", "Mars"] * (n // 2)},
          public=("train.csv", "test.csv")),
]


def truth_for(shape: Shape, rng: np.random.Generator) -> pd.DataFrame:
    """The scored answer columns, in the answers' row order."""
    n = ROWS
    if shape.kind in ("one_hot", "auc_columns") and len(shape.targets) > 2:
        picks = np.arange(n) % len(shape.targets) if shape.kind == "auc_columns" \
            else rng.integers(0, len(shape.targets), n)
        return pd.DataFrame({c: (picks == k).astype(int) for k, c in enumerate(shape.targets)})
    if shape.kind in ("auc", "auc_columns", "jigsaw", "binary_log_loss"):
        columns = {c: rng.permutation(np.arange(n) % 2) for c in shape.targets}
        frame = pd.DataFrame(columns)
        if shape.kind == "jigsaw":
            frame.iloc[::5] = -1  # Kaggle's unscored test rows, whole rows of -1
        return frame
    if shape.kind == "rmse":
        return pd.DataFrame({shape.targets[0]: rng.uniform(0, 1 if shape.cid[0] == "d" else 60, n)
                             .round(6)})
    if shape.kind == "rmsle":
        return pd.DataFrame({c: rng.uniform(0.01, 4, n).round(4) for c in shape.targets})
    labels = np.array(shape.labels)
    return pd.DataFrame({shape.targets[0]: labels[rng.integers(0, len(labels), n)]})


def write_folder(parent: Path, shape: Shape, truth: pd.DataFrame) -> Path:
    """The prepared folder: public files, sample submission and answers."""
    root = parent / shape.cid
    prepared = root / "prepared"
    for side in ("public", "private"):
        (prepared / side).mkdir(parents=True, exist_ok=True)
    (prepared / "public" / "description.md").write_text(f"# {shape.cid}\n")
    for name in shape.public:
        _public_file(prepared / "public", name, shape)
    ids = shape.ids(ROWS)
    answers = pd.DataFrame({shape.id_column: ids,
                            **{column: truth[column].to_numpy() for column in truth.columns},
                            **{column: values(ROWS) for column, values in shape.extra.items()}})
    quoting = csv.QUOTE_NONNUMERIC if shape.kind == "text" else csv.QUOTE_MINIMAL
    answers.to_csv(prepared / shape.answers, index=False, quoting=quoting)
    sample_frame(shape, ids, truth).to_csv(prepared / shape.sample, index=False, quoting=quoting)
    return root


def sample_frame(shape: Shape, ids: list[Any], truth: pd.DataFrame) -> pd.DataFrame:
    """The sample submission prepare.py writes: a constant, a blank, or (text) `before`."""
    sample = pd.DataFrame({shape.id_column: ids})
    if shape.cid.startswith("spooky"):
        for column, value in zip(shape.targets, (0.403493538995863, 0.287808366106543,
                                                 0.308698094897594), strict=True):
            sample[column] = value
    elif shape.kind == "text":
        sample["after"] = [f"w{i}" if i % 3 else str(v) for i, v in enumerate(truth["after"])]
    else:
        value = np.nan if shape.sample_value is None else shape.sample_value
        sample = pd.concat([sample, pd.DataFrame({c: [value] * len(ids) for c in shape.targets})],
                           axis=1)
    if shape.cid.startswith("detecting-insults"):
        sample = sample[["Insult", "Comment"]].assign(Date="")[["Insult", "Date", "Comment"]]
    return sample


def _public_file(public: Path, name: str, shape: Shape) -> None:
    path = public / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if name.endswith("/"):
        path.mkdir(exist_ok=True)
        (path / "placeholder.bin").write_bytes(b"\0")
    elif name.endswith(".zip"):
        member = name.removesuffix(".zip")
        table = member.endswith((".csv", ".tsv"))
        sep = "\t" if member.endswith(".tsv") else ","
        text = sep.join([shape.id_column, "feature"]) + "\n" + sep.join(["1", "a"]) + "\n"
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr(member if table else f"{member}/1.jpg", text if table else "jpg")
    elif name.endswith(".json"):
        path.write_text(f'[{{"{shape.id_column}": "t3_0", "request_text": "pizza?"}}]')
    elif name.endswith(".csv"):
        path.write_text(f"{shape.id_column},feature\n1,a\n")
    else:
        path.write_bytes(b"binary")
