"""A hypothesis state machine over the real portfolio (real onnxruntime sessions) under
memory pressure: after every step settles, the accounted bytes fit the budget, pinned variants
stay, nothing is unloaded under a lease, and every request is served."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path
from typing import Any

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from edged.errors import EdgedError, ErrorCode
from edged.portfolio.budget import SystemMemory
from edged.portfolio.journal import CrashJournal
from edged.portfolio.portfolio import Portfolio
from edged.portfolio.slot import Handle, Lease
from edged.runtime.base import example_inputs
from edged.store.store import ModelStore
from tests.portfolios import make_settings, mlp_family

MODELS = ("a", "b", "c", "d")
_WORK = Path(tempfile.mkdtemp(prefix="edged-machine-"))


def _build_store() -> tuple[ModelStore, int]:
    store = ModelStore(_WORK / "store")
    if not store.models():
        src = _WORK / "src"
        src.mkdir(exist_ok=True)
        for seed, name in enumerate(MODELS):
            store.import_dir(mlp_family(src, name, (256, 512, 512, 64), seed=seed))
    portfolio = Portfolio(store, CrashJournal(_WORK / "probe-journal"), make_settings())

    async def validate() -> int:
        biggest = 0
        for name in MODELS:
            for variant in store.manifest(name, "1").variants:
                result = await portfolio.validate(variant)
                assert result.usable, result.reason
                biggest = max(biggest, portfolio.expected_bytes(variant, result))
        return biggest

    biggest = asyncio.run(validate())
    portfolio.loader.shutdown()  # a throwaway portfolio, used to probe once
    portfolio.journal.close()
    return store, biggest


class PressureState:
    """The machine's memory, as the daemon reads it: available bytes and PSI."""

    def __init__(self, root: Path) -> None:
        self.proc = root / "proc"
        (self.proc / "pressure").mkdir(parents=True, exist_ok=True)
        self.available = 8 << 30
        self.set_psi(0.0)

    def set_psi(self, value: float) -> None:
        (self.proc / "pressure" / "memory").write_text(f"some avg10={value:.2f} avg60=0\n")

    def system(self) -> SystemMemory:
        return SystemMemory(
            proc=self.proc, cgroup_root=self.proc / "no-cgroup", available=lambda: self.available
        )


