"""The preloader's batched learning: arrivals reach the forecasters and the history in order, with
their own timestamps, within FLUSH_SECONDS or at once when a forecast is read."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

from edged.forecast.forecaster import Forecaster
from edged.forecast.history import Request, RequestHistory
from edged.portfolio.preloader import FLUSH_SECONDS, Preloader, PreloadSettings
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
        preloader._completed.extend(dataclasses.astuple(r) for r in records)  # as on_complete
        preloader._schedule_flush()

    asyncio.run(scenario())
    preloader.close()  # the loop is gone before the timer fired: close writes them
    assert preloader.history is not None
    assert list(preloader.history.rows()) == records
