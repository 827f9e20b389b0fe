"""The residency engine: every decision about what is resident, as a pure function of a snapshot.

The daemon's portfolio (portfolio.py) and the simulator (edged/sim) both describe their state as a
``Snapshot`` (the clock, the working budget, and per model its usable variants, what is resident,
the requests it expects, pins, whether it is busy) and carry out what the engine answers:

- ``place``: which variant a load brings in and what must leave for it (a request, Load,
  the start-up pass);
- ``shed``: what leaves when more is held than the budget allows;
- ``tick``: shed when over budget, otherwise the one upgrade worth making now;
- ``preload``: whether loading a model ahead of demand pays for what it displaces, and which
  models the forecasters say to try (``preload_round``, ``followers``).

No clock is read, no memory measured and nothing loaded here: tests drive it with numbers, and
the daemon and the simulator cannot drift apart (bench/residency.py and bench/preload.py run it).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterator, Mapping, Sequence

from edged.forecast.forecaster import Forecaster
from edged.portfolio.scoring import (
    Action,
    Option,
    Resident,
    candidate_actions,
    choose_load,
    plan,
    preload_choice,
    startup_reserve,
    upgrade_target,
)
from edged.settings import PreloadSettings, ResidencySettings


@dataclasses.dataclass(frozen=True)
class ModelState:
    """One model as the engine sees it."""

    name: str
    # Usable variants of the serving version, with the bytes a load of each would be charged.
    options: tuple[Option, ...]
    # The resident variant, its bytes as accounted now; None when nothing is loaded.
    resident: Option | None = None
    predicted: float = 0.0  # requests expected within the horizon
    pinned: bool = False  # a pin holds the resident variant: never evicted, swapped or upgraded
    busy: bool = False  # requests in flight (or a load of it under way): it cannot leave now
    upgrade_after: float = 0.0  # no automatic upgrade before this time (after an overshoot)
    # Usable variants of the resident variant's version when that is not the serving one (a
    # version change in progress); None: the same as ``options``.
    resident_options: tuple[Option, ...] | None = None

    @property
    def alternatives(self) -> tuple[Option, ...]:
        """Variants the resident one could be swapped for (downgrades and upgrades)."""
        return self.options if self.resident_options is None else self.resident_options


@dataclasses.dataclass(frozen=True)
class Snapshot:
    now: float
    budget: int
    models: Mapping[str, ModelState]
    reserved: int = 0  # bytes promised to loads in flight outside the memory lock

    @functools.cached_property
    def accounted(self) -> int:
        return sum(m.resident.bytes for m in self.models.values() if m.resident is not None)

    @property
    def free(self) -> int:
        return self.budget - self.accounted - self.reserved

    def residents(self, exclude: str | None = None) -> list[Resident]:
        """What the scoring may take memory from: every resident model but ``exclude``."""
        out = []
        for m in self.models.values():
            current = m.resident
            if current is None or m.name == exclude:
                continue
            smaller = tuple(
                o
                for o in m.alternatives
                if o.bytes < current.bytes and o.variant != current.variant
            )
            out.append(
                Resident(m.name, current, smaller, m.predicted, pinned=m.pinned, busy=m.busy)
            )
        return out


@dataclasses.dataclass(frozen=True)
class Placement:
    """Load ``option`` for ``model`` after carrying out ``actions`` (in order)."""

    model: str
    option: Option
    actions: tuple[Action, ...] = ()
    gain: float = 0.0  # for a preload: the expected gain net of what it displaces


@dataclasses.dataclass(frozen=True)
class NoRoom:
    """Nothing can be made to fit now; ``reasons`` says what each variant needs."""

    model: str
    reasons: tuple[str, ...]
    free: int


@dataclasses.dataclass(frozen=True)
class Shed:
    """What leaves, in order; ``enough`` is False when even all of it cannot get within the
    budget (pinned or busy models hold the rest)."""

    actions: tuple[Action, ...]
    enough: bool


@dataclasses.dataclass(frozen=True)
class Upgrade:
    model: str
    current: Option
    target: Option


class ResidencyEngine:
    def __init__(self, settings: ResidencySettings, preload: PreloadSettings | None = None) -> None:
        self.settings = settings
        self.preload_settings = preload or PreloadSettings()

    # -- loads ----------------------------------------------------------------------------------

    def place(
        self,
        snapshot: Snapshot,
        model: str,
        *,
        variant: str | None = None,
        evict: bool = True,
        reserve: int = 0,
    ) -> Placement | NoRoom:
        """The variant worth the most after what making room for it costs (scoring.choose_load).

        The model's own resident variant (another version, or another variant for an explicit
        ``variant``) counts as free: it is replaced. ``evict=False`` takes only free memory;
        ``reserve`` bytes of it are left alone (the start-up pass).
        """
        m = snapshot.models[model]
        options = [o for o in m.options if variant is None or o.variant == variant]
        own = m.resident.bytes if m.resident is not None else 0
        free = snapshot.free + own - reserve
        residents = snapshot.residents(exclude=model) if evict else []
        choice = choose_load(options, free, residents, m.predicted, self.settings)
        if isinstance(choice, list):
            return NoRoom(model, tuple(choice), max(free, 0))
        option, actions = choice
        return Placement(model, option, tuple(actions))

    def startup_order(self, snapshot: Snapshot) -> list[str]:
        """Busiest first (the replayed history), then by name."""
        return sorted(snapshot.models, key=lambda n: (-snapshot.models[n].predicted, n))

    def place_at_start(
        self, snapshot: Snapshot, model: str, later: Sequence[str]
    ) -> Placement | NoRoom:
        """A start-up load: nothing is evicted, and room is left for the smallest variants of
        the models still to load (``later``), so every model that can be resident is, at the
        best quality left for it (docs/residency.md "At start")."""
        smallest = {
            n: min(o.bytes for o in snapshot.models[n].options)
            for n in (model, *later)
            if snapshot.models[n].options
        }
        reserve = startup_reserve(
            snapshot.free, smallest.get(model, 0), sum(smallest.get(n, 0) for n in later)
        )
        return self.place(snapshot, model, evict=False, reserve=reserve)

    # -- memory pressure ------------------------------------------------------------------------

    def shed(self, snapshot: Snapshot, protect: str | None = None) -> Shed:
        """What should leave to get within the budget, cheapest loss first (at most one action
        per model). When not enough may leave (pinned or busy), everything that can leaves: one
        action per model, the one freeing the most."""
        over = snapshot.accounted - snapshot.budget
        if over <= 0:
            return Shed((), True)
        residents = snapshot.residents(exclude=protect)
        actions = plan(residents, over, self.settings)
        if actions is not None:
            return Shed(tuple(actions), True)
        most: dict[str, Action] = {}
        for action in candidate_actions(residents, self.settings):
            if action.model not in most or action.freed > most[action.model].freed:
                most[action.model] = action
        return Shed(tuple(sorted(most.values(), key=lambda a: a.loss_per_byte)), False)

    def upgrade(self, snapshot: Snapshot) -> Upgrade | None:
        """The first model (by name) worth moving back to a better variant that fits in free
        memory without evicting: in use, not pinned, not busy, not backed off."""
        for name in sorted(snapshot.models):
            m = snapshot.models[name]
            current = m.resident
            if current is None or m.busy or m.pinned or m.upgrade_after > snapshot.now:
                continue
            if not any(o.variant == current.variant for o in m.alternatives):
                continue
            target = upgrade_target(
                current,
                m.alternatives,
                snapshot.free,
                m.predicted,
                self.settings.upgrade_min_requests,
            )
            if target is not None:
                return Upgrade(name, current, target)
        return None

    def tick(self, snapshot: Snapshot) -> Shed | Upgrade | None:
        """The residency tick: shed when over budget, else at most one upgrade."""
        if snapshot.accounted > snapshot.budget:
            return self.shed(snapshot)
        return self.upgrade(snapshot)

    def backoff_until(self, now: float) -> float:
        """After an upgrade that did not fit once loaded: when that model may try again."""
        return now + self.settings.upgrade_backoff_seconds

    # -- preloading -----------------------------------------------------------------------------

    def preload(
        self, snapshot: Snapshot, model: str, probability: float, lead: float
    ) -> Placement | None:
        """Load ``model`` ahead of demand when it pays for what it displaces
        (scoring.preload_choice); None when it does not or it is already there."""
        m = snapshot.models[model]
        if m.resident is not None or m.busy:
            return None
        choice = preload_choice(
            m.options,
            snapshot.free,
            snapshot.residents(exclude=model),
            probability,
            lead,
            self.settings,
        )
        if choice is None:
            return None
        option, actions, gain = choice
        return Placement(model, option, tuple(actions), gain)

    def preload_round(
        self, snapshot: Snapshot, forecaster: Forecaster, now: float
    ) -> list[tuple[str, float]]:
        """The scheduled round: models not resident whose next request is likely within the
        lead, most likely first, at most ``max_per_round``. ``now`` is the forecasters' clock
        (wall time in the daemon: their calendars need it)."""
        s = self.preload_settings
        absent = (
            n for n, m in snapshot.models.items() if m.resident is None and not m.busy and m.options
        )
        return forecaster.likely(absent, now, s.lead_seconds, s.min_probability, s.max_per_round)

    @staticmethod
    def followers(
        forecaster: Forecaster, model: str, present: Callable[[str], bool]
    ) -> Iterator[tuple[str, float]]:
        """Models likely to be requested right after ``model`` (pipelines), but for those
        ``present`` says are resident or on their way. Called on every arrival: no snapshot."""
        for follower, probability in forecaster.transitions.followers(
            model, forecaster.min_transition_probability
        ):
            if not present(follower):
                yield follower, probability
