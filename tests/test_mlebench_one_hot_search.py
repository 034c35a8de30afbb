"""The one-hot competitions end to end: an offline draft, run as the daemon runs it on a folder
shaped as `mlebench prepare` leaves leaf-classification and spooky-author-identification (a
label column in train.csv, one probability column per class in the sample submission, one-hot
hidden answers), writes a submission that mle-bench's grader of the competition accepts, and
that scores better than the sample submission."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from offline_runs import run_script

from mlmaster_daemon.coders.offline.coder import OfflineCoder
from mlmaster_daemon.coders.protocol import CodeRequest
from mlmaster_daemon.models import Operator
from mlmaster_daemon.tasks.competition import load_task
from mlmaster_daemon.tasks.grading import grade_report, grade_sample_submission
from mlmaster_daemon.tasks.preview import data_preview
from mlmaster_daemon.tasks.registry import lookup

TRAIN_ROWS = 600


def _folder(root: Path, labelled: pd.DataFrame, label: str, classes: list[str]) -> Path:
    """`labelled` split into train.csv (with `label`), test.csv (without) and one-hot answers;
    the sample submission holds each class's share of the training rows."""
    public, private = root / "prepared" / "public", root / "prepared" / "private"
    public.mkdir(parents=True)
    private.mkdir(parents=True)
    train, test = labelled.iloc[:TRAIN_ROWS], labelled.iloc[TRAIN_ROWS:]
    train.to_csv(public / "train.csv", index=False)
    test.drop(columns=[label]).to_csv(public / "test.csv", index=False)
    shares = train[label].value_counts(normalize=True).reindex(classes, fill_value=0.0)
    sample = pd.DataFrame({"id": test["id"].to_numpy()})
    for name in classes:
        sample[name] = shares[name]
    sample.to_csv(public / "sample_submission.csv", index=False)
    answers = pd.DataFrame({"id": test["id"].to_numpy()})
    for name in classes:
        answers[name] = (test[label].to_numpy() == name).astype(int)
    answers.to_csv(private / "test.csv", index=False)
    return root


def _spooky(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    words = {"EAP": "raven nevermore chamber", "HPL": "eldritch cosmic ancient",
             "MWS": "creature sorrow lonely"}
    authors = rng.choice(sorted(words), 900)
    texts = [" ".join(rng.choice(words[a].split() + "the of and a to in".split() * 2, 12))
             for a in authors]
    labelled = pd.DataFrame({"id": [f"id{i:05d}" for i in range(900)], "text": texts,
                             "author": authors})
    return _folder(tmp_path / "spooky-author-identification", labelled, "author",
                   sorted(words))


def _leaf(tmp_path: Path) -> Path:
    known = lookup("leaf-classification")
    assert known is not None
    classes = list(known.targets)
    rng = np.random.default_rng(1)
    species = np.array(classes)[rng.permutation(np.arange(900) % len(classes))]
    centres = {name: rng.normal(0, 1, 8) for name in classes}
    features = np.stack([centres[s] + rng.normal(0, 0.3, 8) for s in species])
    labelled = pd.DataFrame(features, columns=[f"margin{i}" for i in range(1, 9)])
    labelled.insert(0, "species", species)
    labelled.insert(0, "id", np.arange(1, 901))
    return _folder(tmp_path / "leaf-classification", labelled, "species", classes)


@pytest.mark.parametrize("make", [_spooky, _leaf], ids=["spooky", "leaf"])
def test_an_offline_draft_on_a_one_hot_competition_beats_its_sample_submission(
        tmp_path: Path, make: object) -> None:
    assert callable(make)
    spec = load_task(make(tmp_path))
    # a short node limit, as a quick search gives: the script plans its work to fit
    request = CodeRequest(Operator.DRAFT, spec, 1, data_preview(spec), cv_folds=3,
                          node_timeout_s=60)
    response = asyncio.run(OfflineCoder().generate(request))
    run = run_script(spec, response, tmp_path / "workspace")
    assert run.returncode == 0, run.output[-2000:]
    report = grade_report(spec, run.workspace / "submission" / "submission.csv")
    assert report.score is not None, report.notes
    assert report.score < grade_sample_submission(spec)
