"""The residency scoring, on explicit numbers."""

from __future__ import annotations

import math

import pytest

from edged.portfolio.scoring import (
    DecayedRate,
    Option,
    Resident,
    ScoringWeights,
    downgrade_loss,
    evict_loss,
    plan,
)

MB = 10**6
W = ScoringWeights(horizon_seconds=300, latency_weight=1.0, quality_weight=10.0)


def resident(
    model: str,
    predicted: float,
    *,
    big: Option,
    small: tuple[Option, ...] = (),
    pinned: bool = False,
    busy: bool = False,
) -> Resident:
    return Resident(model, big, small, predicted, pinned=pinned, busy=busy)


def test_decayed_rate_halves_over_a_half_life() -> None:
    rate = DecayedRate(half_life=60)
    for t in range(10):
        rate.observe(float(t))
    assert rate.count(9.0) == pytest.approx(sum(0.5 ** ((9 - t) / 60) for t in range(10)))
    assert rate.count(69.0) == pytest.approx(rate.count(9.0) / 2)
    assert rate.rate(9.0) == pytest.approx(rate.count(9.0) * math.log(2) / 60)
    assert DecayedRate(60).rate(100.0) == 0.0


def test_downgrade_beats_eviction() -> None:
    # A busy model: 10 requests expected. fp32 100 MB quality 1.00 (0.5 s to load);
    # int8 25 MB quality 0.97. 60 MB must be freed.
    a = resident(
        "a", 10, big=Option("fp32", 100 * MB, 1.0, 0.5), small=(Option("int8", 25 * MB, 0.97, 0.2),)
    )
    assert evict_loss(a, W) == pytest.approx(10 * (0.5 * 1.0 + 1.0 * 10))  # 105
    assert downgrade_loss(a, a.smaller[0], W) == pytest.approx(10 * 0.03 * 10)  # 3
    actions = plan([a], 60 * MB, W)
    assert actions is not None and len(actions) == 1
    assert (actions[0].kind, actions[0].to, actions[0].freed) == ("downgrade", "int8", 75 * MB)


def test_evicting_an_idle_model_beats_downgrading_a_busy_one() -> None:
    # For one model alone a downgrade never costs more than its eviction (the eviction loses
    # the whole quality, the downgrade only the difference). Eviction wins when another model
    # is cheaper to lose: here an idle one (0.01 requests expected).
    # downgrade busy: 10 * 0.03 * 10     = 3.0   for 75 MB
    # evict idle:     0.01 * (0.5 + 10)  = 0.105 for 100 MB
    busy = resident(
        "busy",
        10,
        big=Option("fp32", 100 * MB, 1.0, 0.5),
        small=(Option("int8", 25 * MB, 0.97, 0.2),),
    )
    idle = resident("idle", 0.01, big=Option("fp32", 100 * MB, 1.0, 0.5))
    actions = plan([busy, idle], 60 * MB, W)
    assert actions is not None
    assert [(x.kind, x.model) for x in actions] == [("evict", "idle")]


def test_when_both_suffice_the_smaller_total_loss_wins() -> None:
    # Alone, with 60 MB to free: evict loses 0.525, downgrade (to a poor int8) 0.4.
    a = resident(
        "a",
        0.05,
        big=Option("fp32", 100 * MB, 1.0, 0.5),
        small=(Option("int8", 25 * MB, 0.2, 0.2),),
    )
    actions = plan([a], 60 * MB, W)
    assert actions is not None
    assert [(x.kind, x.loss) for x in actions] == [("downgrade", pytest.approx(0.4))]
    # With 80 MB to free the downgrade (75 MB) is not enough: evict.
    actions = plan([a], 80 * MB, W)
    assert actions is not None and [x.kind for x in actions] == ["evict"]


def test_the_idle_model_leaves_before_the_busy_one() -> None:
    busy = resident("busy", 50, big=Option("fp32", 100 * MB, 1.0, 0.5))
    idle = resident("idle", 0.01, big=Option("fp32", 100 * MB, 1.0, 0.5))
    actions = plan([busy, idle], 80 * MB, W)
    assert actions is not None and [a.model for a in actions] == ["idle"]


def test_a_downgrade_that_frees_too_little_is_not_enough() -> None:
    a = resident(
        "a", 10, big=Option("fp32", 100 * MB, 1.0, 0.5), small=(Option("int8", 90 * MB, 0.97, 0.2),)
    )
    actions = plan([a], 50 * MB, W)
    assert actions is not None and [x.kind for x in actions] == ["evict"]


def test_pinned_and_busy_variants_never_leave() -> None:
    pinned = resident("p", 0.0, big=Option("fp32", 100 * MB, 1.0, 0.5), pinned=True)
    busy = resident("b", 0.0, big=Option("fp32", 100 * MB, 1.0, 0.5), busy=True)
    assert plan([pinned, busy], 1, W) is None
    free = resident("f", 5.0, big=Option("fp32", 10 * MB, 1.0, 0.5))
    actions = plan([pinned, busy, free], 5 * MB, W)
    assert actions is not None and [a.model for a in actions] == ["f"]


def test_nothing_to_free() -> None:
    assert plan([], 0, W) == []
    assert plan([], -5, W) == []
