"""The residency scoring: what it costs to take memory back from a model, and what a load is worth.

Pure functions of numbers passed in; the residency engine (engine.py) is their only caller in the
daemon and in the simulator. One scoring is used everywhere (docs/residency.md). For a resident
variant of model m, with n = predicted requests to m within the horizon H:

    evict     loss = n * (t_load * w_latency + q_now * w_quality)
    downgrade loss = n * (q_now - q_small) * w_quality

An evicted model's next requests wait for a cold load and are not served warm (their quality
counts as lost); a downgraded model keeps serving, at the smaller variant's quality. Actions are
taken in order of loss per byte freed. n is the larger of the decayed request rate * H and the
forecasters' expected requests within H (edged/forecast).
"""

from __future__ import annotations

import dataclasses
import enum
import math
from collections.abc import Callable, Iterable, Sequence

from edged.settings import ResidencySettings

# The weights of the scoring are the residency settings (horizon, latency and quality weights).
ScoringWeights = ResidencySettings


class DecayedRate:
    """Requests per second, exponentially decayed: recent requests count most."""

    __slots__ = ("_decay", "_stamp", "_value")

    def __init__(self, half_life: float) -> None:
        self._decay = math.log(2) / half_life
        self._value = 0.0  # decayed count
        self._stamp: float | None = None

    def observe(self, now: float, count: float = 1.0) -> None:
        self._value = self.count(now) + count
        self._stamp = now

    def count(self, now: float) -> float:
        if self._stamp is None:
            return 0.0
        return self._value * math.exp(-self._decay * max(now - self._stamp, 0.0))

    def rate(self, now: float) -> float:
        """Requests per second (the decayed count over its mean age)."""
        return self.count(now) * self._decay


@dataclasses.dataclass(frozen=True)
class Option:
    """A variant a model could be served by."""

    variant: str
    bytes: int
    quality: float
    load_seconds: float


@dataclasses.dataclass(frozen=True)
class Resident:
    """What the planner needs to know about one resident variant."""

    model: str
    current: Option
    smaller: tuple[Option, ...]  # usable variants smaller than the current one
    predicted_requests: float
    pinned: bool = False
    busy: bool = False  # requests in flight


class ActionKind(enum.StrEnum):
    EVICT = "evict"  # unload: the model's next request waits for a load
    DOWNGRADE = "downgrade"  # serve a smaller variant of the same version instead


@dataclasses.dataclass(frozen=True)
class Action:
    kind: ActionKind
    model: str
    variant: str  # the variant that leaves
    to: str | None  # downgrade target
    freed: int
    loss: float
    reason: str

    @property
    def loss_per_byte(self) -> float:
        return self.loss / max(self.freed, 1)


def evict_loss(r: Resident, w: ScoringWeights) -> float:
    c = r.current
    return r.predicted_requests * (c.load_seconds * w.latency_weight + c.quality * w.quality_weight)


def downgrade_loss(r: Resident, to: Option, w: ScoringWeights) -> float:
    return r.predicted_requests * max(r.current.quality - to.quality, 0.0) * w.quality_weight


def candidate_actions(residents: Iterable[Resident], w: ScoringWeights) -> list[Action]:
    """Every evict and downgrade allowed now, cheapest loss per byte first."""
    actions = []
    for r in residents:
        if r.pinned or r.busy:
            continue
        actions.append(
            Action(
                ActionKind.EVICT,
                r.model,
                r.current.variant,
                None,
                r.current.bytes,
                evict_loss(r, w),
                f"{r.predicted_requests:.2f} predicted requests",
            )
        )
        for option in r.smaller:
            freed = r.current.bytes - option.bytes
            if freed > 0:
                actions.append(
                    Action(
                        ActionKind.DOWNGRADE,
                        r.model,
                        r.current.variant,
                        option.variant,
                        freed,
                        downgrade_loss(r, option, w),
                        f"quality {r.current.quality:.3f} -> {option.quality:.3f}",
                    )
                )
    actions.sort(key=lambda a: (a.loss_per_byte, -a.freed))
    return actions


def plan(residents: Sequence[Resident], need: int, w: ScoringWeights) -> list[Action] | None:
    """Actions (at most one per model) that free at least ``need`` bytes at a low total loss;
    None when even every allowed action would not free enough.

    Greedy by loss per byte, where a later, larger action on a model replaces its earlier one;
    then actions that are not needed are dropped and each remaining one is swapped for the
    cheapest action on its model that still frees enough.
    """
    if need <= 0:
        return []
    candidates = candidate_actions(residents, w)
    chosen: dict[str, Action] = {}
    freed = 0
    for action in candidates:
        previous = chosen.get(action.model)
        if previous is not None:
            if action.freed <= previous.freed:
                continue
            freed -= previous.freed
        chosen[action.model] = action
        freed += action.freed
        if freed >= need:
            return _trim(chosen, candidates, need)
    return None


