"""A full-benchmark competition scored by its own metric, searched end to end: a real daemon,
a real OpenAI-compatible server writing the code, a folder shaped as `mlebench prepare` leaves
ventilator-pressure-prediction (answers keep `u_out`, which the grader uses to drop the
expiratory phase), and the report graded by the reproduction of mle-bench's grader."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import daemon_config, wait_terminal
from openai_server import FakeOpenAI

from mlmaster_daemon.api.client import Client
from mlmaster_daemon.daemon import Daemon
from mlmaster_daemon.tasks.competition import load_task
from mlmaster_daemon.tasks.grading import grade_like_mlebench, grade_report

# The model's answer: the mean inspiratory pressure of train.csv for every test row, scored on
# the training rows the competition would score.
CODE = """\
import json
import os

import pandas as pd

train = pd.read_csv("input/train.csv")
test = pd.read_csv("input/test.csv")
scored = train[train["u_out"] == 0]
guess = float(scored["pressure"].mean())
mae = float((scored["pressure"] - guess).abs().mean())
os.makedirs("submission", exist_ok=True)
pd.DataFrame({"id": test["id"], "pressure": guess}).to_csv("submission/submission.csv",
                                                             index=False)
print(f"validation MAE on u_out == 0: {mae}")
with open("metrics.json", "w") as handle:
    json.dump({"validation_metric": mae, "fold_metrics": [mae]}, handle)
"""


def _ventilator(root: Path) -> Path:
    rng = np.random.default_rng(3)
    rows = 400
    frame = pd.DataFrame({
        "id": np.arange(1, rows + 1),
        "breath_id": np.repeat(np.arange(1, rows // 80 + 1), 80),
        "R": 20, "C": 50,
        "time_step": np.tile(np.linspace(0, 2.5, 80), rows // 80),
        "u_in": rng.uniform(0, 30, rows),
        "u_out": np.tile((np.arange(80) >= 30).astype(int), rows // 80),
    })
    frame["pressure"] = 5 + 0.3 * frame["u_in"] + rng.normal(0, 1, rows)
    public, private = root / "prepared" / "public", root / "prepared" / "private"
    public.mkdir(parents=True)
    private.mkdir(parents=True)
    train, test = frame.iloc[:240], frame.iloc[240:]
    train.to_csv(public / "train.csv", index=False)
    test.drop(columns=["pressure"]).to_csv(public / "test.csv", index=False)
    pd.DataFrame({"id": test["id"], "pressure": 0}).to_csv(public / "sample_submission.csv",
                                                          index=False)
    test.to_csv(private / "test.csv", index=False)
    return root


@pytest.fixture
async def server() -> AsyncIterator[FakeOpenAI]:
    fake = FakeOpenAI(code=CODE)
    await fake.start()
    yield fake
    await fake.stop()


async def test_a_search_on_a_competitions_own_metric_is_graded_as_mle_bench_grades_it(
        short_dir: Path, tmp_path: Path, server: FakeOpenAI,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_KEY", "sk-test-key-0000")
    root = _ventilator(tmp_path / "ventilator-pressure-prediction")
    endpoint = {"base_url": server.base_url, "model": "fake", "api_key_env": "FAKE_KEY",
                "max_retries": 1, "backoff_s": 0.01, "timeout_s": 20}
    config = daemon_config(short_dir / "state", short_dir / "api.sock",
                           extra={"llm.code": endpoint})
    daemon = Daemon(config)
    await daemon.start()
    try:
        async with Client(daemon.socket_path) as client:
            created = await client.submit({"task_dir": str(root), "steps": 2})
            task = await wait_terminal(client, created["id"])
    finally:
        await daemon.stop()
    assert task["state"] == "finished" and task["best"] is not None
    # The coder was told what the competition is scored by, and which way is better.
    prompt = server.requests[1]["messages"][-1]["content"]
    assert "MAE on rows with u_out == 0 (the competition's own metric" in prompt
    assert "lower is better" in prompt
    spec, best = load_task(root), Path(task["best"]["submission_path"])
    report = grade_report(spec, best)
    answers = pd.read_csv(root / "prepared" / "private" / "test.csv")
    train = pd.read_csv(root / "prepared" / "public" / "train.csv")
    guess = train.loc[train["u_out"] == 0, "pressure"].mean()
    scored = answers[answers["u_out"] == 0]["pressure"]
    want = float((scored - guess).abs().mean())
    assert grade_like_mlebench(spec, best) == pytest.approx(want, abs=1e-9)
    assert report.score == round(want, 5)  # reports round as mle-bench's do
    assert report.is_lower_better is True
