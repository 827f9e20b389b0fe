"""Predictive pre-loading: the forecasters decide what will be needed, the residency scoring
decides whether loading it now is worth what it displaces (docs/preloading.md).

Two triggers: a scheduled job (every ``interval``) that looks ``lead`` seconds ahead for every
model, and a hook on each request arrival that loads the models likely to follow it (pipelines).
Every request is written to the request history, off the request path, so forecasts survive a
restart.

Learning is batched: an arrival costs the request path a list append and a look-up of the models
that follow it (so pipeline preloads start at once); the forecasters' bookkeeping and the history
records run every ``FLUSH_SECONDS`` for all arrivals since, in arrival order, with their own
timestamps (docs/performance.md). Whatever reads a forecast flushes first.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from edged.events import Events, NoEvents
from edged.forecast.forecaster import Forecaster
from edged.forecast.history import RequestHistory, Row
from edged.portfolio.portfolio import Portfolio
from edged.portfolio.slot import Lease
from edged.settings import PreloadSettings

log = logging.getLogger(__name__)

FLUSH_SECONDS = 0.05
# Arrivals fed per event-loop callback when the timer flushes: at ~7 us each inside a busy
# daemon, a request that arrives meanwhile waits at most ~60 us, not the whole batch (~0.6 ms
# for 80 arrivals, up to ~2 ms).
FLUSH_CHUNK = 8


class Preloader:
    def __init__(
        self,
        portfolio: Portfolio,
        forecaster: Forecaster,
        history: RequestHistory | None,
        settings: PreloadSettings,
        *,
        clock: Callable[[], float] = time.time,
        events: Events | None = None,
    ) -> None:
        self.portfolio = portfolio
        self.forecaster = forecaster
        self.history = history
        self.settings = settings
        self.horizon = portfolio.settings.residency.horizon_seconds
        self.clock = clock
        self.events: Events = events or NoEvents()
        self._predicted_next: dict[str, float] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._arrivals: list[tuple[float, str]] = []
        # Completed requests as history rows: a tuple is the cheapest record to make on the
        # request path, and the history writer takes it as it is.
        self._completed: list[Row] = []
        # Each model's first arrival fed since the forecast-error metric was last sampled.
        self._first_fed: dict[str, float] = {}
        self._flush_timer: asyncio.Handle | None = None
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
        self.flush()
        return self.forecaster.forecast(model, self.clock(), self.horizon).expected_requests

    def on_arrival(self, model: str) -> None:
        """A request for ``model`` arrived: note it for learning; load what usually follows it."""
        self._arrivals.append((self.clock(), model))
        self._schedule_flush()
        if not self.settings.enabled:
            return
        window = self.forecaster.transitions.window
        for follower, probability in self.portfolio.engine.followers(
            self.forecaster, model, self._present
        ):
            self._spawn(
                self.portfolio.preload(
                    follower,
                    probability,
                    window,
                    "transition",
                    wait=window,
                )
            )

    def _present(self, model: str) -> bool:
        """Resident or on its way: a preload would return at once."""
        slot = self.portfolio.slots.get(model)
        return slot is not None and (slot.handle is not None or slot.preloading is not None)

    def on_complete(self, lease: Lease) -> None:
        if self.history is None:
            return
        handle = lease.handle
        manifest = handle.manifest
        self.note_completed(
            (
                self.clock(),
                manifest.name,
                manifest.version,
                handle.variant.id,
                (time.perf_counter() - lease.arrived) * 1e3,
                not lease.cold,
            )
        )

    def note_completed(self, row: Row) -> None:
        """A finished request, as the history row it becomes at the next flush."""
        self._completed.append(row)
        self._schedule_flush()

    @property
    def pending(self) -> int:
        """Arrivals noted and not yet fed to the forecasters."""
        return len(self._arrivals)

    def _schedule_flush(self) -> None:
        if self._flush_timer is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (a caller outside the daemon): learn at once
            self.flush()
            return
        self._flush_timer = loop.call_later(FLUSH_SECONDS, self._flush_due)

    def _flush_due(self) -> None:
        """The timer's flush, FLUSH_CHUNK arrivals per loop callback until none is left."""
        self._flush_timer = None
        self.feed(FLUSH_CHUNK)
        if self._arrivals:
            self._flush_timer = asyncio.get_running_loop().call_soon(self._flush_due)

    def flush(self) -> None:
        """Feed every arrival and completed request noted so far to the forecasters and the
        history, in order (what a reader of forecasts calls first)."""
        self.feed(None)

    def feed(self, limit: int | None) -> None:
        """Feed the oldest ``limit`` arrivals (all when None) and every completed request.

        The forecast-error metric compares the next arrival predicted at one feed (from the
        model's last arrival then) with the model's first arrival after it: the same measure as
        per request, sampled at most once per model per batch (a timer's chunks count as one).
        """
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        if limit is None or len(self._arrivals) <= limit:
            arrivals, self._arrivals = self._arrivals, []
        else:
            arrivals, self._arrivals = self._arrivals[:limit], self._arrivals[limit:]
        completed, self._completed = self._completed, []
        if completed and self.history is not None:
            self.history.record_rows(completed)
        first = self._first_fed
        for t, model in arrivals:
            self.forecaster.observe(t, model)
            if model not in first:
                first[model] = t
        if self._arrivals or not first:
            return  # the metric is sampled once the batch is fed, not once per chunk
        self._first_fed = {}
        for model, t in first.items():
            predicted = self._predicted_next.pop(model, None)
            if predicted is not None:
                self.events.forecast_error(abs(t - predicted))
            last = self.forecaster.models[model].last
            assert last is not None
            forecast = self.forecaster.forecast(model, last, self.horizon)
            if forecast.next_arrival is not None and forecast.next_arrival > last:
                self._predicted_next[model] = forecast.next_arrival

    def close(self) -> None:
        """Write what is still pending to the history and close it."""
        self.flush()
        if self.history is not None:
            self.history.close()

    def candidates(self) -> list[tuple[str, float]]:
        """Models not resident whose next request is likely within the lead, most likely first."""
        self.flush()
        return self.portfolio.engine.preload_round(
            self.portfolio.snapshot(), self.forecaster, self.clock()
        )

    async def run_once(self) -> int:
        """One round of the scheduled job; returns the preloads made."""
        if not self.settings.enabled:
            return 0
        made = 0
        for name, probability in self.candidates():
            if await self.portfolio.preload(
                name, probability, self.settings.lead_seconds, "forecast"
            ):
                made += 1
        if self.history is not None and self.history.dropped:
            self.events.history_dropped(self.history.dropped)
            self.history.dropped = 0
        return made

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
