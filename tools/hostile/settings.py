"""What a hostile run is asked to do (`HostileSettings`), and the limits and pace it keeps."""

from __future__ import annotations

from dataclasses import dataclass

from tools.hostile.attacks import ATTACKS

FAULTS = ("stop", "disk-full", "wal-loss", "crash")
MIB = 1024 * 1024
# The daemon needs ~165 MiB through a whole hostile run; 400 MiB leaves it 2.4 times that.
# On a real disk a job's files reach 3 GiB (stderr) and 1 GiB (metrics.json): reading one
# whole goes far past it, and so does a model answer read whole at 64 MiB (held several times
# over). On the run's small tmpfs a job's files stay under a quarter of its free space.
RSS_LIMIT_MB = 400
RSS_POLL_S = 0.2
FAULT_WAIT_S = 120.0
LEDGER_POLL_S = 1.0
# A task paused this long on a full disk after the run's own ballast went stays paused.
STUCK_S = 60.0


@dataclass(frozen=True)
class HostileSettings:
    attacks: tuple[str, ...] = tuple(a.name for a in ATTACKS)
    faults: tuple[str, ...] = FAULTS
    steps: int = 0  # 0: two per attack (each attack once), plus 6
    victim_steps: int = 8
    parallel: int = 2
    sandbox: str = "auto"
    node_timeout_s: float = 30.0
    tmpfs_mb: int = 512  # 0: the state dir on the temp dir's own disk
    rss_limit_mb: int = RSS_LIMIT_MB
    finish_timeout_s: float = 900.0
    keep: bool = False
    clean: bool = False
    # Run the daemon without root's file override, as the systemd unit's own user runs it.
    drop_dac: bool = True

    @property
    def attacker_steps(self) -> int:
        return self.steps or 2 * len(self.attacks) + 6
