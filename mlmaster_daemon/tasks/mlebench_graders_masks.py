"""mle-bench's graders of full-benchmark competitions scored on segmentation masks written as run-
length encodings: IoU-threshold precision, Dice, F0.5, Dice with Hausdorff distance; reproduced
as `mlebench_graders` reproduces Lite's. Families are named by competition id."""

from __future__ import annotations

from mlmaster_daemon.tasks.mlebench_graders import Grader

GRADERS: dict[str, Grader] = {}
