"""Calendar rates (hour of day, day of week) and exact periods (timer-driven clients)."""

from __future__ import annotations

import collections
import math
import statistics

HOUR = 3600.0
DAY = 24 * HOUR
WEEK = 7 * DAY


class CalendarRates:
    """Requests per second by hour of day, scaled by the day of the week once two weeks are seen.

    Times are seconds on the caller's clock (wall-clock epoch seconds in the daemon, so hours are
    UTC hours; simulated seconds in traces). Counts are plain: the history store's retention bounds
    how far back they reach.
    """

    def __init__(self) -> None:
        self.by_hour = [0] * 24
        self.by_weekday = [0] * 7
        self.first: float | None = None
        self.last: float | None = None

    def observe(self, t: float) -> None:
        if self.first is None:
            self.first = t
        self.last = t
        self.by_hour[int(t % DAY // HOUR)] += 1
        self.by_weekday[int(t % WEEK // DAY)] += 1

    def rate(self, t: float) -> float:
        """Expected requests per second at time ``t``."""
        if self.first is None or self.last is None:
            return 0.0
        span = max(self.last - self.first, HOUR)
        days = max(span / DAY, 1.0)
        rate = self.by_hour[int(t % DAY // HOUR)] / (days * HOUR)
        if span >= 2 * WEEK:
            total = sum(self.by_weekday)
            rate *= self.by_weekday[int(t % WEEK // DAY)] * 7 / total if total else 1.0
        return rate

    def probability_within(self, t: float, horizon: float) -> float:
        """P(at least one request in [t, t + horizon]) for a Poisson process at the hour's rate."""
        return 1.0 - math.exp(-self.rate(t) * horizon)


class ExactPeriod:
    """A client that calls every P seconds: the last few gaps agree to within a few percent."""

    def __init__(self, window: int = 6, tolerance: float = 0.05, min_period: float = 1.0) -> None:
        self.gaps: collections.deque[float] = collections.deque(maxlen=window)
        self.tolerance = tolerance
        self.min_period = min_period
        self.last: float | None = None

    def observe(self, t: float) -> None:
        if self.last is not None:
            self.gaps.append(t - self.last)
        self.last = t

    def period(self) -> float | None:
        if self.gaps.maxlen is None or len(self.gaps) < self.gaps.maxlen:
            return None
        middle = statistics.median(self.gaps)
        if middle < self.min_period:
            return None
        spread = statistics.median(abs(g - middle) for g in self.gaps)
        return middle if spread <= self.tolerance * middle else None

    def next_arrival(self, t: float) -> float | None:
        """When the timer fires next, at or after ``t`` (a missed beat counts as late, not gone,
        for one period)."""
        period = self.period()
        if period is None or self.last is None:
            return None
        beats = max(math.floor((t - self.last) / period), 0)
        if beats >= 2:  # the timer stopped
            return None
        return self.last + (beats + 1) * period
