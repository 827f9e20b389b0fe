"""Calendar rates (hour of day, day of week) and exact periods (timer-driven clients)."""

from __future__ import annotations

import bisect
import collections
import math

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

    def observe(self, t: float) -> None:
        if self.first is None:
            self.first = t
        self.by_hour[int(t % DAY // HOUR)] += 1
        self.by_weekday[int(t % WEEK // DAY)] += 1

    def rate(self, t: float) -> float:
        """Expected requests per second at time ``t``."""
        if self.first is None:
            return 0.0
        # Exposure runs to now, not to the last request: a week of silence dilutes the rate.
        span = max(t - self.first, HOUR)
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
    """Timer-driven clients: requests every P seconds, even when other traffic to the same model
    is mixed in.

    On each arrival t, every recent arrival a proposes a period P = t - a, and the chain is
    followed back: an arrival near a - P, then near that - P, and so on (each beat within
    ``tolerance`` * P of the last, so a timer's jitter does not accumulate). Other traffic lines
    up by chance: at the model's mean rate r, a window of width w holds an arrival with
    probability 1 - exp(-r w). P is accepted once the chance that the whole chain is coincidence
    falls below ``significance`` — small, since every arrival tests every recent one — and at
    least ``min_beats`` beats are seen. A timer that misses two beats in a row is dropped.
    """

    def __init__(
        self,
        min_beats: int = 4,
        max_beats: int = 16,
        tolerance: float = 0.02,
        significance: float = 1e-6,
        min_period: float = 1.0,
        max_period: float = 4 * HOUR,
        memory: int = 256,
    ) -> None:
        self.min_beats = min_beats
        self.max_beats = max_beats
        self.tolerance = tolerance
        self.significance = significance
        self.min_period = min_period
        self.max_period = max_period
        self.arrivals: collections.deque[float] = collections.deque(maxlen=memory)
        self.timers: dict[float, float] = {}  # period -> last beat
        # A candidate whose per-beat chance hit exceeds this cannot reach ``significance`` within
        # ``max_beats``: skipping those keeps the per-request work to a dozen candidates.
        self._hopeless = significance ** (1 / (max_beats - 1))

    def observe(self, t: float) -> None:
        for period, last in list(self.timers.items()):
            if any(abs(t - (last + k * period)) <= self._slack(period) for k in (1, 2)):
                self.timers[period] = t  # the timer fired again (perhaps after a missed beat)
        recent = self.arrivals
        if len(recent) < max(self.min_beats - 1, 1) or t - recent[0] < self.min_period:
            # Every remembered arrival is too recent to start a period: a busy model's steady
            # case, which must cost next to nothing per request.
            recent.append(t)
            return
        arrivals = list(recent)  # before t: the candidates for its previous beats
        recent.append(t)
        rate = len(arrivals) / (t - arrivals[0])
        for a in reversed(arrivals):
            period = t - a
            if period < self.min_period:
                continue
            hit = self._chance_hit(period, rate)
            if period > self.max_period or hit > self._hopeless:
                break  # longer periods have wider windows: they cannot pass either
            if any(self._multiple_of(period, known) for known in self.timers):
                continue  # the known timer itself, or two of its beats apart
            if self._chain_is_timer(arrivals, a, period, hit):
                self.timers[period] = t

    def _chance_hit(self, period: float, rate: float) -> float:
        """P(an arrival of other traffic falls in one beat's window by chance)."""
        return 1.0 - math.exp(-rate * 2 * self._slack(period))

    def _chain_is_timer(
        self, arrivals: list[float], start: float, period: float, hit: float
    ) -> bool:
        slack = self._slack(period)
        chance, beats, beat = hit, 2, start
        while beats < self.max_beats and (chance > self.significance or beats < self.min_beats):
            previous = self._near(arrivals, beat - period, slack)
            if previous is None:
                return False
            beat, beats, chance = previous, beats + 1, chance * hit
        return chance <= self.significance and beats >= self.min_beats

    def _multiple_of(self, period: float, known: float) -> bool:
        k = round(period / known)
        return k >= 1 and abs(period - k * known) <= k * self._slack(known)

    def _slack(self, period: float) -> float:
        return max(self.tolerance * period, 0.05)

    @staticmethod
    def _near(arrivals: list[float], when: float, slack: float) -> float | None:
        i = bisect.bisect_left(arrivals, when - slack)
        if i < len(arrivals) and arrivals[i] <= when + slack:
            # the closest one inside the window
            j = i
            while j + 1 < len(arrivals) and arrivals[j + 1] <= when + slack:
                j += 1
            return min(arrivals[i : j + 1], key=lambda x: abs(x - when))
        return None

    def period(self) -> float | None:
        """The shortest live timer period, if any."""
        return min(self.timers) if self.timers else None

    def next_arrival(self, t: float) -> float | None:
        """When a timer fires next, at or after ``t`` (one missed beat is late, not gone)."""
        best = None
        for period, last in list(self.timers.items()):
            beats = max(math.floor((t - last) / period), 0)
            if beats >= 2:  # the timer stopped
                del self.timers[period]
                continue
            beat = last + (beats + 1) * period
            best = beat if best is None else min(best, beat)
        return best
