"""A task's budget, given `now`: active time only (paused time and downtime do not count), node
time limits cut to what is left, and token and cost caps."""

from __future__ import annotations

import pytest

from mlmaster_daemon.scheduler.budget import Budget


def test_a_restarted_task_carries_over_the_active_time_it_had_used() -> None:
    budget = Budget.start(now=1000.0, time_limit_s=100.0, active_s=40.0)
    assert budget.active_s(1000.0) == 40.0
    assert budget.left_s(1030.0) == 30.0
    assert not budget.expired(1059.0) and budget.expired(1060.0)


def test_time_paused_for_the_model_does_not_count() -> None:
    budget = Budget.start(now=0.0, time_limit_s=100.0, active_s=0.0)
    assert budget.pause(10.0)
    # A second expansion waiting too does not pause it again, and one coming back is not
    # enough to resume it.
    assert not budget.pause(20.0)
    assert budget.active_s(500.0) == 10.0
    assert not budget.unpause(30.0)
    assert budget.unpause(60.0)
    assert budget.active_s(60.0) == 10.0
    assert budget.left_s(60.0) == 90.0


def test_a_node_gets_its_own_limit_cut_to_what_the_task_has_left_but_at_least_a_second() -> None:
    budget = Budget.start(now=0.0, time_limit_s=100.0, active_s=0.0)
    assert budget.node_timeout(0.0, 600.0) == 100.0
    assert budget.node_timeout(50.0, 20.0) == 20.0
    assert budget.node_timeout(99.9, 20.0) == 1.0


@pytest.mark.parametrize(("tokens", "cost", "expected"), [
    (999, 0.5, None),
    (1000, 0.5, "token budget reached: 1000 of 1000"),
    (10, 2.0, "cost budget reached: $2.0000 of $2.0"),
])
def test_token_and_cost_caps_stop_generation_once_reached(
    tokens: int, cost: float, expected: str | None,
) -> None:
    budget = Budget(100.0, 100.0, max_tokens=1000, max_cost=2.0)
    assert budget.limits_usage
    assert budget.check_usage(tokens, cost) == expected
    # Once reached it stays reached.
    assert budget.check_usage(0, 0.0) == expected


def test_a_task_without_caps_never_runs_out_of_tokens() -> None:
    budget = Budget(100.0, 100.0)
    assert not budget.limits_usage and budget.check_usage(10**9, 10**6) is None
