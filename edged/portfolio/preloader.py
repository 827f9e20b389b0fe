"""Predictive pre-loading: the forecasters decide what will be needed, the residency scoring
decides whether loading it now is worth what it displaces (docs/preloading.md).

Two triggers: a scheduled job (every ``interval``) that looks ``lead`` seconds ahead for every
model, and a hook on each request arrival that loads the models likely to follow it (pipelines).
Every request is written to the request history, off the request path, so forecasts survive a
restart.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from edged.forecast.forecaster import Forecaster
from edged.forecast.history import Request, RequestHistory
from edged.portfolio.slot import Lease

if TYPE_CHECKING:
    from edged.metrics import Metrics
    from edged.portfolio.portfolio import Portfolio

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class PreloadSettings:
    enabled: bool = True
    interval: float = 5.0
    lead: float = 30.0
    min_probability: float = 0.3
    horizon: float = 300.0  # the residency scoring's horizon
    max_per_round: int = 4


class Preloader:
    def __init__(
        self,
        portfolio: Portfolio,
        forecaster: Forecaster,
        history: RequestHistory | None,
        settings: PreloadSettings,
        *,
        clock: Callable[[], float] = time.time,
        metrics: Metrics | None = None,
    ) -> None:
        self.portfolio = portfolio
        self.forecaster = forecaster
        self.history = history
        self.settings = settings
        self.clock = clock
        self.metrics = metrics
        self._predicted_next: dict[str, float] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        portfolio.expected = self.expected_requests
        portfolio.on_arrival = self.on_arrival
        portfolio.on_complete = self.on_complete

    def restore(self) -> int:
        """Replay the stored history into the forecasters; returns the requests replayed."""
        if self.history is None:
            return 0
        count = 0
        for request in self.history.rows():
            self.forecaster.observe(request.t, request.model)
            count += 1
        return count

    def expected_requests(self, model: str) -> float:
        return self.forecaster.forecast(
            model, self.clock(), self.settings.horizon
        ).expected_requests

    def on_arrival(self, model: str) -> None:
        """A request for ``model`` arrived: learn from it, and load what usually follows it."""
        now = self.clock()
        predicted = self._predicted_next.pop(model, None)
        if predicted is not None and self.metrics is not None:
            self.metrics.forecast_error.observe(abs(now - predicted))
        followers = self.forecaster.observe(now, model)
        forecast = self.forecaster.forecast(model, now, self.settings.horizon)
        if forecast.next_arrival is not None and forecast.next_arrival > now:
            self._predicted_next[model] = forecast.next_arrival
        if not self.settings.enabled:
            return
        for follower, probability in followers:
            self._spawn(
                self.portfolio.preload(
                    follower,
                    probability,
                    self.forecaster.transitions.window,
                    "transition",
                    wait=self.forecaster.transitions.window,
                )
            )

    def on_complete(self, lease: Lease) -> None:
        if self.history is None:
            return
        handle = lease.handle
        self.history.record(
            Request(
                self.clock(),
                handle.manifest.name,
                handle.manifest.version,
                handle.variant.id,
                (time.perf_counter() - lease.arrived) * 1e3,
                not lease.cold,
            )
        )

    def candidates(self) -> list[tuple[str, float]]:
        """Models not resident whose next request is likely within the lead, most likely first."""
        absent = (
            name
            for name, slot in self.portfolio.slots.items()
            if slot.handle is None and slot.preloading is None and slot.manifest is not None
        )
        s = self.settings
        return self.forecaster.likely(
            absent, self.clock(), s.lead, s.min_probability, s.max_per_round
        )

    async def run_once(self) -> int:
        """One round of the scheduled job; returns the preloads made."""
        if not self.settings.enabled:
            return 0
        made = 0
        for name, probability in self.candidates():
            if await self.portfolio.preload(name, probability, self.settings.lead, "forecast"):
                made += 1
        if self.history is not None and self.history.dropped and self.metrics is not None:
            self.metrics.history_dropped.inc(self.history.dropped)
            self.history.dropped = 0
        return made

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