def _trim(chosen: dict[str, Action], candidates: list[Action], need: int) -> list[Action]:
    freed = sum(a.freed for a in chosen.values())
    for action in sorted(chosen.values(), key=lambda a: -a.loss):
        if freed - action.freed >= need:
            del chosen[action.model]
            freed -= action.freed
    for model in list(chosen):
        for alternative in candidates:
            current = chosen[model]
            if (
                alternative.model == model
                and alternative.loss < current.loss
                and freed - current.freed + alternative.freed >= need
            ):
                freed += alternative.freed - current.freed
                chosen[model] = alternative
    return sorted(chosen.values(), key=lambda a: a.loss_per_byte)


def choose_load(
    options: Sequence[Option],
    free: int,
    residents: Sequence[Resident],
    predicted_requests: float,
    w: ScoringWeights,
) -> tuple[Option, list[Action]] | list[str]:
    """Which variant a cold load should bring in, and what must leave for it.

    The variant worth the most after what making room costs: value = n * quality * w_quality
    (n >= 1: a request is waiting) minus the loss of the evictions and downgrades it needs. So
    the best-quality variant that fits wins unless fitting it would evict something worth more.
    Returns the reasons, one per option, when nothing can be made to fit.
    """
    n = max(predicted_requests, 1.0)
    best = _best_option(
        options,
        free,
        residents,
        w,
        lambda option, displaced: n * option.quality * w.quality_weight - displaced,
    )
    if best is None:
        return [f"{o.variant} needs {o.bytes} bytes" for o in options]
    return best[0], best[1]


def _best_option(
    options: Sequence[Option],
    free: int,
    residents: Sequence[Resident],
    w: ScoringWeights,
    value: Callable[[Option, float], float],
) -> tuple[Option, list[Action], float] | None:
    """The option of highest ``value(option, loss of making room for it)`` among those that can
    be made to fit, with the actions that make room; None when none can."""
    best: tuple[Option, list[Action], float] | None = None
    for option in options:
        actions = plan(residents, option.bytes - free, w)
        if actions is None:
            continue
        v = value(option, sum(a.loss for a in actions))
        if best is None or v > best[2]:
            best = (option, actions, v)
    return best


def startup_reserve(free: int, smallest: int, later_smallest: int) -> int:
    """Bytes a start-up load leaves alone: room for the smallest variants of the models still to
    load (``later_smallest``), but never so much that this model's own smallest variant
    (``smallest``) cannot fit. Nothing is evicted at start, so a greedy pass would give the first
    models their best variants and leave the last ones cold (docs/residency.md "At start")."""
    return min(later_smallest, max(free - smallest, 0))


def preload_choice(
    options: Sequence[Option],
    free: int,
    residents: Sequence[Resident],
    probability: float,
    lead_seconds: float,
    w: ScoringWeights,
) -> tuple[Option, list[Action], float] | None:
    """Which variant a preload should bring in, what must leave for it, and the net gain; None
    when no preload pays for what it displaces.

    ``probability`` is the forecast chance that the model is requested within ``lead_seconds``.
    If it is, the on-demand load would make the same room a moment later anyway, so preloading
    costs only the displaced models' requests that fall inside the lead; if it is not, the room
    was made for nothing. With each action's loss taken over the horizon H:

        benefit = p * (t_load * w_latency + q * w_quality)       (one cold start avoided)
        cost    = sum(action loss) * ((1 - p) + p * lead / H)

    so a likely follower in a pipeline is loaded even into a full budget, and a vague forecast
    only into free memory. A small variant that fits wins over a large one that displaces.
    """
    early = min(lead_seconds / w.horizon_seconds, 1.0)

    def gain(option: Option, displaced: float) -> float:
        benefit = probability * (
            option.load_seconds * w.latency_weight + option.quality * w.quality_weight
        )
        return benefit - displaced * ((1 - probability) + probability * early)

    best = _best_option(options, free, residents, w, gain)
    return best if best is not None and best[2] > 0 else None


def upgrade_target(
    current: Option,
    options: Sequence[Option],
    free: int,
    predicted_requests: float,
    min_requests: float,
) -> Option | None:
    """A better variant for a busy model that fits in the free memory without evicting."""
    if predicted_requests < min_requests or not options:
        return None
    best = max(options, key=lambda o: (o.quality, -o.bytes))
    if best.quality <= current.quality or best.variant == current.variant:
        return None
    return best if best.bytes - current.bytes <= free else None
