"""mle-bench's graders of full-benchmark competitions scored on labels and probabilities: multi-
label micro F1, top-1 error, lwlrap, weighted and bias-weighted AUC, probabilistic F1, weighted
multi-label log loss, KL divergence, Matthews correlation; reproduced as `mlebench_graders`
reproduces Lite's. Families are named by competition id."""

from __future__ import annotations

from mlmaster_daemon.tasks.mlebench_graders import Grader

GRADERS: dict[str, Grader] = {}
