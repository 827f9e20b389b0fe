"""Forecasters on constructed histories with known answers, and the preload decision."""

from __future__ import annotations

import collections
import random
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edged.forecast.forecaster import Forecaster
from edged.forecast.history import Request, RequestHistory
from edged.forecast.idle import IdleSettings, IdleTimeHistogram
from edged.forecast.periodic import ExactPeriod
from edged.forecast.transitions import Transitions
from edged.portfolio.scoring import Option, Resident, ScoringWeights, preload_choice
from edged.settings import PreloadSettings
from edged.sim.baselines import LruPolicy
from edged.sim.edged_policy import EdgedPolicy

MINUTE = 60.0
DAY = 86400.0
W = ScoringWeights()
SMALL = Option("int8", 10_000_000, 0.96, 0.03)


def test_a_client_every_ten_minutes_finds_its_model_resident_at_minute_ten() -> None:
    # One model called every 10 minutes, amid other traffic that fills the memory.
    options = {
        "timer": [Option("fp32", 10_000_000, 1.0, 0.05)],
        "busy": [Option("fp32", 10_000_000, 1.0, 0.05)],
    }
    events = [(i * 10 * MINUTE, "timer") for i in range(12)]
    events += [(i * 10 * MINUTE + 5 * MINUTE + k, "busy") for i in range(12) for k in (0, 1)]
    events.sort()
    policy = EdgedPolicy(options, 10_000_000, preload=PreloadSettings())  # room for one model
    outcomes = {(t, m): policy.request(t, m) for t, m in events}
    # After a few periods the timer is recognised and its model is back before each call.
    late = [outcomes[(t, m)] for t, m in events if m == "timer" and t >= 6 * 10 * MINUTE]
    assert all(o.warm for o in late), late
    # Without preloading every timer call after the busy model ran is cold.
    plain = EdgedPolicy(options, 10_000_000)
    cold = [not plain.request(t, m).warm for t, m in events if True]
    assert sum(cold) > 12


def test_forecast_of_a_ten_minute_timer() -> None:
    f = Forecaster()
    for i in range(8):
        f.observe(i * 10 * MINUTE, "timer")
    last = 7 * 10 * MINUTE
    soon = f.forecast("timer", last + 10 * MINUTE - 20, horizon=30)
    assert soon.source == "period"
    assert soon.probability == 1.0
    assert soon.next_arrival == pytest.approx(last + 10 * MINUTE, abs=1.0)
    # Halfway between two calls, nothing is due within 30 s.
    assert f.forecast("timer", last + 5 * MINUTE, horizon=30).probability < 0.3


def test_in_a_pipeline_b_is_loaded_when_a_arrives() -> None:
    options = {m: [Option("fp32", 10_000_000, 1.0, 0.02)] for m in ("a", "b", "other")}
    events = []
    for i in range(40):
        t = i * 100.0
        events += [(t, "a"), (t + 0.15, "b"), (t + 50, "other")]
    policy = EdgedPolicy(options, 20_000_000, preload=PreloadSettings())  # two of three fit
    results = [(m, policy.request(t, m)) for t, m in sorted(events)]
    b_late = [o for m, o in results[-30:] if m == "b"]
    assert b_late and all(o.warm for o in b_late)
    assert policy.preload_hits >= 30


def test_transition_probabilities_are_learned_online() -> None:
    tr = Transitions(window=2.0)
    for i in range(20):
        tr.observe(i * 10.0, "detector")
        tr.observe(i * 10.0 + 0.1, "classifier")
        if i % 2:
            tr.observe(i * 10.0 + 0.3, "recognizer")
    assert tr.probability("detector", "classifier") == pytest.approx(20 / 21)
    assert tr.probability("detector", "recognizer") == pytest.approx(10 / 21)
    assert tr.probability("classifier", "detector") == 0.0  # 9.9 s later: outside the window
    assert [b for b, _ in tr.followers("detector", 0.3)] == ["classifier", "recognizer"]


def naive_follow_counts(
    events: list[tuple[float, str]], window: float, halve_at: int
) -> tuple[dict[str, int], dict[str, dict[str, int]]]:
    """The definition, literally: each A request counts once for every other model requested
    within ``window`` after it; halving as in Transitions."""
    count: collections.Counter[str] = collections.Counter()
    follow: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    recent: list[tuple[float, str, set[str]]] = []
    for t, model in events:
        recent = [r for r in recent if r[0] >= t - window]
        for _, earlier, credited in recent:
            if earlier != model and model not in credited:
                credited.add(model)
                follow[earlier][model] += 1
        recent.append((t, model, set()))
        count[model] += 1
        if count[model] >= halve_at:
            count[model] //= 2
            for other in list(follow[model]):
                follow[model][other] //= 2
    return dict(count), {a: {b: n for b, n in c.items() if n} for a, c in follow.items()}


@given(
    steps=st.lists(
        st.tuples(st.floats(0.0, 1.5), st.sampled_from("abcd")), min_size=1, max_size=300
    ),
    halve_at=st.integers(2, 50),
)
def test_transitions_count_like_the_definition(
    steps: list[tuple[float, str]], halve_at: int
) -> None:
    events, t = [], 0.0
    for gap, model in steps:
        t += gap
        events.append((t, model))
    tr = Transitions(window=2.0, halve_at=halve_at)
    for t, model in events:
        tr.observe(t, model)
    count, follow = naive_follow_counts(events, 2.0, halve_at)
    assert dict(tr.count) == count
    assert {a: {b: n for b, n in c.items() if n} for a, c in tr.follow.items() if c} == {
        a: c for a, c in follow.items() if c
    }


