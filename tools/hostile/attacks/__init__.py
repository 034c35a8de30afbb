"""The scripts a prompt-injected model hands the daemon in a hostile run, each a real attack
on the daemon, its secrets, another task or the machine, and their catalogue `ATTACKS`.

A script is a preamble holding what the injection told the model (`Targets`: the API socket,
the key file, the state dir, both task folders, the victim's id) followed by the attack's
body. Every attack prints what it got on lines starting `HOSTILE <name>:`, so anything it
managed to read ends in its output, where the run's leak scan looks. A few attacks are the
model's answer itself (`Attack.answer_mb`, `Attack.echo_key`).

Nothing here may hurt the machine when a defence fails (see `machine`). A defence that failed
shows in the script's own words ("never refused", "stopped myself").
"""

from __future__ import annotations

from tools.hostile.attacks.answers import ECHO_KEY, HUGE_ANSWER, SURROGATE
from tools.hostile.attacks.attack import ECHOED_KEY, Attack, Targets
from tools.hostile.attacks.machine import (
    DISK_FILLER,
    ESCAPEE,
    FORK_BOMB,
    IMMORTAL,
    KILL_PARENT,
    MEMORY_HOG,
)
from tools.hostile.attacks.outputs import (
    FIFO_LOGS,
    FILE_SWARM,
    HUGE_METRICS,
    LOCKOUT,
    METRIC_DIGITS,
    METRIC_OVERFLOW,
    SOCKET_LOGS,
    SPARSE_STDERR,
    SUBMISSION_LINK,
)
from tools.hostile.attacks.trespass import API, LOGS_TO_SECRETS, READ_SECRETS, TRAP

__all__ = ["ATTACKS", "ATTACKS_BY_NAME", "ECHOED_KEY", "Attack", "Targets"]

# The heavy ones last: a disk filler that the daemon does not recover from stalls the attacker
# task, and every attack after it would never run.
ATTACKS: tuple[Attack, ...] = (
    SPARSE_STDERR, LOGS_TO_SECRETS, READ_SECRETS, API, FORK_BOMB, FIFO_LOGS, SUBMISSION_LINK,
    HUGE_METRICS, METRIC_OVERFLOW, METRIC_DIGITS, KILL_PARENT, ESCAPEE, FILE_SWARM, TRAP,
    SOCKET_LOGS, LOCKOUT, HUGE_ANSWER, SURROGATE, ECHO_KEY, IMMORTAL, MEMORY_HOG, DISK_FILLER,
)
ATTACKS_BY_NAME = {attack.name: attack for attack in ATTACKS}
