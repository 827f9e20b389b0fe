"""The forecasters combined: P(a request within the horizon) and when the next one is expected.

Each signal answers the same question for model m at time t — will m be requested within the next
``horizon`` seconds? — and the most confident answer wins (they see the same requests, so they are
not independent evidence and are not multiplied together):

- an exact period (a timer-driven client): certain when the next beat falls inside the horizon;
- the idle-time histogram, when trusted: the share of past idle times ending inside the horizon
  among those longer than the current idle time;
- the hour-of-day rate (Poisson);
- a transition: right after A, P(B follows within the transition window).

The expected number of requests in the horizon, which the residency scoring needs, is the larger
of that probability and the hour's rate times the horizon.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from edged.forecast.idle import IdleSettings, IdleTimeHistogram
from edged.forecast.periodic import CalendarRates, ExactPeriod
from edged.forecast.transitions import Transitions


@dataclasses.dataclass(frozen=True)
class Forecast:
    probability: float  # of at least one request within the horizon
    expected_requests: float  # within the horizon
    next_arrival: float | None  # best guess of the next request's time; None when unknown
    source: str  # which signal decided


@dataclasses.dataclass
class ModelHistory:
    idle: IdleTimeHistogram
    calendar: CalendarRates = dataclasses.field(default_factory=CalendarRates)
    period: ExactPeriod = dataclasses.field(default_factory=ExactPeriod)
    last: float | None = None
    # A transition's promise: (until when, probability) after a likely predecessor was seen.
    promised: tuple[float, float] = (0.0, 0.0)


class Forecaster:
    def __init__(
        self,
        idle: IdleSettings | None = None,
        transition_window: float = 2.0,
        min_transition_probability: float = 0.3,
    ) -> None:
        self.idle_settings = idle or IdleSettings()
        self.transitions = Transitions(transition_window)
        self.min_transition_probability = min_transition_probability
        self.models: dict[str, ModelHistory] = {}

    def history(self, model: str) -> ModelHistory:
        h = self.models.get(model)
        if h is None:
            h = self.models[model] = ModelHistory(IdleTimeHistogram(self.idle_settings))
        return h

    def observe(self, t: float, model: str) -> list[tuple[str, float]]:
        """Record a request; returns the models likely to follow it (to load now)."""
        h = self.history(model)
        if h.last is not None and t >= h.last:
            h.idle.observe(t - h.last)
        h.last = t
        h.calendar.observe(t)
        h.period.observe(t)
        self.transitions.observe(t, model)
        followers = self.transitions.followers(model, self.min_transition_probability)
        for follower, p in followers:
            f = self.history(follower)
            f.promised = (t + self.transitions.window, p)
        return followers

    def likely(
        self, models: Iterable[str], t: float, lead: float, min_probability: float, limit: int
    ) -> list[tuple[str, float]]:
        """Of ``models``, those most likely (>= ``min_probability``) to be requested within
        ``lead``: the preloader's round, in the daemon and in the simulator."""
        out = []
        for model in models:
            p = self.forecast(model, t, lead).probability
            if p >= min_probability:
                out.append((model, p))
        out.sort(key=lambda mp: (-mp[1], mp[0]))
        return out[:limit]

    def forecast(self, model: str, t: float, horizon: float) -> Forecast:
        h = self.models.get(model)
        if h is None or h.last is None:
            return Forecast(0.0, 0.0, None, "none")
        since = max(t - h.last, 0.0)
        candidates: list[tuple[float, float | None, str]] = []

        beat = h.period.next_arrival(t)
        if beat is not None:
            candidates.append((1.0 if beat - t <= horizon else 0.0, beat, "period"))
        if h.idle.trusted():
            expected = h.idle.expected_idle(since)
            candidates.append(
                (
                    h.idle.probability_within(since, horizon),
                    h.last + expected if expected is not None else None,
                    "histogram",
                )
            )
        rate = h.calendar.rate(t)
        candidates.append((h.calendar.probability_within(t, horizon), None, "calendar"))
        until, p = h.promised
        if t <= until:
            candidates.append((p, t, "transition"))

        probability, next_arrival, source = max(candidates, key=lambda c: c[0])
        if next_arrival is None:
            next_arrival = next((c[1] for c in candidates if c[1] is not None), None)
        return Forecast(probability, max(probability, rate * horizon), next_arrival, source)
