"""mle-bench's graders of full-benchmark competitions scored on numbers: per-type log MAE, column-
wise Spearman, angular error, Laplace log-likelihood, per-trip haversine, masked MCRMSE, Pearson
r, MAE on scored rows; reproduced as `mlebench_graders` reproduces Lite's. Families are named by
competition id."""

from __future__ import annotations

from mlmaster_daemon.tasks.mlebench_graders import Grader

GRADERS: dict[str, Grader] = {}
