"""The daemon starts without the data-science stack: numpy and pandas (about 45 MB of an idle
daemon's RSS) and scikit-learn/scipy load only when a task needs them (holdout splits,
grading, ensembles). Checked in a fresh interpreter, since the test process imports them."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("numpy", "pandas", "sklearn", "scipy")


def test_importing_the_daemon_loads_no_numpy_pandas_sklearn_or_scipy() -> None:
    code = ("import json, sys, mlmaster_daemon.daemon\n"
            f"heavy = set({HEAVY!r})\n"
            "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in heavy)))\n")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                         text=True, timeout=120)
    assert json.loads(out.stdout) == []
