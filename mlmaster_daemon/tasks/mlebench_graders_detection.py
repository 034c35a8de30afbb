"""mle-bench's graders of full-benchmark competitions scored on boxes and points: mean average
precision over IoU thresholds (2D and 3D), character-detection F1; reproduced as
`mlebench_graders` reproduces Lite's. Families are named by competition id."""

from __future__ import annotations

from mlmaster_daemon.tasks.mlebench_graders import Grader

GRADERS: dict[str, Grader] = {}
