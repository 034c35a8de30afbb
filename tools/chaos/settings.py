"""What a chaos run is asked to do, and the moments a kill can wait for."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

MOMENTS = ("start-up", "after-ready", "random", "generating", "spawning", "running",
           "evaluating", "finished")
READY_TIMEOUT_S = 90.0
TARGET_WAIT_S = 8.0
# The windows between commits are a few milliseconds: poll at that pace (a read is ~0.2 ms).
POLL_S = 0.002


@dataclass(frozen=True)
class ChaosSettings:
    example: str = "breast_cancer"
    steps: int = 16
    kills: int = 20
    seed: int = 0
    parallel: int = 2
    sandbox: str = "auto"
    state_dir: Path | None = None
    finish_timeout_s: float = 900.0
    keep: bool = False
    moments: tuple[str, ...] = MOMENTS
    # The Ray backend: None runs nodes on this machine's slots; an address joins that cluster
    # (the chaos run starts one of `parallel` one-CPU workers when given "").
    ray_address: str | None = None
