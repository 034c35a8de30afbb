"""Choosing a search policy by name and building it from the [search] config."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any, Protocol

from mlmaster_daemon.config import SearchConfig
from mlmaster_daemon.errors import InvalidRequest
from mlmaster_daemon.search.evolutionary import EvolutionaryPolicy, EvoParams
from mlmaster_daemon.search.greedy import GreedyParams, GreedyPolicy
from mlmaster_daemon.search.mcts import MctsParams, MctsPolicy, ml_master_v1
from mlmaster_daemon.search.policy import Policy
from mlmaster_daemon.search.uct import Decay


class _PolicyClass(Protocol):
    """A policy class: built fresh for a new task, or restored from its saved state."""

    def __call__(self, params: Any, lower_is_better: bool, steps: int,
                 rng: random.Random) -> Policy: ...

    def from_state(self, params: Any, raw: dict[str, Any]) -> Policy: ...


def mcts_params(search: SearchConfig) -> MctsParams:
    params = MctsParams(
        num_drafts=search.num_drafts,
        num_improves=search.num_improves,
        back_debug_depth=search.back_debug_depth,
        max_debug_depth=search.max_debug_depth,
        max_improve_failure=search.max_improve_failure,
        improve_threshold=search.improve_threshold,
        threshold_mode=search.threshold_mode,
        backprop=search.backprop,
        max_chain_length=search.max_chain_length,
        noise_aware=search.noise_aware,
        blend_every=search.blend_every,
        buggy_penalty=search.buggy_penalty,
        decay=Decay(kind=search.decay, c_start=search.exploration_constant,
                    c_end=search.exploration_min, gamma=search.decay_gamma),
    )
    return ml_master_v1(params) if search.mcts_rule == "ml-master-v1" else params


def greedy_params(search: SearchConfig) -> GreedyParams:
    return GreedyParams(num_drafts=search.num_drafts, **search.greedy.model_dump())


def evolutionary_params(search: SearchConfig) -> EvoParams:
    return EvoParams(**search.evolutionary.model_dump())


# Every policy by name: its class, and how its params are read from the [search] config.
_POLICIES: dict[str, tuple[_PolicyClass, Callable[[SearchConfig], Any]]] = {
    "mcts": (MctsPolicy, mcts_params),
    "greedy": (GreedyPolicy, greedy_params),
    "evolutionary": (EvolutionaryPolicy, evolutionary_params),
}
POLICIES = tuple(_POLICIES)


def check_policy(name: str) -> str:
    if name not in POLICIES:
        raise InvalidRequest(f"unknown policy {name!r}; available: {', '.join(POLICIES)}")
    return name


def make_policy(name: str, search: SearchConfig, lower_is_better: bool, steps: int,
                seed: int) -> Policy:
    """A fresh policy for a new task; `seed` makes its random choices reproducible."""
    cls, params = _POLICIES[check_policy(name)]
    return cls(params(search), lower_is_better, steps, random.Random(seed))


def restore_policy(name: str, search: SearchConfig, state: dict[str, Any]) -> Policy:
    """The policy exactly as it was saved."""
    cls, params = _POLICIES[check_policy(name)]
    return cls.from_state(params(search), state)