def test_a_model_unused_for_a_week_is_not_preloaded() -> None:
    f = Forecaster()
    for i in range(50):
        f.observe(i * 30.0, "old")
    week_later = 50 * 30.0 + 7 * DAY
    forecast = f.forecast("old", week_later, horizon=30)
    assert forecast.probability < 0.3
    options = {"old": [SMALL]}
    policy = EdgedPolicy(options, 100_000_000, preload=PreloadSettings())
    for i in range(50):
        policy.request(i * 30.0, "old")
    policy.resident.clear()
    policy.preload_round(week_later)
    assert "old" not in policy.resident
    assert policy.preloads == 0


def test_idle_histogram_window_and_fallback() -> None:
    h = IdleTimeHistogram(IdleSettings(min_samples=5))
    assert h.window().trusted is False
    assert h.window().keep_alive == IdleSettings().keep_alive_seconds
    for _ in range(20):
        h.observe(30 * MINUTE + 10)
    w = h.window()
    assert w.trusted
    assert 25 * MINUTE <= w.prewarm <= 30 * MINUTE
    assert 30 * MINUTE < w.keep_alive <= 35 * MINUTE
    assert h.probability_within(29 * MINUTE, 2 * MINUTE) == 1.0
    assert h.probability_within(10 * MINUTE, 2 * MINUTE) == 0.0
    # Idle times spread evenly over the range are not a pattern to trust.
    spread = IdleTimeHistogram()
    for i in range(240):
        spread.observe(i * MINUTE + 1)
    assert spread.window().trusted is False


def test_idle_histogram_is_bounded() -> None:
    h = IdleTimeHistogram(IdleSettings(max_samples=100))
    for i in range(1000):
        h.observe(float(i % 50))
    assert h.samples == 100
    assert sum(h.bins) == 100


def test_timers_are_found_inside_other_traffic_and_chance_is_not_a_timer() -> None:
    rng = random.Random(3)
    timer, noise = ExactPeriod(), ExactPeriod()
    t, events = 0.0, []
    while t < 5 * 3600:
        t += 600 + rng.gauss(0, 3)
        events.append(t)
    events += [rng.uniform(0, 5 * 3600) for _ in range(300)]
    for when in sorted(events):
        timer.observe(when)
    period = timer.period()
    assert period is not None and period == pytest.approx(600, rel=0.02)
    for when in sorted(rng.uniform(0, 5 * 3600) for _ in range(600)):
        noise.observe(when)
    assert noise.period() is None


def test_preload_choice_weighs_what_it_displaces() -> None:
    busy = Resident("busy", Option("fp32", 10_000_000, 1.0, 0.05), (), predicted_requests=5.0)
    # A certain, imminent request is worth displacing a busy model a little early ...
    assert preload_choice([SMALL], 0, [busy], probability=0.95, lead_seconds=2.0, w=W)
    # ... a vague forecast is not.
    assert preload_choice([SMALL], 0, [busy], probability=0.3, lead_seconds=30.0, w=W) is None
    # Into free memory, even a modest forecast preloads.
    choice = preload_choice([SMALL], 20_000_000, [busy], probability=0.3, lead_seconds=30, w=W)
    assert choice is not None and choice[1] == []
    # Pinned models are never displaced.
    pinned = Resident("p", Option("fp32", 10_000_000, 1.0, 0.05), (), 0.0, pinned=True)
    assert preload_choice([SMALL], 0, [pinned], 1.0, 1.0, W) is None


def test_preloading_reduces_cold_starts_on_timers_and_pipelines() -> None:
    options = {f"m{i}": [Option("fp32", 10_000_000, 1.0, 0.05)] for i in range(6)}
    rng = random.Random(1)
    events = []
    for i in range(200):
        t = i * 120.0
        events += [(t, "m0"), (t + 0.1, "m1")]  # a pipeline every two minutes
        events += [(t + 60.0 + rng.uniform(-0.5, 0.5), "m2")]  # a timer
        events += [(rng.uniform(0, 24000), f"m{rng.randint(3, 5)}") for _ in range(2)]
    events.sort()
    structured = {"m0", "m1", "m2"}

    def cold_starts(policy: EdgedPolicy | LruPolicy) -> tuple[int, int]:
        cold = [m for t, m in events if not policy.request(t, m).warm]
        return len(cold), sum(m in structured for m in cold)

    total, on_structure = cold_starts(EdgedPolicy(options, 30_000_000, preload=PreloadSettings()))
    total_without, on_structure_without = cold_starts(EdgedPolicy(options, 30_000_000))
    lru_total, _ = cold_starts(LruPolicy(options, 30_000_000, "best"))
    # Random traffic to m3..m5 stays cold (nothing predicts it); the timers and the pipeline
    # are what preloading is for.
    assert on_structure < 0.25 * on_structure_without, (on_structure, on_structure_without)
    assert total < total_without and total < lru_total


def test_history_survives_reopen_and_honours_retention(tmp_path: Path) -> None:
    import time

    path = tmp_path / "history.sqlite3"
    history = RequestHistory(path, retention_seconds=3600, max_rows=5)
    now = time.time()
    for i in range(8):
        history.record(Request(now - 8 + i, "m", "1", "fp32", 1.5, i % 2 == 0))
    history.record(Request(now - 7200, "old", "1", "fp32", 1.0, True))
    history.close()
    reopened = RequestHistory(path, retention_seconds=3600, max_rows=5)
    rows = list(reopened.rows())
    reopened.close()
    assert [r.model for r in rows] == ["m"] * 5  # the old row aged out; the newest 5 kept
    assert rows[-1].t == pytest.approx(now - 1)
    assert rows[-1].latency_ms == 1.5 and rows[-1].warm is False
