"""What every simulated policy is: a resident set in simulated time, answering requests.

A load of variant v makes it resident at once and costs v.load_seconds of added latency to the
request that waited for it. ``replay`` runs a policy over a trace and reports cold starts, the
quality-weighted hit rate and the added latency (bench/residency.py, bench/preload.py).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from edged.portfolio.scoring import Option

Options = dict[str, list[Option]]  # model -> usable variants


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
