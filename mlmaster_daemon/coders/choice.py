"""Which coder the daemon writes code with: a model when `[llm.code]` is configured, else the
built-in offline coder."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mlmaster_daemon.coders.offline.coder import OfflineCoder
from mlmaster_daemon.coders.protocol import Coder, Reviewer
from mlmaster_daemon.config import Settings

if TYPE_CHECKING:
    from mlmaster_daemon.coders.llm.coder import LlmCoder


@dataclass
class Coders:
    """The coder, the reviewer (judge and phase summaries; none offline), and the model-backed
    coder behind them when there is one (its endpoints: status, probes, hardware line)."""

    coder: Coder
    reviewer: Reviewer | None = None
    llm: LlmCoder | None = None

    async def probe(self) -> list[str]:
        """Probe each configured endpoint once; the problems found."""
        if self.llm is None:
            return []
        problems = []
        for endpoint in self.llm.endpoints:
            error = await endpoint.probe()
            if error is not None:
                problems.append(f"{endpoint.label}: {error}")
        return problems

    def status(self) -> list[dict[str, Any]]:
        if self.llm is None:
            return [{"role": "code", "coder": "offline"}]
        return [e.status() for e in self.llm.endpoints]

    def detected_hardware(self, line: str) -> None:
        """What the prompts say about a node's hardware, from the daemon's slots."""
        if self.llm is not None:
            self.llm.detected_hardware = line

    async def close(self) -> None:
        if self.llm is not None:
            await self.llm.close()


def make_coders(settings: Settings) -> Coders:
    """API keys are read here, from the environment or a file, and kept only in the clients."""
    config = settings.config
    code = config.llm.code
    if code is None:
        return Coders(OfflineCoder(seed=config.coder.seed))
    # The OpenAI client is loaded only when a model is configured.
    from mlmaster_daemon.coders.llm.coder import LlmCoder
    from mlmaster_daemon.coders.llm.endpoint import Endpoint, read_api_key

    feedback = config.llm.feedback
    llm = LlmCoder(
        Endpoint("code", code, read_api_key(code, "llm.code")),
        settings,
        Endpoint("feedback", feedback, read_api_key(feedback, "llm.feedback"))
        if feedback is not None else None,
    )
    return Coders(llm, llm, llm)
