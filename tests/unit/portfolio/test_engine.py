"""The residency engine on snapshots made of numbers: what it places, sheds, upgrades and
preloads, and the simulator driving the same engine with the daemon's settings."""

from __future__ import annotations

from edged.forecast.forecaster import Forecaster
from edged.portfolio.engine import (
    ModelState,
    NoRoom,
    Placement,
    ResidencyEngine,
    Shed,
    Snapshot,
    Upgrade,
)
from edged.portfolio.scoring import ActionKind, Option
from edged.settings import PreloadSettings, ResidencySettings
from edged.sim.edged_policy import EdgedPolicy

MB = 10**6
FP32 = Option("fp32", 40 * MB, 1.0, 0.4)
INT8 = Option("int8", 10 * MB, 0.97, 0.1)
ENGINE = ResidencyEngine(ResidencySettings())


def state(
    name: str, resident: Option | None = None, predicted: float = 5.0, **kw: object
) -> ModelState:
    return ModelState(name, (FP32, INT8), resident, predicted, **kw)  # type: ignore[arg-type]


def snap(budget: int, *models: ModelState, now: float = 100.0) -> Snapshot:
    return Snapshot(now, budget, {m.name: m for m in models})


def test_a_load_takes_the_best_variant_that_fits_without_displacing_anything_worth_more() -> None:
    decision = ENGINE.place(snap(100 * MB, state("a")), "a")
    assert isinstance(decision, Placement) and decision.option == FP32 and not decision.actions
    # Only int8 fits next to a busy fp32 model: int8, nothing evicted.
    decision = ENGINE.place(snap(50 * MB, state("a"), state("b", FP32, busy=True)), "a")
    assert isinstance(decision, Placement) and decision.option == INT8 and not decision.actions


def test_a_load_downgrades_an_idle_neighbour_when_that_costs_least() -> None:
    decision = ENGINE.place(snap(50 * MB, state("a"), state("b", FP32, predicted=0.01)), "a")
    assert isinstance(decision, Placement)
    assert decision.option == FP32
    assert [(x.kind, x.model) for x in decision.actions] in (
        [(ActionKind.EVICT, "b")],
        [(ActionKind.DOWNGRADE, "b")],
    )


def test_the_models_own_resident_variant_counts_as_free() -> None:
    """A new version of a model that is resident replaces it: its bytes are free for the load."""
    decision = ENGINE.place(snap(40 * MB, state("a", FP32)), "a")
    assert isinstance(decision, Placement) and decision.option == FP32


def test_nothing_fits_says_what_each_variant_needs() -> None:
    decision = ENGINE.place(snap(5 * MB, state("a"), state("b", FP32, pinned=True)), "a")
    assert isinstance(decision, NoRoom)
    assert decision.reasons == (f"fp32 needs {40 * MB} bytes", f"int8 needs {10 * MB} bytes")


def test_start_up_leaves_room_for_the_models_still_to_load() -> None:
    s = snap(50 * MB, state("a", predicted=9.0), state("b", predicted=1.0))
    order = ENGINE.startup_order(s)
    assert order == ["a", "b"]  # busiest first
    decision = ENGINE.place_at_start(s, "a", order[1:])
    # fp32 (40 MB) would leave 10 MB: exactly b's int8, so fp32 is allowed; a budget of 45 MB
    # would not allow it.
    assert isinstance(decision, Placement) and decision.option == FP32
    tight = ENGINE.place_at_start(snap(45 * MB, *s.models.values()), "a", order[1:])
    assert isinstance(tight, Placement) and tight.option == INT8


def test_shedding_frees_enough_or_says_it_cannot() -> None:
    over = snap(30 * MB, state("a", FP32, predicted=0.5))
    shed = ENGINE.shed(over)
    assert shed.enough and [(a.kind, a.to) for a in shed.actions] == [
        (ActionKind.DOWNGRADE, "int8")
    ]
    pinned = snap(30 * MB, state("a", FP32, pinned=True), state("b", INT8))
    shed = ENGINE.shed(pinned)
    assert not shed.enough  # a's 40 MB alone are over: evicting b is all that may happen
    assert [(a.kind, a.model) for a in shed.actions] == [(ActionKind.EVICT, "b")]


def test_the_tick_sheds_when_over_and_upgrades_otherwise() -> None:
    assert isinstance(ENGINE.tick(snap(30 * MB, state("a", FP32))), Shed)
    upgrade = ENGINE.tick(snap(100 * MB, state("b", INT8), state("a", INT8)))
    assert upgrade == Upgrade("a", INT8, FP32)  # the first by name


def test_no_upgrade_for_pinned_busy_backed_off_or_idle_models() -> None:
    for model in (
        state("a", INT8, pinned=True),
        state("a", INT8, busy=True),
        state("a", INT8, upgrade_after=200.0),
        state("a", INT8, predicted=0.5),  # under upgrade_min_requests (1)
    ):
        assert ENGINE.upgrade(snap(100 * MB, model)) is None, model
    eager = ResidencyEngine(ResidencySettings(upgrade_min_requests=0.0))
    assert eager.upgrade(snap(100 * MB, state("a", INT8, predicted=0.5))) is not None
    assert ENGINE.backoff_until(100.0) == 100.0 + ResidencySettings().upgrade_backoff_seconds


def test_a_preload_pays_only_for_what_it_displaces() -> None:
    free = snap(100 * MB, state("a", predicted=0.0))
    decision = ENGINE.preload(free, "a", probability=0.9, lead=30.0)
    assert isinstance(decision, Placement) and decision.option == FP32 and decision.gain > 0
    assert ENGINE.preload(snap(100 * MB, state("a", FP32)), "a", 0.9, 30.0) is None
    # A vague forecast never displaces a busy neighbour's best variant.
    full = snap(45 * MB, state("a", predicted=0.0), state("b", FP32, predicted=50.0))
    decision = ENGINE.preload(full, "a", probability=0.05, lead=30.0)
    assert decision is None or not decision.actions


def test_the_preload_round_asks_the_forecasters_about_absent_models_only() -> None:
    forecaster = Forecaster()
    for i in range(40):
        forecaster.observe(i * 10.0, "a")
        forecaster.observe(i * 10.0, "b")
    engine = ResidencyEngine(ResidencySettings(), PreloadSettings(min_probability=0.3))
    s = snap(100 * MB, state("a", FP32), state("b"), now=400.0)
    assert [m for m, _ in engine.preload_round(s, forecaster, now=400.0)] == ["b"]


def _sim_with_int8_resident(**kw: object) -> EdgedPolicy:
    policy = EdgedPolicy({"m": [FP32, INT8], "n": [INT8]}, 100 * MB, **kw)  # type: ignore[arg-type]
    for t in range(20):
        policy.request(float(t), "m")
    policy.resident["m"] = INT8  # as if memory had been short earlier
    return policy


def test_the_simulator_upgrades_as_the_daemon_does() -> None:
    """The simulator runs the daemon's engine: it upgrades a busy model, but not a pinned one
    and not below the configured upgrade_min_requests (an earlier copy hard-coded 1 and ignored
    pins)."""
    policy = _sim_with_int8_resident()
    policy.request(30.0, "n")
    assert policy.resident["m"] == FP32
    pinned = _sim_with_int8_resident(pinned=frozenset({"m"}))
    pinned.request(30.0, "n")
    assert pinned.resident["m"] == INT8
    strict = _sim_with_int8_resident(residency=ResidencySettings(upgrade_min_requests=1e6))
    strict.request(30.0, "n")
    assert strict.resident["m"] == INT8
