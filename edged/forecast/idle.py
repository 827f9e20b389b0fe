"""The hybrid idle-time histogram policy of "Serverless in the Wild" (Shahrad et al., ATC 2020).

Per model, the idle times (gaps between consecutive requests) go into one-minute bins up to four
hours. When the histogram is trustworthy, the model is pre-warmed at a low percentile of the idle
time after its last request and kept alive to a high percentile; while it is too sparse or too
spread to trust, a plain keep-alive is used instead.
"""

from __future__ import annotations

import bisect
import collections
import dataclasses
import math


@dataclasses.dataclass(frozen=True)
class IdleSettings:
    bin_seconds: float = 60.0
    range_seconds: float = 4 * 3600.0
    head_percentile: float = 5.0  # pre-warm at this percentile of the idle time
    tail_percentile: float = 99.0  # keep alive to this one
    min_samples: int = 5
    # Trusted only when the bin counts are this peaked (coefficient of variation, as in ATC'20).
    min_bin_cv: float = 2.0
    max_out_of_range: float = 0.5  # share of idle times longer than the range
    keep_alive_seconds: float = 600.0  # the fallback
    max_samples: int = 1000  # the most recent idle times kept: bounded memory, follows drift


@dataclasses.dataclass(frozen=True)
class Window:
    """Expect the next request between ``prewarm`` and ``keep_alive`` seconds after the last."""

    prewarm: float
    keep_alive: float
    trusted: bool


class IdleTimeHistogram:
    def __init__(self, settings: IdleSettings | None = None) -> None:
        self.settings = settings or IdleSettings()
        self.bins = [0] * math.ceil(self.settings.range_seconds / self.settings.bin_seconds)
        self.out_of_range = 0
        self._gaps: list[float] = []  # sorted, in range; for exact conditional probabilities
        self._recent: collections.deque[float] = collections.deque()  # arrival order
        self._square_sum = 0  # of the bin counts: the trust test is O(1) per request

    @property
    def samples(self) -> int:
        return len(self._gaps) + self.out_of_range

    def observe(self, idle_seconds: float) -> None:
        s = self.settings
        if idle_seconds < 0:
            raise ValueError(f"idle time must be >= 0, got {idle_seconds}")
        self._recent.append(idle_seconds)
        self._count(idle_seconds, +1)
        if len(self._recent) > s.max_samples:
            self._count(self._recent.popleft(), -1)

    def _count(self, idle_seconds: float, sign: int) -> None:
        s = self.settings
        if idle_seconds >= s.range_seconds:
            self.out_of_range += sign
            return
        i = int(idle_seconds // s.bin_seconds)
        self._square_sum += 2 * self.bins[i] + 1 if sign > 0 else 1 - 2 * self.bins[i]
        self.bins[i] += sign
        if sign > 0:
            bisect.insort(self._gaps, idle_seconds)
        else:
            del self._gaps[bisect.bisect_left(self._gaps, idle_seconds)]

    def trusted(self) -> bool:
        s = self.settings
        n = self.samples
        if n < s.min_samples or self.out_of_range > s.max_out_of_range * n:
            return False
        mean = len(self._gaps) / len(self.bins)
        if mean == 0:
            return False
        var = max(self._square_sum / len(self.bins) - mean * mean, 0.0)
        return math.sqrt(var) / mean >= s.min_bin_cv

    def percentile(self, p: float) -> float:
        """The idle time below which ``p`` percent of in-range idle times fall (bin edges, as
        the paper's policy: a head percentile rounds down, a tail percentile up)."""
        total = len(self._gaps)
        if total == 0:
            return 0.0
        target = p / 100.0 * total
        seen = 0
        for i, count in enumerate(self.bins):
            seen += count
            if seen >= target and count:
                edge = i if p < 50 else i + 1
                return edge * self.settings.bin_seconds
        return self.settings.range_seconds

    def window(self) -> Window:
        s = self.settings
        if not self.trusted():
            return Window(0.0, s.keep_alive_seconds, False)
        head = self.percentile(s.head_percentile)
        # Pre-warming saves memory only when the model can be dropped for a while; a margin of
        # 10% keeps the pre-warm ahead of the earliest expected request (as the paper does).
        prewarm = head * 0.9
        return Window(prewarm, self.percentile(s.tail_percentile) * 1.1, True)

    def probability_within(self, since_last: float, horizon: float) -> float:
        """P(next request within ``horizon`` | ``since_last`` seconds idle so far), from the
        observed idle times; 0 when there are none."""
        longer = len(self._gaps) - bisect.bisect_right(self._gaps, since_last) + self.out_of_range
        if longer <= 0:
            return 0.0
        inside = bisect.bisect_right(self._gaps, since_last + horizon) - bisect.bisect_right(
            self._gaps, since_last
        )
        return inside / longer

    def expected_idle(self, since_last: float) -> float | None:
        """The median idle time among those longer than ``since_last``; None when none is."""
        start = bisect.bisect_right(self._gaps, since_last)
        rest = self._gaps[start:]
        if not rest:
            return None
        return rest[len(rest) // 2]
