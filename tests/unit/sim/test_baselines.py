"""The simulator's clairvoyant reference: Belady's MIN over a known trace."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from edged.portfolio.scoring import Option
from edged.sim.baselines import BeladyPolicy, LruPolicy
from edged.sim.policy import Options, replay


def equal_sized(models: list[str]) -> Options:
    return {m: [Option("v", 100, 1.0, 0.01)] for m in models}


def test_belady_evicts_the_model_requested_furthest_ahead() -> None:
    options = equal_sized(["a", "b", "c"])
    # Room for two. When c comes, a is needed next and b much later: b must go, so a stays warm.
    events = [(0.0, "a"), (1.0, "b"), (2.0, "c"), (3.0, "a"), (9.0, "b")]
    policy = BeladyPolicy(options, 200, "best", events)
    warm = [policy.request(t, m).warm for t, m in events]
    assert warm == [False, False, False, True, False]
    # LRU evicts a (least recently used) instead, and pays for it at t=3.
    lru = LruPolicy(options, 200, "best")
    assert [lru.request(t, m).warm for t, m in events] == [False, False, False, False, False]


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.sampled_from("abcdef"), min_size=1, max_size=80),
    st.integers(min_value=1, max_value=5),
)
def test_with_equal_sizes_belady_never_has_more_cold_starts_than_lru(
    sequence: list[str], capacity: int
) -> None:
    options = equal_sized(sorted(set("abcdef")))
    events = [(float(i), m) for i, m in enumerate(sequence)]
    budget = capacity * 100
    belady = replay(BeladyPolicy(options, budget, "best", events), events)
    lru = replay(LruPolicy(options, budget, "best"), events)
    assert belady["cold_starts"] <= lru["cold_starts"]
