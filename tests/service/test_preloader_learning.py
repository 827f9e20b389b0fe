"""The preloader's batched learning: arrivals reach the forecasters and the history in order, with
their own timestamps, within FLUSH_SECONDS or at once when a forecast is read."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

from edged.events import NoEvents
from edged.forecast.forecaster import Forecaster
from edged.forecast.history import Request, RequestHistory
from edged.portfolio.preloader import FLUSH_CHUNK, FLUSH_SECONDS, Preloader
from edged.settings import PreloadSettings
from edged.store.store import ModelStore
from tests.portfolios import open_portfolio


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def _preloader(tmp_path: Path, clock: Clock) -> Preloader:
    portfolio = open_portfolio(ModelStore(tmp_path / "store"), tmp_path)
    history = RequestHistory(tmp_path / "history.sqlite3")
    return Preloader(portfolio, Forecaster(), history, PreloadSettings(), clock=clock)


def test_arrivals_are_learned_in_order_when_a_forecast_is_read(tmp_path: Path) -> None:
    clock = Clock()
    preloader = _preloader(tmp_path, clock)

    async def scenario() -> None:
        for gap in (0.0, 10.0, 10.0):
            clock.now += gap
            preloader.on_arrival("m")
        assert "m" not in preloader.forecaster.models  # noted, not yet learned
        assert preloader.expected_requests("m") > 0.0  # reading flushes first
        history = preloader.forecaster.models["m"]
        assert history.last == clock.now
        assert history.idle.samples == 2  # two idle times of 10 s, from the arrivals' own times

    asyncio.run(scenario())
    preloader.close()


def test_the_timer_flushes_without_a_reader(tmp_path: Path) -> None:
    clock = Clock()
    preloader = _preloader(tmp_path, clock)

    async def scenario() -> None:
        preloader.on_arrival("m")
        await asyncio.sleep(FLUSH_SECONDS * 4)
        assert preloader.forecaster.models["m"].last == clock.now

    asyncio.run(scenario())
    preloader.close()


def test_completed_requests_reach_the_history_on_close(tmp_path: Path) -> None:
    clock = Clock()
    preloader = _preloader(tmp_path, clock)
    records = [Request(clock.now + i, "m", "1", "fp32", 1.0, True) for i in range(5)]

    async def scenario() -> None:
        for r in records:
            preloader.note_completed(dataclasses.astuple(r))  # as on_complete does

    asyncio.run(scenario())
    preloader.close()  # the loop is gone before the timer fired: close writes them
    assert preloader.history is not None
    assert list(preloader.history.rows()) == records


def test_the_timer_feeds_a_large_batch_in_chunks_in_order(tmp_path: Path) -> None:
    """A request never waits behind a whole batch: each loop callback of the timer's flush feeds
    at most FLUSH_CHUNK arrivals; all of them arrive, in order; a reader gets the rest at once."""
    clock = Clock()
    fed: list[int] = []
    per_callback: list[int] = []

    class CountingForecaster(Forecaster):
        def observe(self, t: float, model: str) -> list[tuple[str, float]]:
            fed.append(int(t))
            return super().observe(t, model)

    class CountingPreloader(Preloader):
        def feed(self, limit: int | None) -> None:
            before = len(fed)
            super().feed(limit)
            per_callback.append(len(fed) - before)

    portfolio = open_portfolio(ModelStore(tmp_path / "store"), tmp_path)
    history = RequestHistory(tmp_path / "history.sqlite3")
    preloader = CountingPreloader(
        portfolio, CountingForecaster(), history, PreloadSettings(), clock=clock
    )

    async def scenario() -> None:
        arrivals = 3 * FLUSH_CHUNK + 5
        for _ in range(arrivals):
            clock.now += 1.0
            preloader.on_arrival("m")
        await asyncio.sleep(FLUSH_SECONDS * 3)
        assert fed == sorted(fed) and len(fed) == arrivals  # all of them, in arrival order
        assert per_callback == [FLUSH_CHUNK, FLUSH_CHUNK, FLUSH_CHUNK, 5]
        for _ in range(arrivals):
            clock.now += 1.0
            preloader.on_arrival("m")
        preloader.expected_requests("m")  # a reader: everything at once
        assert per_callback[-1] == arrivals and fed == sorted(fed) and len(fed) == 2 * arrivals

    asyncio.run(scenario())
    preloader.close()


class ForecastErrors(NoEvents):
    def __init__(self) -> None:
        self.count = 0

    def forecast_error(self, seconds: float) -> None:
        self.count += 1


def test_the_forecast_error_is_sampled_once_per_batch_not_per_chunk(tmp_path: Path) -> None:
    """The timer's chunks are one batch: the error metric compares the prediction made when the
    previous batch was fed with the model's first arrival of this one, once."""
    clock = Clock()
    portfolio = open_portfolio(ModelStore(tmp_path / "store"), tmp_path)
    errors = ForecastErrors()
    preloader = Preloader(
        portfolio, Forecaster(), None, PreloadSettings(), clock=clock, events=errors
    )

    async def batch(count: int) -> None:
        for _ in range(count):
            clock.now += 1.0
            preloader.on_arrival("m")
        await asyncio.sleep(FLUSH_SECONDS * 4)
        assert not preloader.pending

    async def scenario() -> None:
        await batch(3 * FLUSH_CHUNK + 5)  # a steady 1 s rhythm: a next arrival is predicted
        assert errors.count == 0  # nothing was predicted before this batch
        await batch(3 * FLUSH_CHUNK + 5)
        assert errors.count == 1

    asyncio.run(scenario())
    preloader.close()
