"""The final-selection rule: the node a task hands in by validation, by holdout or by their
mean, and the sentence that says why."""

from __future__ import annotations

import math

import pytest

from mlmaster_daemon.tasks.selection import Candidate, Choice, Rule, by_holdout, choose


def nodes(*scores: tuple[float, float | None]) -> list[Candidate]:
    """Candidates numbered from 1 in the order given."""
    return [Candidate(i, validation, holdout)
            for i, (validation, holdout) in enumerate(scores, start=1)]


def chosen(candidates: list[Candidate], rule: Rule, lower: bool = False) -> Choice:
    choice = choose(candidates, rule, lower)
    assert choice is not None
    assert choice.rule is rule
    return choice


# Node 2 overfits: the best validation by far, the worst holdout.
OVERFIT = nodes((0.80, 0.79), (0.95, 0.60), (0.82, 0.81), (0.78, 0.80))


def test_no_candidates_choose_nothing() -> None:
    for rule in Rule:
        assert choose([], rule, lower_is_better=False) is None


def test_validation_picks_the_best_validation_even_when_it_overfits() -> None:
    assert chosen(OVERFIT, Rule.VALIDATION).node_id == 2


@pytest.mark.parametrize("rule", [Rule.HOLDOUT, Rule.HOLDOUT_CV])
def test_holdout_rules_pass_over_the_overfitting_node(rule: Rule) -> None:
    assert chosen(OVERFIT, rule).node_id == 3


def test_holdout_picks_the_best_holdout() -> None:
    candidates = nodes((0.80, 0.70), (0.70, 0.79), (0.75, 0.78))
    assert chosen(candidates, Rule.HOLDOUT).node_id == 2


def test_holdout_cv_picks_the_best_mean_not_the_best_holdout() -> None:
    # Means 0.80, 0.795, 0.795: node 1 has the best mean, node 2 the best holdout.
    candidates = nodes((0.90, 0.70), (0.70, 0.89), (0.80, 0.79))
    assert chosen(candidates, Rule.HOLDOUT).node_id == 2
    assert chosen(candidates, Rule.HOLDOUT_CV).node_id == 1


def test_lower_is_better_reverses_every_rule() -> None:
    candidates = nodes((0.30, 0.50), (0.40, 0.20), (0.35, 0.30))
    assert chosen(candidates, Rule.VALIDATION, lower=True).node_id == 1
    assert chosen(candidates, Rule.HOLDOUT, lower=True).node_id == 2
    # Means 0.40, 0.30, 0.325.
    assert chosen(candidates, Rule.HOLDOUT_CV, lower=True).node_id == 2


@pytest.mark.parametrize("rule", list(Rule))
def test_ties_go_to_the_lower_node_id(rule: Rule) -> None:
    candidates = [Candidate(9, 0.8, 0.7), Candidate(4, 0.8, 0.7), Candidate(6, 0.8, 0.7)]
    assert chosen(candidates, rule).node_id == 4


@pytest.mark.parametrize("rule", [Rule.HOLDOUT, Rule.HOLDOUT_CV])
def test_without_any_holdout_score_the_rules_fall_back_to_validation_and_say_so(
        rule: Rule) -> None:
    choice = chosen(nodes((0.70, None), (0.90, None), (0.80, None)), rule)
    assert choice.node_id == 2
    assert choice.reason == ("no working node has a holdout score, so node 2 has the best "
                             "validation score, 0.9000, of 3 working nodes")


@pytest.mark.parametrize("rule", [Rule.HOLDOUT, Rule.HOLDOUT_CV])
def test_nodes_without_a_holdout_score_are_not_ranked_by_it(rule: Rule) -> None:
    choice = chosen(nodes((0.99, None), (0.80, 0.75), (0.85, 0.78)), rule)
    assert choice.node_id == 3
    assert "the 2 of 3 working nodes with a holdout score" in choice.reason
    assert "node 1, best by validation (0.9900), has no holdout score" in choice.reason


@pytest.mark.parametrize("rule", [Rule.HOLDOUT, Rule.HOLDOUT_CV])
def test_a_holdout_score_that_is_not_finite_counts_as_none(rule: Rule) -> None:
    candidates = [Candidate(1, 0.8, math.nan), Candidate(2, 0.7, 0.6),
                  Candidate(3, 0.6, math.inf)]
    assert [c.node_id for c in by_holdout(candidates, lower_is_better=False)] == [2]
    assert chosen(candidates, rule).node_id == 2


def test_the_reason_names_the_validation_best_node_and_its_holdout_score() -> None:
    choice = chosen(OVERFIT, Rule.HOLDOUT)
    assert choice.reason == (
        "node 3 has the best holdout score, 0.8100, of 4 working nodes (validation 0.8200); "
        "node 2, best by validation (0.9500), scored 0.6000 on the holdout")


def test_the_holdout_cv_reason_gives_the_mean_and_both_scores() -> None:
    choice = chosen(OVERFIT, Rule.HOLDOUT_CV)
    assert choice.reason == (
        "node 3 has the best mean of validation and holdout, 0.8150, of 4 working nodes "
        "(validation 0.8200, holdout 0.8100); node 2, best by validation (0.9500), scored "
        "0.6000 on the holdout")


def test_the_reason_names_no_other_node_when_validation_agrees() -> None:
    candidates = nodes((0.90, 0.85), (0.80, 0.80))
    for rule in Rule:
        choice = chosen(candidates, rule)
        assert choice.node_id == 1
        assert "node 2" not in choice.reason and "best by validation" not in choice.reason
    assert chosen(candidates, Rule.VALIDATION).reason == (
        "node 1 has the best validation score, 0.9000, of 2 working nodes (holdout 0.8500)")


def test_a_tiny_loss_keeps_its_significant_digits() -> None:
    choice = chosen([Candidate(5, 0.000012345, 0.00002)], Rule.HOLDOUT, lower=True)
    assert choice.reason == ("node 5 has the best holdout score, 2e-05, of 1 working node "
                             "(validation 1.234e-05)")


def test_by_holdout_orders_best_first_with_ties_by_validation_then_node_id() -> None:
    candidates = [Candidate(5, 0.1, 0.7), Candidate(2, 0.2, None), Candidate(3, 0.3, 0.9),
                  Candidate(1, 0.4, 0.7), Candidate(4, 0.4, 0.7)]
    # Equal holdout scores: the better validation first (0.4 up, 0.1 down), then the lower id.
    assert [c.node_id for c in by_holdout(candidates, lower_is_better=False)] == [3, 1, 4, 5]
    assert [c.node_id for c in by_holdout(candidates, lower_is_better=True)] == [5, 1, 4, 3]


def test_a_holdout_tie_is_chosen_by_validation() -> None:
    candidates = [Candidate(1, 0.90, 0.95), Candidate(2, 0.97, 0.95), Candidate(3, 0.99, 0.80)]
    choice = chosen(candidates, Rule.HOLDOUT, lower=False)
    assert choice.node_id == 2
