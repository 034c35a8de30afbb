"""What every task's search shares: the seams it works through and the daemon's one config."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from mlmaster_daemon.bus import EventBus
from mlmaster_daemon.clock import Clock, SystemClock
from mlmaster_daemon.coders.protocol import Coder, Reviewer
from mlmaster_daemon.config import Settings
from mlmaster_daemon.execution.executor import Executor
from mlmaster_daemon.scheduler.storage import SearchStore
from mlmaster_daemon.search.tokens import TokenCounter


@dataclass
class SearchParts:
    """`settings.config` is read when a value is needed, never copied: a reload swaps it."""

    store: SearchStore
    bus: EventBus
    coder: Coder
    executor: Executor
    settings: Settings
    state_dir: Path
    counter: TokenCounter
    # The feedback model (judge, phase summaries), when one is configured.
    reviewer: Reviewer | None = None
    clock: Clock = field(default_factory=SystemClock)
