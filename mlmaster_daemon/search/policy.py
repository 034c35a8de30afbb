"""What every search policy offers the scheduler, and how one is chosen by name.

A policy decides which expansion comes next (`select`), is told when the expansion's node
exists (`add`), when it finished (`complete`) or could not finish (`abort`), and can be saved
and restored exactly (`to_state` / `from_state`). It does no I/O and reads no clock; its
randomness is a `random.Random` whose state is part of the saved state.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Protocol

from mlmaster_daemon.models import Operator
from mlmaster_daemon.search.tree import ROOT, Tree, TreeNode


@dataclass(frozen=True)
class Pick:
    """One expansion to make: `operator` applied to `parent_ids` (empty for a draft).

    `path` lists the nodes holding this pick's virtual loss; `chain` names the MCTS worker
    chain the pick belongs to (None for other policies).
    """

    operator: Operator
    parent_ids: tuple[int, ...] = ()
    path: tuple[int, ...] = ()
    chain: int | None = None

    @property
    def parent_id(self) -> int:
        return self.parent_ids[0] if self.parent_ids else ROOT

    def to_state(self) -> list[Any]:
        return [self.operator.value, list(self.parent_ids), list(self.path), self.chain]

    @classmethod
    def from_state(cls, raw: list[Any]) -> Pick:
        return cls(Operator(raw[0]), tuple(raw[1]), tuple(raw[2]), raw[3])


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

    def complete(self, node_id: int, pick: Pick, metric: float | None) -> list[TreeNode]:
        """Record a finished node (metric None = buggy or invalid); returns the nodes whose
        visits/value changed."""
        ...

    def abort(self, node_id: int | None, pick: Pick) -> None:
        """Undo a pick whose expansion failed: its node (if added) leaves the tree and every
        reservation it held is released."""
        ...

    def to_state(self) -> dict[str, Any]: ...


def rng_state(rng: random.Random) -> list[Any]:
    """A JSON-ready form of the generator's state, for a policy's `to_state`."""
    version, internal, gauss = rng.getstate()
    return [version, list(internal), gauss]


def rng_from(raw: list[Any]) -> random.Random:
    """The generator `rng_state` saved, continuing exactly where it was."""
    rng = random.Random()
    rng.setstate((raw[0], tuple(raw[1]), raw[2]))
    return rng
