"""The baselines edged's residency is measured against, replayed in simulated time.

Baselines serve one fixed variant per model (today's servers serve one file per model), run with
the best and with the smallest variant:

- LRU (llama.cpp's router, ModelMesh);
- Ollama's order: 5-minute keep-alive, expired models unloaded, the soonest-expiring evicted first;
- GreedyDual-Size-Frequency (priority = L + frequency x load cost / size);
- the hybrid idle-time histogram policy of "Serverless in the Wild" (ATC'20) alone: after each
  request a model is unloaded when its histogram says the next one is far, pre-warmed at the head
  percentile and kept to the tail percentile; a 10-minute keep-alive while the histogram is not
  trusted; LRU when memory runs short.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Sequence

from edged.forecast.idle import IdleTimeHistogram
from edged.portfolio.scoring import Option
from edged.sim.policy import Options, Outcome, Policy


class CachePolicy(Policy):
    """One fixed variant per model; evict by ``victim_key`` (smallest first) until it fits."""

    def __init__(self, options: Options, budget: int, pick: str) -> None:
        super().__init__(options, budget)
        chooser: Callable[[list[Option]], Option] = (
            (lambda os: max(os, key=lambda o: (o.quality, -o.bytes)))
            if pick == "best"
            else (lambda os: min(os, key=lambda o: (o.bytes, -o.quality)))
        )
        self.fixed = {m: chooser(os) for m, os in options.items()}
        self.name = f"{self.name} ({pick})"
        self.last_use: dict[str, float] = {}

    def victim_key(self, model: str, t: float) -> float:
        return self.last_use[model]

    def on_evict(self, model: str) -> None:
        pass

    def before(self, t: float) -> None:
        pass

    def make_room(self, t: float, need: int) -> None:
        while self.used() + need > self.budget and self.resident:
            victim = min(self.resident, key=lambda m: self.victim_key(m, t))
            self._drop(victim)
            self.on_evict(victim)

    def request(self, t: float, model: str) -> Outcome:
        self.before(t)
        option = self.fixed[model]
        warm = model in self.resident
        self.touch(model, t)
        if warm:
            self._mark_used(model)
            return Outcome(True, option.quality, 0.0)
        self.make_room(t, option.bytes)
        self.resident[model] = option
        return Outcome(False, option.quality, option.load_seconds)

    def touch(self, model: str, t: float) -> None:
        self.last_use[model] = t


class LruPolicy(CachePolicy):
    name = "LRU"


class OllamaPolicy(CachePolicy):
    name = "Ollama 5-min keep-alive"
    KEEP_ALIVE = 300.0

    def before(self, t: float) -> None:
        for m in [m for m in self.resident if self.last_use[m] + self.KEEP_ALIVE < t]:
            self._drop(m)

    def victim_key(self, model: str, t: float) -> float:
        return self.last_use[model] + self.KEEP_ALIVE  # the soonest to expire goes first


class GdsfPolicy(CachePolicy):
    name = "GDSF"

    def __init__(self, options: Options, budget: int, pick: str) -> None:
        super().__init__(options, budget, pick)
        self.clock = 0.0
        self.freq: dict[str, int] = {}
        self.priority: dict[str, float] = {}

    def touch(self, model: str, t: float) -> None:
        super().touch(model, t)
        self.freq[model] = self.freq.get(model, 0) + 1
        o = self.fixed[model]
        self.priority[model] = self.clock + self.freq[model] * o.load_seconds / max(o.bytes, 1)

    def victim_key(self, model: str, t: float) -> float:
        return self.priority[model]

    def on_evict(self, model: str) -> None:
        self.clock = self.priority[model]


class BeladyPolicy(CachePolicy):
    """A reference, not a baseline: it knows the whole trace and evicts the model whose next
    request is furthest away (Belady's MIN; with unequal sizes close to, not exactly, the
    optimum). It loads on demand only, one fixed variant per model, so it bounds what any
    demand-loading policy serving that variant can reach; only loading ahead of requests
    (preloading) or choosing variants can beat it."""

    name = "Belady (clairvoyant)"

    def __init__(
        self, options: Options, budget: int, pick: str, events: Sequence[tuple[float, str]]
    ) -> None:
        super().__init__(options, budget, pick)
        self.times: dict[str, list[float]] = {m: [] for m in options}
        for t, m in events:
            self.times[m].append(t)

    def victim_key(self, model: str, t: float) -> float:
        times = self.times[model]
        i = bisect.bisect_right(times, t)
        return -(times[i] if i < len(times) else math.inf)


class HybridHistogramPolicy(CachePolicy):
    """The ATC'20 hybrid histogram policy on its own (see the module docstring)."""

    name = "hybrid histogram"

    def __init__(self, options: Options, budget: int, pick: str, interval: float = 5.0) -> None:
        super().__init__(options, budget, pick)
        self.histograms = {m: IdleTimeHistogram() for m in options}
        self.last: dict[str, float] = {}
        self.prewarm_at: dict[str, float] = {}
        self.expires: dict[str, float] = {}
        self.interval = interval
        self.next_round = 0.0

    def before(self, t: float) -> None:
        while self.next_round <= t:
            now = self.next_round
            for m in [m for m in self.resident if self.expires.get(m, 0.0) < now]:
                self._drop(m)
            for m, at in sorted(self.prewarm_at.items(), key=lambda kv: kv[1]):
                if at <= now and m not in self.resident:
                    del self.prewarm_at[m]
                    option = self.fixed[m]
                    self.make_room(now, option.bytes)
                    self.resident[m] = option
                    self._mark_preloaded(m)
            self.next_round += self.interval

    def touch(self, model: str, t: float) -> None:
        super().touch(model, t)
        last = self.last.get(model)
        if last is not None:
            self.histograms[model].observe(t - last)
        self.last[model] = t

    def request(self, t: float, model: str) -> Outcome:
        outcome = super().request(t, model)
        window = self.histograms[model].window()
        self.prewarm_at.pop(model, None)
        if window.prewarm > self.interval:
            # The next request is far: give the memory back now, come back at the head percentile.
            self._unused_preloads.discard(model)
            self.resident.pop(model, None)
            self.prewarm_at[model] = t + window.prewarm
        self.expires[model] = t + window.keep_alive
        return outcome