class ResidencyMachine(RuleBasedStateMachine):
    store: ModelStore
    biggest: int

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.tmp = Path(tempfile.mkdtemp(dir=_WORK))
        self.pressure = PressureState(self.tmp)
        self.budget = int(self.biggest * 2.5)
        # A virtual clock, one second per step: request rates (and so every decision that
        # weighs them) replay the same way when hypothesis shrinks or re-runs an example.
        self.now = 0.0
        self.portfolio = Portfolio(
            self.store,
            CrashJournal(self.tmp / "journal"),
            make_settings(
                memory={
                    "budget": self.budget,
                    "available_floor": 1 << 30,
                    "psi_threshold": 20.0,
                    "load_timeout_seconds": 0.5,
                },
                server={"drain_seconds": 0.5},
                # Upgrade whenever memory allows, busy or not: more variant changes to check.
                residency={"upgrade_min_requests": 0.0},
            ),
            system=self.pressure.system(),
            clock=lambda: self.now,
        )
        self.portfolio.journal.start()
        self.portfolio.refresh()
        self.held: list[Lease] = []
        self.holds = 0
        self.pinned_resident: dict[str, str] = {}

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def settle(self) -> None:
        self.now += 1.0
        self.run(self.portfolio.tick())

    @rule(model=st.sampled_from(MODELS))
    def request(self, model: str) -> None:
        async def serve() -> None:
            lease = await self.portfolio.lease(model, "")
            try:
                runtime = lease.handle.runtime
                outputs = runtime.infer(example_inputs(runtime.inputs))
                assert outputs["logits"].shape == (1, 64)
            finally:
                lease.release()

        self.expect_served(model, serve())
        self.settle()

    def expect_served(self, model: str, coro: Any, variant: str | None = None) -> Any:
        """Every request is served, unless the machine is so short of memory that even the
        model's smallest variant (or the one asked for) cannot fit: then RESOURCE_EXHAUSTED,
        naming the model."""
        try:
            return self.run(coro)
        except EdgedError as exc:
            # As the portfolio charges a load: the probe's figure times the observed correction.
            smallest = min(
                self.portfolio.expected_bytes(v, self.portfolio.verdict(v).result)
                * self.portfolio.correction
                for v in self.store.manifest(model, "1").variants
                if variant is None or v.id == variant
            )
            assert exc.code is ErrorCode.RESOURCE_EXHAUSTED, exc.message
            assert f"model {model}" in exc.message
            assert self.portfolio.reading.bytes - self.protected() < smallest, exc.message
            return None

    def protected(self) -> int:
        p = self.portfolio
        return sum(
            p.bytes_of(s.handle)
            for s in p.slots.values()
            if s.handle is not None and (s.pinned or s.handle.inflight > 0)
        )

    # Counts the holds asked for, not the leases got: whether a lease is got can depend on time
    # (load_timeout_seconds), and a precondition that depends on time makes hypothesis replay a
    # different rule sequence (FlakyStrategyDefinition).
    @precondition(lambda self: self.holds < 2)
    @rule(model=st.sampled_from(MODELS))
    def hold(self, model: str) -> None:
        self.holds += 1
        lease = self.expect_served(model, self.portfolio.lease(model, ""))
        if lease is not None:
            self.held.append(lease)
        self.settle()

    @rule(model=st.sampled_from(MODELS), variant=st.sampled_from(["fp32", "int8"]))
    def load(self, model: str, variant: str) -> None:
        """The Load RPC: a given variant, making room for it like any load."""
        slot = self.portfolio.slot(model)
        self.expect_served(model, self.portfolio.ensure_ready(slot, variant), variant)
        if slot.pinned and slot.handle is not None:
            # An explicit load is the one way a pinned model changes variant.
            self.pinned_resident[model] = slot.handle.variant.id
        self.settle()

    @rule()
    def release_all(self) -> None:
        for lease in self.held:
            lease.release()
        self.held.clear()
        self.holds = 0
        self.settle()

    @rule(available_share=st.sampled_from([0.0, 0.5, 1.0, 8.0]), psi=st.sampled_from([0.0, 50.0]))
    def pressure_changes(self, available_share: float, psi: float) -> None:
        # available below the floor (1 GiB) shrinks the budget by the deficit
        self.pressure.available = (
            int((1 << 30) - available_share * self.biggest) if (available_share < 8.0) else 8 << 30
        )
        self.pressure.set_psi(psi)
        self.settle()

    @precondition(lambda self: not any(s.pinned for s in self.portfolio.slots.values()))
    @rule(model=st.sampled_from(MODELS))
    def pin(self, model: str) -> None:
        self.portfolio.pin(model, True)
        self.settle()

    @rule(model=st.sampled_from(MODELS))
    def unpin(self, model: str) -> None:
        self.portfolio.pin(model, False)
        self.pinned_resident.pop(model, None)
        # What the pin protected may now be over the budget: the next tick sheds it.
        self.settle()

    @invariant()
    def accounted_fits_the_budget(self) -> None:
        p = self.portfolio
        assert p.accounted() <= max(p.reading.bytes, self.protected())

    @invariant()
    def pinned_variants_never_leave(self) -> None:
        for name, slot in self.portfolio.slots.items():
            if not slot.pinned:
                continue
            if name in self.pinned_resident:
                assert slot.handle is not None
                assert slot.handle.variant.id == self.pinned_resident[name]
            elif slot.handle is not None:
                self.pinned_resident[name] = slot.handle.variant.id

    @invariant()
    def nothing_unloaded_under_a_lease(self) -> None:
        for lease in self.held:
            handle: Handle = lease.handle
            runtime = handle.runtime
            assert runtime.infer(example_inputs(runtime.inputs))["logits"].shape == (1, 64)

    def teardown(self) -> None:
        for lease in self.held:
            lease.release()
        self.run(self.portfolio.close())
        self.portfolio.journal.close()
        self.loop.close()


@pytest.fixture(scope="module", autouse=True)
def _store() -> None:
    ResidencyMachine.store, ResidencyMachine.biggest = _build_store()


TestResidencyMachine = ResidencyMachine.TestCase
TestResidencyMachine.settings = settings(
    max_examples=25,
    stateful_step_count=14,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
