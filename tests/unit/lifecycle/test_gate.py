"""The latency gate's verdict on measured numbers."""

from __future__ import annotations

from edged.lifecycle.gate import decide
from edged.lifecycle.statistics import Outcome
from edged.store.manifest import LatencyBudget

BUDGET = LatencyBudget(2.0, 4.0, 6.0)


def test_within_budget_passes() -> None:
    result = decide(BUDGET, None, [1.0] * 40, [], 30, 1.0)
    assert result.outcome is Outcome.PASS
    assert result.figures()["gate_p99_ms"] == 1.0


def test_over_budget_fails_naming_the_measured_figure_and_the_budget() -> None:
    result = decide(BUDGET, None, [1.0] * 490 + [9.0] * 10, [], 30, 1.0)
    assert result.outcome is Outcome.FAIL
    assert "measured p99 9.00 ms over its budget 6.00 ms" in result.reason
    assert "budget p50 2 / p95 4 / p99 6 ms" in result.reason


def test_a_tail_is_judged_only_from_enough_runs() -> None:
    """The p99 of 40 runs is their maximum: one stall over the budget is not judged; the same
    share of slow runs among 500 is."""
    assert decide(BUDGET, None, [1.0] * 39 + [9.0], [], 30, 1.0).outcome is Outcome.PASS
    slow_tail = [1.0] * 490 + [9.0] * 10
    assert decide(BUDGET, None, slow_tail, [], 30, 1.0).outcome is Outcome.FAIL


def test_a_slow_machine_measured_on_the_serving_version_widens_the_allowance() -> None:
    """The serving version measures twice its own budget beside the candidate: the machine is
    busy, and the candidate is allowed twice its budget too (but not more)."""
    incumbent_budget = LatencyBudget(1.0, 2.0, 3.0)
    busy = [2.0] * 35 + [6.0] * 5
    candidate = [3.5] * 35 + [11.0] * 5
    result = decide(BUDGET, incumbent_budget, candidate, busy, 30, 1.0)
    assert result.outcome is Outcome.PASS, result.reason
    assert "machine slowdown x2.00 allowed" in result.reason
    too_slow = [6.0] * 40  # 3x the serving version's pace where its budget allows 2x
    assert decide(BUDGET, incumbent_budget, too_slow, busy, 30, 1.0).outcome is Outcome.FAIL


def test_a_tail_just_over_budget_but_at_the_serving_versions_pace_is_noise() -> None:
    """Same budgets, a busy machine: the candidate's p95 lands over its budget and 20% over the
    serving version's (chance, in two sets of runs); it is not a failure. 40% over is."""
    same = LatencyBudget(2.0, 4.0, 6.0)
    incumbent = [1.9] * 180 + [3.8] * 20
    noisy = [1.9] * 180 + [4.5] * 20
    assert decide(same, same, noisy, incumbent, 30, 1.0).outcome is Outcome.PASS
    slower = [1.9] * 180 + [5.4] * 20
    assert decide(same, same, slower, incumbent, 30, 1.0).outcome is Outcome.FAIL


def test_too_few_runs_is_inconclusive_and_no_budget_passes_with_figures() -> None:
    assert decide(BUDGET, None, [1.0] * 5, [], 30, 30.0).outcome is Outcome.INCONCLUSIVE
    result = decide(None, None, [1.0] * 40, [], 30, 1.0)
    assert result.outcome is Outcome.PASS and "no latency budget declared" in result.reason
