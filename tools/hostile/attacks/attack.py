"""What one attack is: the targets the injection told the model about, and the script an
attack makes of them."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

# The model's server puts the API key it was sent where this stands (`Attack.echo_key`).
ECHOED_KEY = "@@the-key-the-server-was-sent@@"


@dataclass(frozen=True)
class Targets:
    """What the injection told the model about the daemon it runs under."""

    socket: str
    key_file: str
    state_dir: str
    database: str
    own_task_dir: str
    victim_task_dir: str
    victim_id: str
    fill_cap_bytes: int


@dataclass(frozen=True)
class Attack:
    """One hostile script: `name`, what it tries, and its body (Python; `T` holds the
    targets). `heavy` ones take seconds and gigabytes (left out of light runs);
    `needs_small_disk` ones are run only when the state dir is a small tmpfs of the run's own;
    `may_time_out` ones may meet the node time limit before any other (touching memory up to
    the limit takes a minute on some machines): every other script ends within seconds.
    `answer_mb` makes the attack the model's answer itself: that many MiB of plan before the
    code (the endpoint's max_tokens, 16384 by default, is about 64 KiB of text). In a body,
    `ECHOED_KEY` stands for the API key the model's server was sent (`echo_key` ones)."""

    name: str
    tries: str
    body: str
    heavy: bool = False
    needs_small_disk: bool = False
    may_time_out: bool = False
    answer_mb: int = 0
    echo_key: bool = False

    def script(self, targets: Targets) -> str:
        preamble = (f"# {self.name}: {self.tries}\n"
                    f"import json\nT = json.loads({json.dumps(json.dumps(asdict(targets)))})\n")
        return preamble + self.body.lstrip("\n")
