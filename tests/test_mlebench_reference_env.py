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

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
from mlebench_reference import Manifest, differing, mlebench_scores, needs_mlebench, ours_or_none
from test_mlebench_conformance import (
    SHAPES,
    _refusals,
    build,
    noisy,
    perfect,
    write_submission,
)
from test_mlebench_shapes import Shape

from mlmaster_daemon.tasks.grading import grade_like_mlebench

pytestmark = needs_mlebench


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

    manifest: Manifest = {}
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
            ours[key] = ours_or_none(grade_like_mlebench, spec, path)
    theirs = mlebench_scores(manifest, tmp_path)
    assert not differing(ours, theirs)
    assert len(manifest) > 450 and sum(v is not None for v in theirs.values()) > 150

