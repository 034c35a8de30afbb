"""What every search policy offers the scheduler, and how one is chosen by name.

A policy decides which expansion comes next (`select`), is told when the expansion's node
exists (`add`), when it finished (`complete`) or could not finish (`abort`), and can be saved
and restored exactly (`to_state` / `from_state`). It does no I/O and reads no clock; its
randomness is a `random.Random` whose state is part of the saved state.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Generic, Protocol, Self, TypeVar

from mlmaster_daemon.models import Operator
from mlmaster_daemon.search.tree import ROOT, Tree, TreeNode


class PickReason(StrEnum):
    """Why a policy chose an expansion; the API shows it on the node the pick made."""

    # MCTS: the root still had a draft slot.
    DRAFT = "draft"
    # MCTS: the parent was reached by UCT from the root.
    UCT = "uct"
    # MCTS: the worker's chain went on from the node it just made (greedy continuation).
    CONTINUATION = "continuation"
    # A buggy node's repair: MCTS's chain went on debugging, or another policy chose it.
    DEBUG = "debug"
    # MCTS: a blend (crossover) of the best node and the best of another draft's subtree.
    BLEND = "blend"
    # Greedy: the best working node; evolutionary: a parent chosen by tournament.
    BEST = "best"
    TOURNAMENT = "tournament"


@dataclass(frozen=True)
class Pick:
    """One expansion to make: `operator` applied to `parent_ids` (empty for a draft).

    `path` lists the nodes holding this pick's virtual loss; `chain` names the MCTS worker
    chain the pick belongs to (None for other policies); `reason` says why it was chosen.
    """

    operator: Operator
    parent_ids: tuple[int, ...] = ()
    path: tuple[int, ...] = ()
    chain: int | None = None
    # Informational: two picks of the same expansion are equal whatever their reasons.
    reason: PickReason | None = field(default=None, compare=False)

    @property
    def parent_id(self) -> int:
        return self.parent_ids[0] if self.parent_ids else ROOT

    def to_state(self) -> list[Any]:
        return [self.operator.value, list(self.parent_ids), list(self.path), self.chain,
                None if self.reason is None else self.reason.value]

    @classmethod
    def from_state(cls, raw: list[Any]) -> Pick:
        # Picks saved before reasons were kept have 4 fields.
        reason = PickReason(raw[4]) if len(raw) > 4 and raw[4] else None
        return cls(Operator(raw[0]), tuple(raw[1]), tuple(raw[2]), raw[3], reason)


class Policy(Protocol):
    name: str
    tree: Tree

    def select(self) -> Pick | None:
        """The next expansion, with its reservations made; None when nothing can be picked
        until an expansion in flight finishes (or ever)."""
        ...

    def add(self, node_id: int, pick: Pick) -> TreeNode:
        """Create the pending node for a pick returned by `select`."""
        ...

    def complete(self, node_id: int, pick: Pick, metric: float | None,
                 folds: tuple[float, ...] = ()) -> list[TreeNode]:
        """Record a finished node (metric None = buggy or invalid; `folds` its per-fold
        metrics when known); returns the nodes whose visits, value or UCT score changed since
        the last call."""
        ...

    def abort(self, node_id: int | None, pick: Pick) -> None:
        """Undo a pick whose expansion failed: its node (if added) leaves the tree and every
        reservation it held is released."""
        ...

    def to_state(self, nodes: bool = True) -> dict[str, Any]:
        """JSON-ready saved state; with `nodes` False the tree's nodes are left out (they are
        saved apart, as rows: `Tree.take_unsaved`)."""
        ...


def rng_state(rng: random.Random) -> list[Any]:
    """A JSON-ready form of the generator's state, for a policy's `to_state`."""
    version, internal, gauss = rng.getstate()
    return [version, list(internal), gauss]


def rng_from(raw: list[Any]) -> random.Random:
    """The generator `rng_state` saved, continuing exactly where it was."""
    rng = random.Random()
    rng.setstate((raw[0], tuple(raw[1]), raw[2]))
    return rng


P = TypeVar("P")


class TreePolicy(Generic[P]):
    """What every policy here holds, and the part of its saved state that holds it: its params,
    the metric direction, the step budget, its random generator and the tree.

    A policy's `to_state` passes its own keys to `_state`; its `from_state` starts from
    `_restored` and then restores those keys.
    """

    name: str

    def __init__(self, params: P, lower_is_better: bool, steps: int,
                 rng: random.Random | None = None):
        self.params = params
        self.lower_is_better = lower_is_better
        self.steps = steps
        self.rng = rng or random.Random(0)
        self.tree = Tree()

    def _state(self, own: dict[str, Any], nodes: bool = True) -> dict[str, Any]:
        """The JSON-ready saved state: the shared keys with the policy's `own` keys between the
        tree and the generator (the key order is part of the stored format)."""
        return {
            "policy": self.name,
            "steps": self.steps,
            "lower_is_better": self.lower_is_better,
            "tree": self.tree.to_state(nodes),
            **own,
            "rng": rng_state(self.rng),
        }

    @classmethod
    def _restored(cls, params: P, raw: dict[str, Any]) -> Self:
        """A policy with the shared part of `raw` restored (its own part is the caller's);
        raises ValueError for another policy's state."""
        if raw.get("policy") != cls.name:
            raise ValueError(f"state of policy {raw.get('policy')!r}, not {cls.name!r}")
        policy = cls(params, raw["lower_is_better"], raw["steps"], rng_from(raw["rng"]))
        policy.tree = Tree.from_state(raw["tree"])
        return policy
