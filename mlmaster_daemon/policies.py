"""Choosing a search policy by name and building it from the [search] config."""

from __future__ import annotations

import random
from typing import Any

from mlmaster_daemon.config import SearchConfig
from mlmaster_daemon.errors import InvalidRequest
from mlmaster_daemon.search.mcts import MctsParams, MctsPolicy
from mlmaster_daemon.search.policy import Policy
from mlmaster_daemon.search.uct import Decay

POLICIES = ("mcts", "greedy", "evolutionary")


def check_policy(name: str) -> str:
    if name not in POLICIES:
        raise InvalidRequest(f"unknown policy {name!r}; available: {', '.join(POLICIES)}")
    return name


def mcts_params(search: SearchConfig) -> MctsParams:
    return MctsParams(
        num_drafts=search.num_drafts,
        num_improves=search.num_improves,
        back_debug_depth=search.back_debug_depth,
        max_debug_depth=search.max_debug_depth,
        max_improve_failure=search.max_improve_failure,
        improve_threshold=search.improve_threshold,
        threshold_mode=search.threshold_mode,
        buggy_penalty=search.buggy_penalty,
        decay=Decay(kind=search.decay, c_start=search.exploration_constant,
                    c_end=search.exploration_min, gamma=search.decay_gamma),
    )


def _params(name: str, search: SearchConfig) -> Any:
    if name == "greedy":
        from mlmaster_daemon.search.greedy import GreedyParams

        return GreedyParams(num_drafts=search.num_drafts, **search.greedy.model_dump())
    if name == "evolutionary":
        from mlmaster_daemon.search.evolutionary import EvoParams

        return EvoParams(**search.evolutionary.model_dump())
    return mcts_params(search)


def _policy_class(name: str) -> Any:
    if name == "greedy":
        from mlmaster_daemon.search.greedy import GreedyPolicy

        return GreedyPolicy
    if name == "evolutionary":
        from mlmaster_daemon.search.evolutionary import EvolutionaryPolicy

        return EvolutionaryPolicy
    return MctsPolicy


def make_policy(name: str, search: SearchConfig, lower_is_better: bool, steps: int,
                seed: int) -> Policy:
    """A fresh policy for a new task; `seed` makes its random choices reproducible."""
    cls = _policy_class(check_policy(name))
    policy: Policy = cls(_params(name, search), lower_is_better, steps, random.Random(seed))
    return policy


def restore_policy(name: str, search: SearchConfig, state: dict[str, Any]) -> Policy:
    """The policy exactly as it was saved."""
    cls = _policy_class(check_policy(name))
    policy: Policy = cls.from_state(_params(name, search), state)
    return policy
