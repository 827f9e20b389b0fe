"""When a variant runs on the event loop instead of a worker thread (docs/performance.md)."""

from __future__ import annotations

import time

from edged.portfolio.slot import ComputeTiming


def _sleep_us(us: float) -> None:
    end = time.perf_counter() + us / 1e6
    while time.perf_counter() < end:
        pass


def test_fast_runs_go_inline_and_a_slow_model_leaves_the_loop() -> None:
    timing = ComputeTiming()
    assert not timing.run_inline(256)  # nothing measured yet
    for _ in range(ComputeTiming.WARM_RUNS):
        timing.timed(_sleep_us, 5)
    assert timing.run_inline(256)
    assert not timing.run_inline(ComputeTiming.INLINE_MAX_INPUT_BYTES + 1)  # big input: a worker
    # The model turns slow (say, a new version): within a few sampled runs it is off the loop.
    calls = 0
    while timing.run_inline(256):
        timing.timed(_sleep_us, 2 * ComputeTiming.INLINE_MAX_NS / 1e3)
        calls += 1
        assert calls <= 8 * ComputeTiming.SAMPLE_EVERY
    assert timing.ewma_ns >= ComputeTiming.INLINE_MAX_NS


def test_every_call_returns_the_functions_result() -> None:
    timing = ComputeTiming()
    assert [timing.timed(lambda x: x * 2, i) for i in range(20)] == [i * 2 for i in range(20)]
