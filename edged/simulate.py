"""Residency and preloading policies replayed on a request trace in simulated time.

edged's policy here is the daemon's own decision code (portfolio/residency.py, forecast/), driven
by a virtual clock instead of real loads: a load of variant v makes it resident at once and costs
v.load_seconds of added latency to the request that waited for it; a preload started at t is ready
at t + load_seconds, and a request arriving before that waits for the rest.

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
import dataclasses
import math
from collections.abc import Callable, Sequence

from edged.forecast.forecaster import Forecaster
from edged.forecast.idle import IdleTimeHistogram
from edged.portfolio.residency import (
    Action,
    DecayedRate,
    Option,
    Resident,
    ScoringWeights,
    choose_load,
    preload_choice,
    startup_reserve,
    upgrade_target,
)

Options = dict[str, list[Option]]  # model -> usable variants


@dataclasses.dataclass(frozen=True)
class SimPreload:
    interval: float = 5.0
    lead: float = 30.0
    min_probability: float = 0.3
    transition_window: float = 2.0
    max_per_round: int = 4


@dataclasses.dataclass
class Outcome:
    warm: bool
    quality: float
    added_seconds: float


class Policy:
    name = ""

    def __init__(self, options: Options, budget: int) -> None:
        self.options = options
        self.budget = budget
        self.resident: dict[str, Option] = {}
        self.preloads = 0
        self.preload_hits = 0
        self.preload_wasted = 0
        self._unused_preloads: set[str] = set()

    def used(self) -> int:
        return sum(o.bytes for o in self.resident.values())

    def request(self, t: float, model: str) -> Outcome:
        raise NotImplementedError

    def _drop(self, model: str) -> None:
        del self.resident[model]
        if model in self._unused_preloads:
            self._unused_preloads.discard(model)
            self.preload_wasted += 1

    def _mark_preloaded(self, model: str) -> None:
        self.preloads += 1
        self._unused_preloads.add(model)

    def _mark_used(self, model: str) -> None:
        if model in self._unused_preloads:
            self._unused_preloads.discard(model)
            self.preload_hits += 1


class EdgedPolicy(Policy):
    """The daemon's residency scoring; with ``preload``, its forecasters and preloader too."""

    name = "edged"

    def __init__(
        self,
        options: Options,
        budget: int,
        weights: ScoringWeights | None = None,
        preload: SimPreload | None = None,
        start_loaded: bool = False,
    ) -> None:
        super().__init__(options, budget)
        # The daemon loads what fits before it reports ready (Portfolio.load_all); with
        # ``start_loaded`` the replay does the same before the first request.
        self._start_pending = start_loaded
        self.w = weights or ScoringWeights()
        self.rates = {m: DecayedRate(self.w.half_life_seconds) for m in options}
        self.next_upgrade = 0.0
        self.preload = preload
        self.forecaster = (
            Forecaster(
                transition_window=preload.transition_window,
                min_transition_probability=preload.min_probability,
            )
            if preload
            else None
        )
        self.next_preload = 0.0
        self.ready_at: dict[str, float] = {}
        if preload is None:
            self.name = "edged (no preloading)"
        elif not start_loaded:
            self.name = "edged (empty start)"

    def _start(self, t: float) -> None:
        """Portfolio.load_all: busiest first, each load leaving room for the smallest variants of
        the models after it, nothing evicted; counted as preloads (loads ahead of demand), so the
        unused ones count as wasted."""
        self._start_pending = False
        order = sorted(self.options, key=lambda m: (-self.predicted(m, t), m))
        smallest = {m: min(o.bytes for o in self.options[m]) for m in order}
        for i, m in enumerate(order):
            free = self.budget - self.used()
            reserve = startup_reserve(free, smallest[m], sum(smallest[x] for x in order[i + 1 :]))
            choice = choose_load(self.options[m], free - reserve, [], self.predicted(m, t), self.w)
            if isinstance(choice, list):
                continue  # nothing fits: loaded on demand later
            option, _ = choice
            self.resident[m] = option
            self._mark_preloaded(m)

    def predicted(self, model: str, t: float) -> float:
        n = self.rates[model].rate(t) * self.w.horizon_seconds
        if self.forecaster is not None:
            n = max(n, self.forecaster.forecast(model, t, self.w.horizon_seconds).expected_requests)
        return n

    def residents(self, t: float, exclude: str) -> list[Resident]:
        out = []
        for m, current in self.resident.items():
            if m == exclude:
                continue
            smaller = tuple(o for o in self.options[m] if o.bytes < current.bytes)
            busy = self.ready_at.get(m, 0.0) > t  # a preload in flight is not displaced
            out.append(Resident(m, current, smaller, self.predicted(m, t), busy=busy))
        return out

    def _apply(self, actions: Sequence[Action]) -> None:
        for action in actions:
            if action.kind == "evict":
                self._drop(action.model)
            else:
                self.resident[action.model] = next(
                    o for o in self.options[action.model] if o.variant == action.to
                )

    def _upgrade(self, t: float) -> None:
        for m, current in sorted(self.resident.items()):
            target = upgrade_target(
                current, self.options[m], self.budget - self.used(), self.predicted(m, t), 1.0
            )
            if target is not None:
                self.resident[m] = target
                return

    def _preload(self, t: float, model: str, probability: float, lead: float) -> None:
        if model in self.resident:
            return
        choice = preload_choice(
            self.options[model],
            self.budget - self.used(),
            self.residents(t, model),
            probability,
            lead,
            self.w,
        )
        if choice is None:
            return
        option, actions, _ = choice
        self._apply(actions)
        self.resident[model] = option
        self.ready_at[model] = t + option.load_seconds
        self._mark_preloaded(model)

    def _preload_round(self, t: float) -> None:
        assert self.preload is not None and self.forecaster is not None
        absent = (m for m in self.options if m not in self.resident)
        lead, min_p = self.preload.lead, self.preload.min_probability
        for m, p in self.forecaster.likely(absent, t, lead, min_p, self.preload.max_per_round):
            self._preload(t, m, p, lead)

    def request(self, t: float, model: str) -> Outcome:
        if self._start_pending:
            self._start(t)
        if self.preload is not None:
            while self.next_preload <= t:
                self._preload_round(self.next_preload)
                self.next_preload += self.preload.interval
        if t >= self.next_upgrade:
            self._upgrade(t)
            self.next_upgrade = t + 1.0
        self.rates[model].observe(t)
        followers = self.forecaster.observe(t, model) if self.forecaster is not None else []
        current = self.resident.get(model)
        if current is not None:
            self._mark_used(model)
            ready = self.ready_at.get(model, 0.0)
            outcome = (
                Outcome(False, current.quality, ready - t)
                if ready > t
                else Outcome(True, current.quality, 0.0)
            )
        else:
            choice = choose_load(
                self.options[model],
                self.budget - self.used(),
                self.residents(t, model),
                self.predicted(model, t),
                self.w,
            )
            assert not isinstance(choice, list), choice
            option, actions = choice
            self._apply(actions)
            self.resident[model] = option
            self.ready_at.pop(model, None)
            outcome = Outcome(False, option.quality, option.load_seconds)
        for follower, probability in followers:
            assert self.preload is not None
            self._preload(t, follower, probability, self.preload.transition_window)
        return outcome


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


def replay(policy: Policy, events: Sequence[tuple[float, str]]) -> dict[str, float]:
    cold = 0
    weighted = 0.0
    added = 0.0
    for t, model in events:
        outcome = policy.request(t, model)
        if outcome.warm:
            weighted += outcome.quality
        else:
            cold += 1
            added += outcome.added_seconds
    n = max(len(events), 1)
    return {
        "requests": len(events),
        "cold_starts": cold,
        "cold_rate": cold / n,
        "qwhr": weighted / n,
        "added_ms": added / n * 1e3,
        "preloads": policy.preloads,
        "preload_hits": policy.preload_hits,
        "wasted_share": policy.preload_wasted / policy.preloads if policy.preloads else 0.0,
    }
