"""edged's residency in simulated time: the daemon's own engine (portfolio/engine.py) and
forecasters, driven by a virtual clock instead of real loads.

This module only keeps the simulated state (what is resident, request rates, when a preload
completes) and carries out what the engine decides, in the daemon's order: the start-up pass, the
scheduled preload rounds, the residency tick (shed or upgrade, once per ``tick_seconds``), then the
request itself (warm, or placed by the engine) and the pipeline followers it announces. A preload
started at t is ready at t + load_seconds; a request arriving before that waits for the rest.
Loads measure exactly what was planned here, so the daemon's re-planning after a load that
measured more never triggers.
"""

from __future__ import annotations

from edged.forecast.forecaster import Forecaster
from edged.portfolio.engine import ModelState, NoRoom, Placement, ResidencyEngine, Shed, Snapshot
from edged.portfolio.scoring import Action, ActionKind, DecayedRate, Option
from edged.settings import PreloadSettings, ResidencySettings
from edged.sim.policy import Options, Outcome, Policy


class EdgedPolicy(Policy):
    """The daemon's residency engine; with ``preload``, its forecasters and preloader too."""

    name = "edged"

    def __init__(
        self,
        options: Options,
        budget: int,
        residency: ResidencySettings | None = None,
        preload: PreloadSettings | None = None,
        start_loaded: bool = False,
        pinned: frozenset[str] = frozenset(),
        tick_seconds: float = 1.0,
    ) -> None:
        super().__init__(options, budget)
        self.settings = residency or ResidencySettings()
        self.preload = preload
        self.engine = ResidencyEngine(self.settings, preload)
        # The daemon loads what fits before it reports ready (Portfolio.load_all); with
        # ``start_loaded`` the replay does the same before the first request.
        self._start_pending = start_loaded
        self.pinned = pinned
        self.tick_seconds = tick_seconds
        # Best quality first, as the daemon lists a version's usable variants.
        self._sorted = {
            m: tuple(sorted(os, key=lambda o: (-o.quality, o.bytes))) for m, os in options.items()
        }
        self.rates = {m: DecayedRate(self.settings.half_life_seconds) for m in options}
        self.forecaster = (
            Forecaster(
                transition_window=preload.transition_window_seconds,
                min_transition_probability=preload.min_probability,
            )
            if preload
            else None
        )
        self.next_tick = 0.0
        self.next_preload = 0.0
        self.ready_at: dict[str, float] = {}
        self._observed = 0  # requests fed to the rates and forecasters
        self._snapshot: Snapshot | None = None
        self._snapshot_key: tuple[float, int] | None = None
        self._snapshot_resident: dict[str, Option] = {}
        if preload is None:
            self.name = "edged (no preloading)"
        elif not start_loaded:
            self.name = "edged (empty start)"

    # -- the engine's view ----------------------------------------------------------------------

    def predicted(self, model: str, t: float) -> float:
        n = self.rates[model].rate(t) * self.settings.horizon_seconds
        if self.forecaster is not None:
            forecast = self.forecaster.forecast(model, t, self.settings.horizon_seconds)
            n = max(n, forecast.expected_requests)
        return n

    def snapshot(self, t: float) -> Snapshot:
        # Several decisions at one instant see the same forecasts: computed once per instant and
        # state of the learners (the simulator's hot loop; the daemon asks far less often).
        key = (t, self._observed)
        if self._snapshot_key == key and self._snapshot_resident == self.resident:
            assert self._snapshot is not None
            return self._snapshot
        snapshot = Snapshot(
            t,
            self.budget,
            {
                m: ModelState(
                    m,
                    self._sorted[m],
                    self.resident.get(m),
                    self.predicted(m, t),
                    pinned=m in self.pinned,
                    busy=self.ready_at.get(m, 0.0) > t,  # a preload in flight
                )
                for m in self.options
            },
        )
        self._snapshot, self._snapshot_key = snapshot, key
        self._snapshot_resident = dict(self.resident)
        return snapshot

    # -- carrying out decisions -----------------------------------------------------------------

    def _apply(self, action: Action) -> None:
        if action.kind is ActionKind.EVICT:
            self._drop(action.model)
        else:
            self.resident[action.model] = next(
                o for o in self.options[action.model] if o.variant == action.to
            )

    def _carry_out(self, placement: Placement) -> None:
        for action in placement.actions:
            self._apply(action)
        self.resident[placement.model] = placement.option

    def _start(self, t: float) -> None:
        """Portfolio.load_all; loads ahead of demand count as preloads (unused ones as waste)."""
        self._start_pending = False
        order = self.engine.startup_order(self.snapshot(t))
        for i, m in enumerate(order):
            decision = self.engine.place_at_start(self.snapshot(t), m, order[i + 1 :])
            if isinstance(decision, NoRoom):
                continue  # loaded on demand later
            self._carry_out(decision)
            self._mark_preloaded(m)

    def _tick(self, t: float) -> None:
        decision = self.engine.tick(self.snapshot(t))
        if isinstance(decision, Shed):
            for action in decision.actions:
                self._apply(action)
        elif decision is not None:
            self.resident[decision.model] = decision.target

    def _preload(self, t: float, model: str, probability: float, lead: float) -> None:
        decision = self.engine.preload(self.snapshot(t), model, probability, lead)
        if decision is None:
            return
        self._carry_out(decision)
        self.ready_at[model] = t + decision.option.load_seconds
        self._mark_preloaded(model)

    def preload_round(self, t: float) -> None:
        """One scheduled round of the preloader at time ``t``."""
        assert self.preload is not None and self.forecaster is not None
        for m, p in self.engine.preload_round(self.snapshot(t), self.forecaster, t):
            self._preload(t, m, p, self.preload.lead_seconds)

    # -- a request ------------------------------------------------------------------------------

    def request(self, t: float, model: str) -> Outcome:
        if self._start_pending:
            self._start(t)
        if self.preload is not None:
            while self.next_preload <= t:
                self.preload_round(self.next_preload)
                self.next_preload += self.preload.interval_seconds
        if t >= self.next_tick:
            self._tick(t)
            self.next_tick = t + self.tick_seconds
        self.rates[model].observe(t)
        self._observed += 1
        followers: list[tuple[str, float]] = []
        if self.forecaster is not None:
            self.forecaster.observe(t, model)
            # Checked for presence when each preload runs, after this request is served.
            followers = list(self.engine.followers(self.forecaster, model, lambda m: False))
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
            decision = self.engine.place(self.snapshot(t), model)
            assert not isinstance(decision, NoRoom), decision
            self._carry_out(decision)
            self.ready_at.pop(model, None)
            outcome = Outcome(False, decision.option.quality, decision.option.load_seconds)
        for follower, probability in followers:
            assert self.preload is not None
            self._preload(t, follower, probability, self.preload.transition_window_seconds)
        return outcome
