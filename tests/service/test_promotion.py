"""Promotions in-process, on the real portfolio and real onnxruntime models, under traffic driven
through the service layer: what passes, what each stage stops, and that no request fails."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edged.errors import EdgedError
from edged.events import NoEvents
from edged.lifecycle.manager import Lifecycle
from edged.portfolio.portfolio import Portfolio
from edged.portfolio.verdicts import SubprocessProber
from edged.serving.inference import InferenceService
from edged.settings import Settings
from edged.store.store import ModelStore
from edged.store.versions import VersionState
from edged.tensors import GenerationParams
from tests.portfolios import DeclaredProber, make_settings, open_portfolio, quiet_system
from tests.versions import SIZES, p50_ms, version_dir

PARAMS = GenerationParams()
FAST = {
    "gate_min_samples": 10,
    "gate_max_seconds": 20,
    "shadow_share": 1.0,
    "shadow_min_samples": 20,
    "shadow_max_seconds": 6,
    "probation_seconds": 1,
    "probation_requests": 20,
}


class Counting(NoEvents):
    def __init__(self) -> None:
        self.outcomes: list[str] = []
        self.rollbacks: list[str] = []
        self.swap_waits: list[float] = []

    def promotion_finished(self, model: str, outcome: str) -> None:
        self.outcomes.append(outcome)

    def rolled_back(self, model: str, reason: str) -> None:
        self.rollbacks.append(reason)

    def swap_wait(self, model: str, seconds: float) -> None:
        self.swap_waits.append(seconds)


@dataclasses.dataclass
class World:
    store: ModelStore
    portfolio: Portfolio
    lifecycle: Lifecycle
    inference: InferenceService
    events: Counting
    answers: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (version, error)
    batch: int = 1

    async def traffic(self, stop: asyncio.Event, interval: float = 0.002) -> None:
        """Requests one after another, each with its own random input, until ``stop``."""
        rng = np.random.default_rng(0)
        while not stop.is_set():
            x = {"input": rng.standard_normal((self.batch, SIZES[0])).astype(np.float32)}
            try:
                served = await self.inference.infer("m", "", x, [], PARAMS)
                self.answers.append((served.version, ""))
            except EdgedError as exc:
                self.answers.append(("", exc.message))
            await asyncio.sleep(interval)

    def failed(self) -> list[str]:
        return [error for _, error in self.answers if error]

    async def promote(self, version: str, *, traffic: bool = True) -> VersionState:
        stop = asyncio.Event()
        load = asyncio.ensure_future(self.traffic(stop)) if traffic else None
        try:
            await asyncio.sleep(0.3)  # some requests before: the gate's inputs
            self.lifecycle.activate("m", version)
            task = self.lifecycle.running("m")
            assert task is not None
            record = await asyncio.wait_for(task, 120)
            await asyncio.sleep(0.1)
            return record.state
        finally:
            stop.set()
            if load is not None:
                await load

    async def close(self) -> None:
        await self.lifecycle.close()
        self.inference.close()
        await self.portfolio.close()
        self.portfolio.journal.close()


@contextlib.contextmanager
def world(
    tmp_path: Path, versions: list[Path], config: Settings | None = None, **ports: Any
) -> Iterator[World]:
    store = ModelStore(tmp_path / "store")
    for directory in versions:
        store.import_dir(directory, activate=False)
    settings = config or make_settings(lifecycle=FAST)
    ports.setdefault("prober", DeclaredProber())
    events = Counting()
    portfolio = open_portfolio(
        store, tmp_path, settings, system=quiet_system(tmp_path), events=events, **ports
    )
    yield World(
        store,
        portfolio,
        Lifecycle(portfolio, store, settings, events),
        InferenceService(portfolio, events, workers=2),
        events,
    )


def served_versions_in_order(answers: list[tuple[str, str]]) -> bool:
    """No answer from an older version after one from a newer (rollbacks aside)."""
    versions = [int(v) for v, _ in answers if v]
    return versions == sorted(versions)


def test_a_good_version_is_promoted_under_traffic_and_no_request_fails(tmp_path: Path) -> None:
    v1 = version_dir(tmp_path / "src", "m", "1")
    v2 = version_dir(tmp_path / "src", "m", "2", lineage={"parent": "1"})
    with world(tmp_path, [v1, v2]) as w:

        async def run() -> None:
            try:
                assert await w.promote("2") is VersionState.COMMITTED
            finally:
                await w.close()

        asyncio.run(run())
        assert w.failed() == []
        assert served_versions_in_order(w.answers)
        assert {v for v, _ in w.answers} == {"1", "2"}
        assert w.store.active("m") == "2"
        record = w.store.record("m", "2")
        assert record.figures["shadow_agreement"] == 1.0
        assert record.figures["gate_samples"] >= 10
        assert w.events.outcomes == ["committed"]


def test_a_candidate_slower_than_its_budget_never_serves(tmp_path: Path) -> None:
    src = tmp_path / "src"
    fast = version_dir(src, "probe", "1")
    slow = version_dir(src, "probe", "2", extra_work=12)
    assert p50_ms(slow) > 4 * p50_ms(fast), "the slow version must be much slower to test"
    budget = max(3 * p50_ms(fast), 0.05)
    v1 = version_dir(src, "m", "1", budget_ms=budget)
    v2 = version_dir(src, "m", "2", budget_ms=budget, extra_work=12)
    with world(tmp_path, [v1, v2]) as w:

        async def run() -> None:
            try:
                assert await w.promote("2") is VersionState.REJECTED
            finally:
                await w.close()

        asyncio.run(run())
        record = w.store.record("m", "2")
        assert "too slow" in record.reason and "over its budget" in record.reason
        # The measured p99 and the budget's, in the reason and in the figures.
        assert f"p99 {record.figures['gate_p99_ms']:.2f} ms" in record.reason
        assert f"p99 {budget * 3:g} ms" in record.reason
        assert record.figures["budget_p99_ms"] == pytest.approx(budget * 3)
        assert {v for v, _ in w.answers} == {"1"}, "the slow candidate served"
        assert w.failed() == []
        assert w.store.active("m") == "1"


def test_a_candidate_that_fails_validation_never_serves(tmp_path: Path) -> None:
    """The real subprocess probe: version 2 only runs at batch 2, and the probe's generated
    input has batch 1 (an input shape it does not satisfy)."""
    v1 = version_dir(tmp_path / "src", "m", "1")
    v2 = version_dir(tmp_path / "src", "m", "2", fixed_batch=2)
    with world(tmp_path, [v1, v2], prober=None) as w:  # None: the real subprocess prober

        async def run() -> None:
            try:
                assert await w.promote("2") is VersionState.REJECTED
            finally:
                await w.close()

        asyncio.run(run())
        record = w.store.record("m", "2")
        assert record.reason.startswith("validation:"), record.reason
        assert "could not load or run" in record.reason
        assert {v for v, _ in w.answers} == {"1"} and w.failed() == []


def test_a_candidate_whose_validation_hangs_never_serves(tmp_path: Path) -> None:
    """A probe that does not answer in time (here: a timeout shorter than any interpreter's
    start-up) refuses the file as a hung runtime would be refused."""
    v1 = version_dir(tmp_path / "src", "m", "1")
    v2 = version_dir(tmp_path / "src", "m", "2", seed=8)  # another file: never probed
    with world(tmp_path, [v1, v2]) as w:

        async def run() -> None:
            try:
                await w.portfolio.load("m")  # version 1 serves, validated by the declared prober
                w.portfolio.verdicts.prober = SubprocessProber(0.001)
                assert await w.promote("2") is VersionState.REJECTED
            finally:
                await w.close()

        asyncio.run(run())
        assert "timed out" in w.store.record("m", "2").reason
        assert {v for v, _ in w.answers} == {"1"} and w.failed() == []


def test_a_candidate_that_crashes_its_runtime_never_serves(tmp_path: Path, demo_src: Path) -> None:
    """A GGUF version whose vocabulary makes llama.cpp abort at the first prompt: the real probe
    sees the crash, the daemon and the serving version do not."""
    from tests.e2e.test_validation import corrupt_vocabulary, derived_model

    store = ModelStore(tmp_path / "store")
    store.import_dir(demo_src / "tinyllama")
    broken = derived_model(
        demo_src / "tinyllama", tmp_path / "broken", "tinyllama", corrupt_vocabulary
    )
    manifest = json.loads((broken / "manifest.json").read_text())
    manifest["version"] = "2"
    (broken / "manifest.json").write_text(json.dumps(manifest))
    store.import_dir(broken, activate=False)
    settings = make_settings(lifecycle=FAST)
    portfolio = open_portfolio(store, tmp_path, settings, system=quiet_system(tmp_path))
    lifecycle = Lifecycle(portfolio, store, settings, NoEvents())

    async def run() -> VersionState:
        try:
            lifecycle.activate("tinyllama", "2")
            task = lifecycle.running("tinyllama")
            assert task is not None
            return (await asyncio.wait_for(task, 120)).state
        finally:
            await lifecycle.close()
            await portfolio.close()
            portfolio.journal.close()

    assert asyncio.run(run()) is VersionState.REJECTED
    assert "crashed (SIGABRT)" in store.record("tinyllama", "2").reason
    assert store.active("tinyllama") == "1"


def test_the_shadow_stops_a_candidate_that_disagrees(tmp_path: Path) -> None:
    v1 = version_dir(tmp_path / "src", "m", "1")
    v2 = version_dir(tmp_path / "src", "m", "2", permute=True)
    with world(tmp_path, [v1, v2]) as w:

        async def run() -> None:
            try:
                assert await w.promote("2") is VersionState.REJECTED
            finally:
                await w.close()

        asyncio.run(run())
        record = w.store.record("m", "2")
        assert record.reason.startswith("shadow: agreement"), record.reason
        assert record.figures["shadow_agreement"] < 0.5
        assert {v for v, _ in w.answers} == {"1"} and w.failed() == []


@pytest.mark.parametrize(
    ("policy", "state"),
    [
        ("hold", VersionState.STAGED),
        ("reject", VersionState.REJECTED),
        ("promote", VersionState.COMMITTED),
    ],
)
def test_too_little_traffic_is_inconclusive_and_the_policy_applies(
    tmp_path: Path, policy: str, state: VersionState
) -> None:
    v1 = version_dir(tmp_path / "src", "m", "1")
    v2 = version_dir(tmp_path / "src", "m", "2")
    config = make_settings(
        lifecycle={**FAST, "shadow_max_seconds": 1, "on_insufficient_traffic": policy}
    )
    with world(tmp_path, [v1, v2], config) as w:

        async def run() -> None:
            try:
                await w.portfolio.load("m")
                assert await w.promote("2", traffic=False) is state
            finally:
                await w.close()

        asyncio.run(run())
        record = w.store.record("m", "2")
        if policy != "promote":
            assert "shadow inconclusive: 0 mirrored requests" in record.reason, record.reason
            assert w.store.active("m") == "1"
        else:
            assert w.store.active("m") == "2"


def test_runtime_errors_in_probation_roll_back_with_no_failed_request(tmp_path: Path) -> None:
    """Version 2 runs at batch 1 only: the gate and the shadow see batch-1 traffic and pass it;
    after the flip the traffic moves to batch 2, version 2 fails on it, the previous version
    answers each of those requests, and probation rolls back."""
    v1 = version_dir(tmp_path / "src", "m", "1")
    v2 = version_dir(tmp_path / "src", "m", "2", fixed_batch=1)
    config = make_settings(lifecycle={**FAST, "probation_seconds": 30})
    with world(tmp_path, [v1, v2], config) as w:

        async def run() -> None:
            stop = asyncio.Event()
            load = asyncio.ensure_future(w.traffic(stop))
            try:
                await asyncio.sleep(0.3)
                w.lifecycle.activate("m", "2")
                task = w.lifecycle.running("m")
                assert task is not None
                while w.store.record("m", "2").state is not VersionState.PROBATION:
                    await asyncio.sleep(0.01)
                w.batch = 2  # inputs the warm-up and the gate never saw
                assert (await asyncio.wait_for(task, 60)).state is VersionState.ROLLED_BACK
                await asyncio.sleep(0.2)
            finally:
                stop.set()
                await load
                await w.close()

        asyncio.run(run())
        record = w.store.record("m", "2")
        assert record.reason.startswith("runtime errors on"), record.reason
        assert "answered by the previous version" in record.reason
        assert w.failed() == []
        assert w.answers[-1][0] == "1"  # the committed version serves again
        assert w.store.active("m") == "1"
        assert w.events.rollbacks == ["errors"]
        assert record.figures["rollback_seconds"] < 1.0  # kept warm: a flip, not a load


def test_output_drift_in_probation_rolls_back(tmp_path: Path) -> None:
    """Version 2 gives the same top-1 answers (the shadow passes it) with much flatter scores:
    its confidence drifts from version 1's on the same traffic, and probation takes it back."""
    v1 = version_dir(tmp_path / "src", "m", "1")
    v2 = version_dir(tmp_path / "src", "m", "2", scale=0.1)
    config = make_settings(lifecycle={**FAST, "shadow_agreement": 0.95, "probation_seconds": 20})
    with world(tmp_path, [v1, v2], config) as w:

        async def run() -> None:
            try:
                assert await w.promote("2") is VersionState.ROLLED_BACK
            finally:
                await w.close()

        asyncio.run(run())
        record = w.store.record("m", "2")
        assert record.reason.startswith("output drift: PSI"), record.reason
        assert record.figures["probation_psi"] > 0.25
        assert w.failed() == [] and w.store.active("m") == "1"
        assert w.events.rollbacks == ["drift"]


def test_resource_mode_swaps_in_place_and_holds_requests_instead_of_failing(
    tmp_path: Path,
) -> None:
    v1 = version_dir(tmp_path / "src", "m", "1")
    v2 = version_dir(tmp_path / "src", "m", "2")
    config = make_settings(lifecycle={**FAST, "mode": "resource"})
    with world(tmp_path, [v1, v2], config) as w:

        async def run() -> None:
            try:
                assert await w.promote("2") is VersionState.COMMITTED
            finally:
                await w.close()

        asyncio.run(run())
        assert w.failed() == []
        assert served_versions_in_order(w.answers)
        assert w.store.active("m") == "2"
        assert w.events.swap_waits, "no request was held by the swap"
