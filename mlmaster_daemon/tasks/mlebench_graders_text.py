"""mle-bench's graders of full-benchmark competitions scored on strings compared as text:
Levenshtein distances, word Jaccard, Kendall tau of cell orders, micro F1 over predicted tokens;
reproduced as `mlebench_graders` reproduces Lite's. Families are named by competition id."""

from __future__ import annotations

from mlmaster_daemon.tasks.mlebench_graders import Grader

GRADERS: dict[str, Grader] = {}
