"""One promotion: a staged version through validation, loading, the latency gate, the shadow
comparison, the flip and probation, to committed, rejected or rolled back (docs/lifecycle.md).

Everything here runs off the request path: probes in subprocesses, loads and measurements on the
background threads at nice 10, comparisons on the lifecycle's thread. The request path only sees
the flip (one step) and the observers it calls (a counter and, for sampled requests, a hand-off).
Each step's state is written to the store first, so a restart knows where a promotion was.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor

from edged.errors import EdgedError
from edged.events import Events
from edged.lifecycle import gate
from edged.lifecycle.canary import Canary
from edged.lifecycle.probation import Probation
from edged.lifecycle.shadow import Shadow
from edged.lifecycle.statistics import Outcome
from edged.lifecycle.stratified import ALL, PerStratum
from edged.portfolio.portfolio import NoRoomError, Portfolio
from edged.portfolio.slot import Handle
from edged.quality.compare import output_kinds
from edged.quality.labels import Score
from edged.quality.monitor import QualityMonitor
from edged.runtime.base import warmup_inputs
from edged.settings import Settings
from edged.store.lineage import OutputKind
from edged.store.manifest import Manifest
from edged.store.store import ModelStore
from edged.store.versions import Phase, VersionRecord, VersionState
from edged.tensors import Array

log = logging.getLogger(__name__)

# How often a running shadow or probation is looked at.
POLL_SECONDS = 0.1


@dataclasses.dataclass
class Context:
    """What a promotion works with (the lifecycle manager's)."""

    portfolio: Portfolio
    store: ModelStore
    settings: Settings
    events: Events
    pool: Executor  # the lifecycle's background thread (nice 10)
    clock: Callable[[], float] = time.monotonic
    quality: QualityMonitor | None = None  # the strata the canary samples by


class Promotion:
    def __init__(self, ctx: Context, name: str, version: str) -> None:
        self.ctx = ctx
        self.name = name
        self.version = version
        self.manifest: Manifest = ctx.store.manifest(name, version)
        self.record = ctx.store.record(name, version)
        self.lifecycle = ctx.settings.lifecycle
        self.mode = ctx.settings.promotion(name)
        self.on_insufficient = ctx.settings.on_insufficient_traffic(name)

    # -- records ---------------------------------------------------------------------------------

    def _move(
        self,
        state: VersionState,
        reason: str = "",
        *,
        phase: Phase = Phase.NONE,
        figures: dict[str, float] | None = None,
    ) -> None:
        self.record = self.record.moved(state, reason, phase=phase, figures=figures)
        self.ctx.store.put_record(self.name, self.version, self.record)
        if state is not VersionState.CANDIDATE:
            log.info(
                "%s version %s: %s%s",
                self.name,
                self.version,
                state,
                f" ({reason})" if reason else "",
            )

    def _phase(self, phase: Phase, reason: str = "") -> None:
        self._move(VersionState.CANDIDATE, reason or str(phase), phase=phase)

    def _finish(
        self, state: VersionState, reason: str, outcome: str, **figures: float
    ) -> VersionRecord:
        self._move(state, reason, figures=figures or None)
        self.ctx.events.promotion_finished(self.name, outcome)
        return self.record

    # -- the pipeline ----------------------------------------------------------------------------

    async def run(self) -> VersionRecord:
        portfolio = self.ctx.portfolio
        slot = portfolio.slot(self.name)
        if slot.version == self.version:
            return self._finish(VersionState.COMMITTED, "already serving", "committed")
        if self.mode == "direct":
            return await self._direct()
        self._phase(Phase.VALIDATING)
        try:
            await portfolio.costs.usable(self.manifest)
        except EdgedError as exc:
            return self._finish(VersionState.REJECTED, f"validation: {exc.message}", "rejected")
        incumbent = await self._incumbent()
        if self.mode == "availability":
            self._phase(Phase.LOADING)
            try:
                candidate = await portfolio.load_beside(self.name, self.manifest)
            except NoRoomError as exc:
                log.info("%s: %s; swapping in place (resource-preserving)", self.name, exc.message)
                return await self._in_place(incumbent)
            except EdgedError as exc:
                return self._finish(VersionState.REJECTED, f"load: {exc.message}", "rejected")
            return await self._beside(candidate, incumbent)
        return await self._in_place(incumbent)

    async def _incumbent(self) -> Handle | None:
        """The serving version, loaded if it is not (it is what the candidate is compared to)."""
        slot = self.ctx.portfolio.slot(self.name)
        if slot.handle is None:
            try:
                await self.ctx.portfolio.ensure_ready(slot, wait=False)
            except EdgedError as exc:
                log.info("%s: the serving version is not resident (%s)", self.name, exc.message)
        return slot.current()

    def _kinds(self, handle: Handle) -> dict[str, OutputKind]:
        return output_kinds(self.manifest.outputs, handle.runtime.outputs)

    def _gate_inputs(self, candidate: Handle) -> list[dict[str, Array]]:
        """Recent requests when there are some, else the manifest's warm-up sample."""
        samples = list(self.ctx.portfolio.slot(self.name).reservoir.samples)
        if samples:
            return samples
        return [warmup_inputs(candidate.runtime.inputs, self.manifest.warmup)]

    async def _gate(
        self, candidate: Handle, incumbent: Handle | None, quick: bool = False
    ) -> gate.GateResult:
        """``quick``: stop at the minimum sample (requests are waiting)."""
        if not quick:
            self._phase(Phase.GATING)
        inputs = self._gate_inputs(candidate)
        kinds = self._kinds(candidate)
        held = [h for h in (candidate, incumbent) if h is not None]
        for h in held:
            h.acquire()
        try:
            return await asyncio.get_running_loop().run_in_executor(
                self.ctx.pool,
                gate.measure,
                candidate,
                incumbent,
                inputs,
                kinds,
                self.lifecycle.gate_min_samples,
                self.lifecycle.gate_max_seconds,
                time.monotonic,
                0.0 if quick else gate.EXTRA_SECONDS,
            )
        finally:
            for h in held:
                h.release()

    def _insufficient(self, what: str) -> str:
        """The policy for an inconclusive gate or shadow: promote, hold or reject."""
        return f"{what}; policy on_insufficient_traffic = {self.on_insufficient}"

    async def _beside(self, candidate: Handle, incumbent: Handle | None) -> VersionRecord:
        """The availability-preserving promotion: the candidate was loaded beside the serving
        version; measure it, shadow it, flip, watch it."""
        portfolio = self.ctx.portfolio
        self._phase(Phase.WARMING)
        result = await self._gate(candidate, incumbent)
        figures = result.figures()
        if result.outcome is Outcome.FAIL or (
            result.outcome is Outcome.INCONCLUSIVE and self.on_insufficient == "reject"
        ):
            await portfolio.release(self.name, "candidate")
            return self._finish(VersionState.REJECTED, result.reason, "rejected", **figures)
        if result.outcome is Outcome.INCONCLUSIVE and self.on_insufficient == "hold":
            await portfolio.release(self.name, "candidate")
            return self._hold(self._insufficient(result.reason), figures)
        self.record = self.record.moved(
            VersionState.CANDIDATE, result.reason, phase=Phase.GATING, figures=figures
        )
        baseline = list(result.incumbent_confidence)
        live_ms: list[float] = []
        if incumbent is not None:
            shadow = await self._shadow(candidate, incumbent)
            figures.update(shadow.tests.figures("shadow"))
            outcome = shadow.tests.outcome()
            baseline += shadow.incumbent_confidence
            live_ms = shadow.live_ms
            if outcome is Outcome.FAIL:
                await portfolio.release(self.name, "candidate")
                wanted = self.lifecycle.shadow_agreement
                reason = (
                    f"shadow: agreement with the serving version {shadow.tests.describe()} "
                    f"(wanted {wanted:.0%} in every stratum)"
                    + (f"; first error: {shadow.first_error}" if shadow.first_error else "")
                )
                return self._finish(VersionState.REJECTED, reason, "rejected", **figures)
            if outcome is not Outcome.PASS:
                what = (
                    f"shadow inconclusive: {shadow.tests.samples} mirrored requests in "
                    f"{self.lifecycle.shadow_max_seconds:g} s ({shadow.tests.describe()})"
                )
                if self.on_insufficient == "reject":
                    await portfolio.release(self.name, "candidate")
                    return self._finish(
                        VersionState.REJECTED, self._insufficient(what), "rejected", **figures
                    )
                if self.on_insufficient == "hold":
                    await portfolio.release(self.name, "candidate")
                    return self._hold(self._insufficient(what), figures)
        if self.lifecycle.canary_share > 0 and incumbent is not None:
            canary = await self._canary(candidate)
            figures.update(canary.figures())
            outcome = canary.outcome()
            if outcome is Outcome.FAIL:
                await portfolio.release(self.name, "candidate")
                self.ctx.events.rolled_back(self.name, "canary")
                return self._finish(
                    VersionState.ROLLED_BACK,
                    f"canary: {canary.describe()}",
                    "rolled_back",
                    **figures,
                )
            if outcome is not Outcome.PASS:
                what = f"canary inconclusive: {canary.describe()}"
                if self.on_insufficient == "reject":
                    await portfolio.release(self.name, "candidate")
                    return self._finish(
                        VersionState.REJECTED, self._insufficient(what), "rejected", **figures
                    )
                if self.on_insufficient == "hold":
                    await portfolio.release(self.name, "candidate")
                    return self._hold(self._insufficient(what), figures)
        self._move(VersionState.PROBATION, "serving; on probation", figures=figures)
        await portfolio.flip(
            self.name,
            f"serving version {self.version} ({candidate.variant.id}), on probation",
            self.lifecycle.keep_previous_warm,
        )
        return await self._probation(candidate, baseline, result, live_ms)

    async def _shadow(self, candidate: Handle, incumbent: Handle) -> Shadow:
        self._phase(Phase.SHADOWING)
        s = self.lifecycle
        stratum_of, strata = self._strata()
        tests = PerStratum(
            strata,
            stratified=s.shadow_stratified,
            good=s.shadow_agreement,
            bad=max(s.shadow_agreement - 0.04, 0.5),
            min_samples=s.shadow_min_samples,
        )
        shadow = Shadow(
            candidate,
            self._kinds(candidate),
            tests,
            s.shadow_share,
            self.ctx.pool,
            stratum_of=stratum_of,
            hard_factor=s.shadow_hard_factor,
            rng=random.Random(hash((self.name, self.version))),
        )
        slot = self.ctx.portfolio.slot(self.name)
        slot.observer = shadow
        deadline = self.ctx.clock() + s.shadow_max_seconds
        try:
            while tests.outcome() is Outcome.UNDECIDED and self.ctx.clock() < deadline:
                await asyncio.sleep(POLL_SECONDS)
        finally:
            slot.observer = None
            await shadow.drained()
        return shadow

    def _strata(self) -> tuple[Callable[[Sequence[float]], int], int]:
        """How a request's stratum is found, and how many there are (1 until the quality
        monitor has learned this model's)."""
        quality = self.ctx.quality
        strata = quality.strata.get(self.name) if quality is not None else None
        if quality is None or strata is None or not strata.edges:
            return (lambda _: ALL), 1
        return (lambda c: quality.stratum(self.name, c)), strata.count

    async def _canary(self, candidate: Handle) -> Canary:
        self._phase(Phase.CANARY)
        s = self.lifecycle
        stratum_of, strata = self._strata()
        canary = Canary(
            candidate,
            self._kinds(candidate),
            stratum_of,
            strata,
            share=s.canary_share,
            hard_factor=s.canary_hard_factor,
            stratified=s.canary_stratified,
            good=s.canary_agreement,
            min_samples=s.canary_min_samples,
            pool=self.ctx.pool,
            rng=random.Random(hash((self.name, self.version, "canary"))),
            labels=self._stratum_label_scores(),
        )
        slot = self.ctx.portfolio.slot(self.name)
        slot.router = canary
        deadline = self.ctx.clock() + s.canary_max_seconds
        try:
            while canary.outcome() is Outcome.UNDECIDED and self.ctx.clock() < deadline:
                await asyncio.sleep(POLL_SECONDS)
        finally:
            slot.router = None
        return canary

    async def _probation(
        self,
        handle: Handle,
        baseline: list[float],
        result: gate.GateResult,
        live_ms: list[float] | None = None,
    ) -> VersionRecord:
        slot = self.ctx.portfolio.slot(self.name)
        watch = Probation(
            handle,
            self._kinds(handle),
            baseline,
            result.candidate_ms if result.samples else None,
            live_ms or (),
            self.lifecycle,
            self.ctx.clock,
            self._label_scores(),
        )
        slot.observer = watch
        try:
            while (verdict := watch.verdict()).outcome is Outcome.UNDECIDED:
                await asyncio.sleep(POLL_SECONDS)
        finally:
            slot.observer = None
        if verdict.outcome is Outcome.PASS:
            return await self._commit(verdict.reason, verdict.figures)
        return await self._roll_back(verdict.reason, verdict.kind, verdict.figures)

    def _label_scores(self) -> Callable[[], tuple[Score, Score]] | None:
        quality = self.ctx.quality
        committed = self.ctx.store.active(self.name)
        if quality is None or committed is None:
            return None

        def scores() -> tuple[Score, Score]:
            quality.flush()
            return quality.score(self.name, self.version), quality.score(self.name, committed)

        return scores

    def _stratum_label_scores(self) -> Callable[[int], tuple[Score, Score]] | None:
        quality = self.ctx.quality
        committed = self.ctx.store.active(self.name)
        if quality is None or committed is None:
            return None

        def scores(stratum: int) -> tuple[Score, Score]:
            quality.flush()
            within = None if stratum == ALL else stratum
            return (
                quality.book.total(self.name, self.version, stratum=within),
                quality.book.total(self.name, committed, stratum=within),
            )

        return scores

    async def _commit(self, reason: str, figures: dict[str, float]) -> VersionRecord:
        # The pointer is the commit record: moved first, so a crash right after it leaves the
        # version serving and committed (recovery fixes its record).
        self.ctx.store.set_active(self.name, self.version)
        record = self._finish(VersionState.COMMITTED, reason, "committed", **figures)
        await self.ctx.portfolio.release(self.name, "previous")
        return record

    async def _roll_back(self, reason: str, kind: str, figures: dict[str, float]) -> VersionRecord:
        """Serve the committed version again: at once when it was kept warm, else loaded beside
        (or in place) first, then flipped to: a gapless swap either way."""
        portfolio = self.ctx.portfolio
        committed = self.ctx.store.active(self.name)
        started = self.ctx.clock()
        if not await portfolio.flip_back(self.name, f"rolled back from version {self.version}"):
            assert committed is not None
            manifest = self.ctx.store.manifest(self.name, committed)
            try:
                await portfolio.load_beside(self.name, manifest)
                await portfolio.flip(self.name, f"rolled back from version {self.version}", False)
            except NoRoomError:
                await portfolio.swap_in_place(
                    self.name, manifest, f"rolled back from version {self.version}"
                )
        self.ctx.events.rolled_back(self.name, kind)
        figures = {**figures, "rollback_seconds": self.ctx.clock() - started}
        return self._finish(VersionState.ROLLED_BACK, reason, "rolled_back", **figures)

    def _hold(self, reason: str, figures: dict[str, float]) -> VersionRecord:
        self._move(
            VersionState.STAGED, f"held: {reason}; `edged activate` retries", figures=figures
        )
        self.ctx.events.promotion_finished(self.name, "held")
        return self.record

    async def _in_place(self, incumbent: Handle | None) -> VersionRecord:
        """The resource-preserving promotion: the serving version is measured on recent
        requests first, then released; the candidate is loaded in its room and measured the same
        way while requests wait in a bounded queue (briefly: the gate stops at its minimum
        sample here), judged against the serving version's figures as the paired gate does; it
        serves if it passes, else the old version is loaded again. No shadow: the two never
        coexist."""
        portfolio = self.ctx.portfolio
        before: gate.GateResult | None = None
        if incumbent is not None:
            # Not quick: nothing waits yet, and a whole pass over the recent requests gives
            # probation its drift baseline.
            self._phase(Phase.GATING, "measuring the serving version before the swap")
            before = await self._gate(incumbent, None)
        result: gate.GateResult | None = None

        async def check(handle: Handle) -> str | None:
            nonlocal result
            self._phase(Phase.GATING, "gating in place (resource-preserving)")
            alone = await self._gate(handle, None, quick=True)
            if alone.outcome is Outcome.FAIL and alone.samples < self.lifecycle.gate_min_samples:
                result = alone  # it failed to run
            else:
                result = gate.decide(
                    handle.variant.latency_ms,
                    incumbent.variant.latency_ms if incumbent is not None else None,
                    alone.run_times_ms,
                    before.run_times_ms if before is not None else (),
                    self.lifecycle.gate_min_samples,
                    0.0,
                    before.candidate_confidence if before is not None else (),
                    alone.candidate_confidence,
                )
            if result.outcome is Outcome.FAIL or (
                result.outcome is Outcome.INCONCLUSIVE and self.on_insufficient != "promote"
            ):
                return result.reason
            return None

        self._phase(Phase.LOADING, "swapping in place (resource-preserving)")
        try:
            handle = await portfolio.swap_in_place(
                self.name, self.manifest, f"serving version {self.version}, on probation", check
            )
        except EdgedError as exc:
            figures = result.figures() if result is not None else {}
            return self._finish(VersionState.REJECTED, exc.message, "rejected", **figures)
        assert result is not None
        self._move(VersionState.PROBATION, "serving; on probation", figures=result.figures())
        baseline = list(result.incumbent_confidence)
        return await self._probation(handle, baseline, result)

    async def _direct(self) -> VersionRecord:
        """No evaluation: the version serves from the next request (labs, benchmarks)."""
        self.ctx.store.set_active(self.name, self.version)
        self.ctx.portfolio.serve_version(self.name, self.manifest)
        return self._finish(
            VersionState.COMMITTED, "activated directly (lifecycle mode direct)", "committed"
        )
