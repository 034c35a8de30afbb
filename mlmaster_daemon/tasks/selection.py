"""The final-selection rule: which working node's submission a task hands in, chosen by its
validation score, its hidden-holdout score, or the mean of both, with one sentence saying why."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

__all__ = ["Candidate", "Choice", "Rule", "by_holdout", "choose", "number_text"]


class Rule(StrEnum):
    """What the final choice is ranked by."""

    VALIDATION = "validation"
    HOLDOUT = "holdout"
    # The mean of validation and holdout: both are the task's metric, in its direction.
    HOLDOUT_CV = "holdout+cv"


@dataclass(frozen=True)
class Candidate:
    """A working node's scores; `holdout` is None when its submission had no holdout score."""

    node_id: int
    validation: float
    holdout: float | None


@dataclass(frozen=True)
class Choice:
    """The node handed in, the rule that chose it and one sentence a user reads."""

    node_id: int
    rule: Rule
    reason: str


def number_text(value: float) -> str:
    """A score for a sentence: four decimals, or four significant digits below 0.001 so a
    tiny loss does not read as 0.0000."""
    if value == 0 or abs(value) >= 1e-3 or not math.isfinite(value):
        return f"{value:.4f}"
    return f"{value:.4g}"


def _holdout(candidate: Candidate) -> float | None:
    """The holdout score, None when it is missing or not finite."""
    value = candidate.holdout
    return value if value is not None and math.isfinite(value) else None


def _rank_key(value: float, node_id: int, lower_is_better: bool) -> tuple[int, float, int]:
    """Best first; a score that is not finite ranks last, ties go to the lower node id."""
    if not math.isfinite(value):
        return (1, 0.0, node_id)
    return (0, value if lower_is_better else -value, node_id)


def by_holdout(candidates: Sequence[Candidate], lower_is_better: bool) -> list[Candidate]:
    """The candidates with a (finite) holdout score, best first. A small holdout ties often
    (an AUC on 40 rows takes few values): ties go to the better validation score, then to
    the lower node id."""
    scored = [(value, c) for c in candidates if (value := _holdout(c)) is not None]
    scored.sort(key=lambda pair: (_rank_key(pair[0], 0, lower_is_better),
                                  _rank_key(pair[1].validation, pair[1].node_id,
                                            lower_is_better)))
    return [c for _, c in scored]


def _by_validation(candidates: Sequence[Candidate], lower_is_better: bool) -> Candidate:
    return min(candidates, key=lambda c: _rank_key(c.validation, c.node_id, lower_is_better))


def _by_mean(candidates: Sequence[Candidate], lower_is_better: bool) -> Candidate:
    return min(candidates, key=lambda c: _rank_key(_mean(c), c.node_id, lower_is_better))


def _mean(candidate: Candidate) -> float:
    holdout = _holdout(candidate)
    assert holdout is not None
    return (candidate.validation + holdout) / 2


def _nodes(count: int) -> str:
    return f"{count} working node" + ("" if count == 1 else "s")


def _compared(scored: int, total: int) -> str:
    if scored == total:
        return _nodes(total)
    return f"the {scored} of {_nodes(total)} with a holdout score"


def _against(validation_best: Candidate, chosen: Candidate) -> str:
    """What the node best by validation scored, when the rule chose another."""
    if chosen.node_id == validation_best.node_id:
        return ""
    holdout = _holdout(validation_best)
    scored = ("has no holdout score" if holdout is None
              else f"scored {number_text(holdout)} on the holdout")
    return (f"; node {validation_best.node_id}, best by validation "
            f"({number_text(validation_best.validation)}), {scored}")


def choose(candidates: Sequence[Candidate], rule: Rule, lower_is_better: bool) -> Choice | None:
    """The node `rule` hands in among `candidates` (the working nodes), None when there are
    none. HOLDOUT and HOLDOUT_CV rank only the nodes with a holdout score and fall back to
    validation, saying so, when no node has one. Equal holdout scores go to the better
    validation score; other ties to the lower node id."""
    if not candidates:
        return None
    total = len(candidates)
    validation_best = _by_validation(candidates, lower_is_better)
    scored = by_holdout(candidates, lower_is_better)
    if rule is Rule.VALIDATION or not scored:
        chosen = validation_best
        holdout = _holdout(chosen)
        extra = "" if holdout is None else f" (holdout {number_text(holdout)})"
        reason = (f"node {chosen.node_id} has the best validation score, "
                  f"{number_text(chosen.validation)}, of {_nodes(total)}{extra}")
        if rule is not Rule.VALIDATION:
            reason = f"no working node has a holdout score, so {reason}"
        return Choice(chosen.node_id, rule, reason)
    if rule is Rule.HOLDOUT:
        chosen = scored[0]
        holdout = _holdout(chosen)
        assert holdout is not None
        reason = (f"node {chosen.node_id} has the best holdout score, "
                  f"{number_text(holdout)}, of "
                  f"{_compared(len(scored), total)} "
                  f"(validation {number_text(chosen.validation)})")
    else:
        chosen = _by_mean(scored, lower_is_better)
        holdout = _holdout(chosen)
        assert holdout is not None
        reason = (f"node {chosen.node_id} has the best mean of validation and holdout, "
                  f"{number_text(_mean(chosen))}, of {_compared(len(scored), total)} "
                  f"(validation {number_text(chosen.validation)}, "
                  f"holdout {number_text(holdout)})")
    return Choice(chosen.node_id, rule, reason + _against(validation_best, chosen))
