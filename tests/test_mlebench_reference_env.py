"""The conformance files graded by mle-bench's own graders, side by side with ours.

Runs only where an mle-bench checkout and a Python that can import it are at hand:
MLEBENCH_SRC (a checkout of openai/mle-bench, 783b15a, holding `mlebench/`) and MLEBENCH_PYTHON
(a Python with its pinned scikit-learn 1.5.1, pandas 2.2.2, numpy 1.26.4 and PyYAML). Every
prepared folder of test_mlebench_shapes gets its perfect, noisy and sample submissions, the
files mle-bench refuses, and each of a set of damaged copies (rows dropped or repeated, columns
reordered, added or emptied, ids swapped or wrong, values out of range or text); mle-bench's
score (unrounded, or its refusal) must be ours to 1e-9.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_mlebench_conformance import (
    SHAPES,
    _refusals,
    build,
    noisy,
    perfect,
    write_submission,
)
from test_mlebench_shapes import Shape

from mlmaster_daemon.errors import GradingError
from mlmaster_daemon.tasks.grading import grade_like_mlebench

SOURCE = os.environ.get("MLEBENCH_SRC", "")
PYTHON = os.environ.get("MLEBENCH_PYTHON", "")
pytestmark = pytest.mark.skipif(
    not (SOURCE and PYTHON), reason="set MLEBENCH_SRC and MLEBENCH_PYTHON to run mle-bench")

RUN_MLEBENCH = """
import json, sys, warnings, logging, yaml
from pathlib import Path
warnings.filterwarnings("ignore"); logging.disable(logging.CRITICAL)
source, manifest = sys.argv[1], json.load(open(sys.argv[2]))
sys.path.insert(0, source)
from mlebench.grade_helpers import Grader
from mlebench.utils import load_answers, read_csv
scores = {}
for key, (cid, answers, submission) in manifest.items():
    config = yaml.safe_load(open(f"{source}/mlebench/competitions/{cid}/config.yaml"))
    grader = Grader(config["grader"]["name"], config["grader"]["grade_fn"])
    try:
        answer_frame = load_answers(Path(answers))
        scores[key] = float(grader.grade_fn(read_csv(Path(submission)), answer_frame))
    except Exception:
        scores[key] = None
print(json.dumps(scores))
"""


def _damaged(shape: Shape) -> dict[str, Callable[[pd.DataFrame], pd.DataFrame]]:
    target, ident = shape.targets[0], shape.id_column

    def setting(value: object) -> Callable[[pd.DataFrame], pd.DataFrame]:
        def change(frame: pd.DataFrame) -> pd.DataFrame:
            frame = frame.astype({target: object})
            frame.loc[frame.index[1], target] = value
            return frame
        return change

    def swapped(frame: pd.DataFrame) -> pd.DataFrame:
        ids = frame[ident].to_numpy().copy()
        ids[[0, 1]] = ids[[1, 0]]
        return frame.assign(**{ident: ids})

    return {
        "row_repeated": lambda f: pd.concat([f, f.iloc[[2]]]),
        "columns_reversed": lambda f: f[list(f.columns)[::-1]],
        "extra_column": lambda f: pd.concat([f, pd.DataFrame({"zz": [0.3] * len(f)})], axis=1),
        "blank_value": setting(np.nan),
        "value_1_5": setting(1.5),
        "value_as_text": lambda f: f.assign(**{target: f[target].astype(str) + "x"}),
        "ids_swapped": swapped,
        "all_blank": lambda f: f.assign(**{target: np.nan}),
        "rows_reversed": lambda f: f.iloc[::-1],
    }


def _files(tmp_path: Path, shape: Shape) -> tuple[Path, dict[str, Path]]:
    built = build(tmp_path / "comps", shape)
    folder = tmp_path / "subs" / shape.cid
    folder.mkdir(parents=True)
    guess = noisy(built)
    files = {"perfect": write_submission(folder, built, perfect(built), "perfect"),
             "noisy": write_submission(folder, built, guess, "noisy"),
             "sample": built.spec.public_dir / built.spec.sample_submission_file}
    changes = {**_refusals(shape), **_damaged(shape)}
    for name, change in changes.items():
        path = write_submission(folder, built, guess, name, shuffle=False)
        change(pd.read_csv(path)).to_csv(path, index=False)
        files[name] = path
    return built.spec.root, files


def test_every_conformance_file_scores_as_mlebench_scores_it(tmp_path: Path) -> None:
    from mlmaster_daemon.tasks.competition import load_task
    from mlmaster_daemon.tasks.registry import lookup

    manifest: dict[str, tuple[str, str, str]] = {}
    ours: dict[str, float | None] = {}
    for shape in SHAPES:
        root, files = _files(tmp_path, shape)
        spec = load_task(root)
        known = lookup(shape.cid)
        assert known is not None
        answers = root / "prepared" / "private" / (known.answers or "test.csv")
        for name, path in files.items():
            key = f"{shape.cid}/{name}"
            manifest[key] = (shape.cid, str(answers), str(path))
            try:
                ours[key] = grade_like_mlebench(spec, path)
            except GradingError:
                ours[key] = None
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    script = tmp_path / "run_mlebench.py"
    script.write_text(RUN_MLEBENCH)
    done = subprocess.run([PYTHON, str(script), SOURCE, str(tmp_path / "manifest.json")],
                          capture_output=True, text=True, timeout=600, check=True)
    theirs: dict[str, float | None] = json.loads(done.stdout)
    differ = {key: (ours[key], theirs[key]) for key in manifest
              if not _same(ours[key], theirs[key])}
    assert not differ, differ
    assert len(manifest) > 450 and sum(v is not None for v in theirs.values()) > 150


def _same(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is b
    return (np.isnan(a) and np.isnan(b)) or abs(a - b) <= 1e-9
