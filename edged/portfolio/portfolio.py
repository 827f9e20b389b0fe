"""The portfolio: the async shell that carries out the residency engine's decisions.

(Over 400 lines for a reason: everything that changes what is resident runs under one memory
lock over one set of slots — loads, drains, evictions, downgrades, upgrades, preloads — and
splitting it would spread that lock across modules. Costs, the loader, verdicts, the budget and
the decisions themselves live elsewhere.)

It owns one slot per model, describes them to the engine as a snapshot (engine.py), and executes
what comes back under the memory lock: loads (loader.py), drains, evictions, downgrades, upgrades
and preloads. The decisions themselves live in the engine, which the simulator drives too; what
lives here is their execution: locks, waits, leases, measurement and the order of the steps.

Requests to resident models never take the memory lock (``arrive`` / ``warm_lease``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable

from edged.errors import EdgedError, ErrorCode, NotFoundError
from edged.events import Events, NoEvents
from edged.portfolio.budget import (
    Accounting,
    BudgetReading,
    MemoryMeter,
    ProcessMemory,
    SystemMemory,
)
from edged.portfolio.costs import VariantCosts, expected_bytes
from edged.portfolio.engine import (
    ModelState,
    NoRoom,
    Placement,
    ResidencyEngine,
    Shed,
    Snapshot,
    Upgrade,
)
from edged.portfolio.journal import CrashJournal
from edged.portfolio.loader import Loader
from edged.portfolio.scoring import Action, ActionKind, Option
from edged.portfolio.slot import Handle, Lease, Slot
from edged.portfolio.verdicts import Prober, SubprocessProber, Verdict, Verdicts
from edged.runtime.probe import ProbeResult
from edged.settings import Settings
from edged.store.check import CorruptBlobError
from edged.store.manifest import Manifest, Variant, files_of
from edged.store.store import ModelStore

log = logging.getLogger(__name__)


def held_name(handle: Handle) -> str:
    """How the engine names a loaded version that does not serve: ``model@version``."""
    return f"{handle.manifest.name}@{handle.version}"


# How many times one decision re-plans when what it loaded measured more than planned.
SHED_ROUNDS = 3


class NoRoomError(EdgedError):
    """Nothing can be made to fit: even evicting what may be evicted leaves too little."""

    code = ErrorCode.RESOURCE_EXHAUSTED


class RefusedError(EdgedError):
    """A version swapped in place was refused by its check (the old one serves again)."""

    code = ErrorCode.FAILED_PRECONDITION


def _no_forecast(name: str) -> float:
    return 0.0


class Portfolio:
    def __init__(
        self,
        store: ModelStore,
        journal: CrashJournal,
        settings: Settings,
        *,
        system: SystemMemory | None = None,
        meter: MemoryMeter | None = None,
        prober: Prober | None = None,
        clock: Callable[[], float] = time.monotonic,
        events: Events | None = None,
    ) -> None:
        self.store = store
        self.journal = journal
        self.settings = settings
        self.clock = clock
        self.events: Events = events or NoEvents()
        self.engine = ResidencyEngine(settings.residency, settings.preload)
        self.verdicts = Verdicts(
            store,
            prober or SubprocessProber(settings.validation.timeout_seconds),
            settings.validation,
        )
        self.budget = Accounting(
            settings.memory, system or SystemMemory(), meter or ProcessMemory()
        )
        self.costs = VariantCosts(self.verdicts, self.budget)
        self.loader = Loader(
            journal, self.budget.meter, self.events, store.variant_path, store.state / "quality"
        )
        self.slots: dict[str, Slot] = {}
        # Models the store holds whose serving version cannot be read, with the reason.
        self.unavailable: dict[str, str] = {}
        # Hooks of the preloader (edged/portfolio/preloader.py): forecast expected requests
        # within the horizon, see each arrival, see each finished request.
        self.expected: Callable[[str], float] = _no_forecast
        self.on_arrival: Callable[[str], None] | None = None
        self.on_complete: Callable[[Lease], None] | None = None
        self._background: set[asyncio.Future[None]] = set()
        # Every decision that changes what is resident holds this lock; requests to resident
        # models never take it.
        self._memory = asyncio.Lock()
        self._memory_changed = asyncio.Event()

    # -- start-up -------------------------------------------------------------------------------

    def recover_from_crash(self, fatal_signal: bool = False) -> list[str]:
        """Blame the variants that were loading or running when the last run died (of a fatal
        signal inside the process, or killed from outside: edged/portfolio/fatal.py)."""
        suspects = self.verdicts.recover_from_crash(self.journal, fatal_signal)
        self.journal.start()
        return suspects

    def refresh(self) -> None:
        """Re-read the store for models it did not know: each is served by its committed
        version. (Which version serves a known model is the lifecycle's to change.)"""
        pinned = self.settings.pinned()
        for name in self.store.models():
            if name in self.slots:
                continue
            active = self.store.active(name)
            if active is None:
                continue
            try:
                manifest = self.store.manifest(name, active)
            except EdgedError as exc:
                self.unavailable[name] = exc.message
                log.error("model %s: cannot read version %s: %s", name, active, exc.message)
                continue
            self.unavailable.pop(name, None)
            slot = self.slots[name] = Slot(
                name, manifest, self.settings.residency.half_life_seconds
            )
            slot.pin(name in pinned)

    async def load_all(self) -> None:
        """Load every model's serving version while the budget allows; the rest load on demand.

        The engine orders them busiest first and leaves room, at each step, for the smallest
        variants of the models still to come (engine.place_at_start)."""
        for slot in self.slots.values():
            with contextlib.suppress(EdgedError):  # reported by the load below
                await self.costs.usable(slot.manifest)
        order = self.engine.startup_order(self.snapshot())
        for i, name in enumerate(order):
            slot = self.slots[name]
            try:
                await self.ensure_ready(slot, wait=False, start_up=order[i + 1 :])
            except EdgedError as exc:
                log.warning("model %s not loaded at start: %s", name, exc.message)

    # -- verdicts -------------------------------------------------------------------------------

    def verdict(self, variant: Variant) -> Verdict:
        return self.verdicts.verdict(variant)

    async def validate(self, variant: Variant) -> ProbeResult:
        return await self.verdicts.validate(variant)

    # -- accounting -----------------------------------------------------------------------------

    @property
    def reading(self) -> BudgetReading:
        return self.budget.reading

    @property
    def correction(self) -> float:
        return self.budget.correction

    def handles(self) -> list[Handle]:
        """Every loaded variant: serving ones, candidates and previous versions kept warm."""
        out: list[Handle] = []
        for s in self.slots.values():
            out.extend(h for h in (s.handle, s.candidate, s.previous) if h is not None)
        return out

    def accounted(self) -> int:
        """Bytes the loaded variants hold, as measured at load and corrected since."""
        return sum(self.bytes_of(h) for h in self.handles())

    def free(self) -> int:
        return self.reading.bytes - self.accounted() - sum(self.budget.reserved.values())

    def bytes_of(self, handle: Handle) -> int:
        return self.budget.charge(handle.load_stats)

    expected_bytes = staticmethod(expected_bytes)

    def predicted_requests(self, slot: Slot) -> float:
        by_rate = slot.rate.rate(self.clock()) * self.settings.residency.horizon_seconds
        return max(by_rate, self.expected(slot.name))

    # -- the engine's view ----------------------------------------------------------------------

    def _state(self, slot: Slot) -> ModelState:
        handle = slot.handle
        options = tuple(o for _, o in self.costs.known(slot.manifest))
        resident = None
        resident_options = None
        if handle is not None:
            resident = Option(
                handle.variant.id,
                self.bytes_of(handle),
                handle.variant.quality,
                handle.load_stats.seconds,
            )
            if handle.manifest is not slot.manifest:
                resident_options = tuple(o for _, o in self.costs.known(handle.manifest))
        return ModelState(
            slot.name,
            options,
            resident,
            self.predicted_requests(slot),
            pinned=slot.pinned,
            busy=handle is not None and handle.inflight > 0,
            upgrade_after=slot.upgrade_after,
            resident_options=resident_options,
        )

    def snapshot(self, extra: ModelState | None = None) -> Snapshot:
        """The portfolio as the engine sees it, now. A candidate (never displaced while it is
        evaluated) and a previous version kept warm (the cheapest thing to let go: nothing is
        served by it) appear as models of their own, ``name@version``; ``extra``: one more such
        model, the one a decision is about."""
        models = {name: self._state(slot) for name, slot in self.slots.items()}
        for slot in self.slots.values():
            if slot.candidate is not None:
                c = slot.candidate
                state = self._held_state(c, self.predicted_requests(slot), busy=True)
                models[state.name] = state
            if slot.previous is not None:
                p = slot.previous
                state = self._held_state(p, 0.0, busy=p.inflight > 0)
                models[state.name] = state
        if extra is not None:
            models[extra.name] = extra
        return Snapshot(
            self.clock(), self.reading.bytes, models, sum(self.budget.reserved.values())
        )

    def _held_state(self, handle: Handle, predicted: float, *, busy: bool) -> ModelState:
        held = Option(
            handle.variant.id,
            self.bytes_of(handle),
            handle.variant.quality,
            handle.load_stats.seconds,
        )
        return ModelState(held_name(handle), (held,), held, predicted, busy=busy)

    # -- decisions ------------------------------------------------------------------------------

    async def _wait_for_swap(self, slot: Slot, deadline: float) -> None:
        """A resource-preserving swap holds this model's requests until the new version (or the
        old one again) is in: wait, a bounded number of requests at most."""
        limit = self.settings.lifecycle.queue_limit
        if slot.held >= limit:
            raise EdgedError(
                f"model {slot.name!r} is being swapped to a new version and {limit} requests "
                "already wait for it; retry shortly",
                ErrorCode.RESOURCE_EXHAUSTED,
            )
        slot.held += 1
        started = time.perf_counter()
        try:
            while slot.swapping is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise EdgedError(
                        f"model {slot.name!r}: the swap to a new version took longer than "
                        f"{self.settings.memory.load_timeout_seconds:g} s",
                        ErrorCode.UNAVAILABLE,
                    )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(slot.swapping), remaining)
        finally:
            slot.held -= 1
            self.events.swap_wait(slot.name, time.perf_counter() - started)

    async def ensure_ready(
        self,
        slot: Slot,
        variant_id: str | None = None,
        *,
        wait: bool = True,
        start_up: list[str] | None = None,
    ) -> Handle:
        """The slot's handle for its serving version, loading it (and making room) if needed.

        Waits up to ``load_timeout`` for memory to free up; then RESOURCE_EXHAUSTED names what
        could not fit. ``start_up``: a start-up load (nothing evicted, room left for these)."""
        deadline = time.monotonic() + (self.settings.memory.load_timeout_seconds if wait else 0.0)
        if slot.preloading is not None:  # a preload is bringing it in: faster than a new load
            await asyncio.shield(slot.preloading)
        if slot.swapping is not None:
            await self._wait_for_swap(slot, deadline)
        while True:
            changed = self._memory_changed
            async with self._memory:
                handle = slot.current(variant_id)
                if handle is not None:
                    return handle
                try:
                    outcome = await self._try_load(slot, variant_id, start_up)
                except CorruptBlobError as exc:
                    # That variant is marked unusable: place another one (or fail with why).
                    if variant_id is not None:
                        slot.load_failed(exc.message)
                        raise
                    continue
                except EdgedError as exc:
                    slot.load_failed(exc.message)
                    raise
                if isinstance(outcome, Handle):
                    return outcome
            remaining = deadline - time.monotonic()
            if remaining > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), remaining)
            if time.monotonic() >= deadline:
                slot.waiting(outcome)
                raise EdgedError(outcome, ErrorCode.RESOURCE_EXHAUSTED)

    async def _try_load(
        self, slot: Slot, variant_id: str | None, start_up: list[str] | None
    ) -> Handle | str:
        """Load what the engine places, or say why nothing fits now (memory lock held)."""
        manifest = slot.manifest
        options = await self.costs.usable(manifest)
        if variant_id is not None and all(v.id != variant_id for v, _ in options):
            raise NotFoundError(f"model {manifest.name!r} has no usable variant {variant_id!r}")
        snapshot = self.snapshot()
        decision = (
            self.engine.place_at_start(snapshot, slot.name, start_up)
            if start_up is not None
            else self.engine.place(snapshot, slot.name, variant=variant_id)
        )
        if isinstance(decision, NoRoom):
            return self._no_room(decision)
        variant = manifest.variant(decision.option.variant)
        for action in decision.actions:
            await self._apply(action, "memory")
        slot.loading()
        handle = await self._load(manifest, variant)
        old = slot.install(
            handle,
            f"serving {variant.id} (quality {variant.quality:.3f})"
            + (
                f" after {', '.join(f'{a.kind} {a.model}/{a.variant}' for a in decision.actions)}"
                if decision.actions
                else ""
            ),
        )
        log.debug("cold load of %s: %s", slot.name, slot.reason)
        self.events.cold_load(slot.name)
        if old is not None:
            self._in_background(self._retire(old))
        await self._shed_if_over(protect=slot.name)
        return handle

    def _no_room(self, decision: NoRoom) -> str:
        pinned = sorted(s.name for s in self.slots.values() if s.pinned and s.handle)
        return (
            f"model {decision.model}: no variant fits in memory ("
            + "; ".join(decision.reasons)
            + f"; {decision.free} of {self.reading.bytes} budget bytes free"
            + (f"; pinned: {', '.join(pinned)}" if pinned else "")
            + ")"
        )

    async def _apply(self, action: Action, why: str) -> None:
        """Carry out an eviction or a downgrade (memory lock held)."""
        if "@" in action.model:  # a previous version kept warm: it simply goes
            name = action.model.partition("@")[0]
            slot = self.slots[name]
            if slot.previous is not None and held_name(slot.previous) == action.model:
                old_previous, slot.previous = slot.previous, None
                log.info("released %s to make room (%s)", action.model, why)
                await self._retire(old_previous)
            return
        slot = self.slots[action.model]
        old = slot.handle
        if old is None or old.variant.id != action.variant:
            return
        log.info(
            "%s %s/%s (%s; loss %.3f for %d bytes)",
            action.kind,
            action.model,
            action.variant,
            action.reason,
            action.loss,
            action.freed,
        )
        if action.kind is ActionKind.EVICT:
            self.events.evicted(why)
            slot.drop(f"evicted ({why}): {action.reason}")
            await self._retire(old)
            return
        self.events.downgraded(why)
        assert action.to is not None
        await self._switch(slot, old.manifest.variant(action.to), f"downgraded ({why})")

    async def _switch(self, slot: Slot, variant: Variant, why: str) -> None:
        """Serve ``variant`` instead of the current one: load it first when memory allows,
        else drop the current one first (requests queue for the memory lock meanwhile)."""
        old = slot.handle
        assert old is not None
        need = self.costs.option(variant).bytes
        drop_first = need > self.free()
        if drop_first:
            slot.drop(slot.reason)
            slot.loading()
            await self._retire(old)
        handle = await self._load(old.manifest, variant)
        slot.install(handle, f"{why}: serving {variant.id} (quality {variant.quality:.3f})")
        if not drop_first:
            await self._retire(old)

    async def _shed_if_over(self, protect: str | None = None, why: str = "memory") -> None:
        # A downgrade's small variant is planned on an estimate and may measure more once
        # loaded: then plan again from what is resident now (a few rounds at most).
        for _ in range(SHED_ROUNDS):
            accounted = self.accounted()
            if accounted <= self.reading.bytes:
                return
            shed = self.engine.shed(self.snapshot(), protect)
            if not shed.enough:
                log.warning(
                    "over budget by %d bytes and not enough may leave (pinned or busy)",
                    accounted - self.reading.bytes,
                )
            for action in shed.actions:
                if self.accounted() <= self.reading.bytes:
                    break
                await self._apply(action, why)
            if self.accounted() >= accounted:
                return  # nothing more could leave

    async def tick(self) -> BudgetReading:
        """Re-read memory pressure; shed when over budget, upgrade busy models when it eases."""
        measured = sum(h.load_stats.memory_bytes for h in self.handles())
        self.budget.reread(measured, self.accounted)
        async with self._memory:
            decision = self.engine.tick(self.snapshot())
            if isinstance(decision, Upgrade):
                await self._upgrade(decision)
            elif isinstance(decision, Shed):
                await self._shed_if_over(why="pressure")
        self._notify()
        return self.reading

    async def _upgrade(self, upgrade: Upgrade) -> None:
        slot = self.slots[upgrade.model]
        handle = slot.handle
        assert handle is not None
        log.info("upgrade %s: %s -> %s", slot.name, handle.variant.id, upgrade.target.variant)
        self.events.upgraded(slot.name)
        await self._switch(slot, handle.manifest.variant(upgrade.target.variant), "upgraded")
        if self.accounted() > self.reading.bytes:
            # Planned on an estimate, the load measured more: shed the excess now, and do not
            # try this model again for a while (no upgrade/shed churn).
            slot.back_off(self.engine.backoff_until(self.clock()))
            await self._shed_if_over()

    def _notify(self) -> None:
        """Wake requests waiting for memory."""
        self._memory_changed.set()
        self._memory_changed = asyncio.Event()

    def _in_background(self, coro: object) -> None:
        task = asyncio.ensure_future(coro)  # type: ignore[call-overload]
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _load(self, manifest: Manifest, variant: Variant, preload: bool = False) -> Handle:
        try:
            handle = await self.loader.load(
                manifest, variant, self.costs.floor(variant), background=preload
            )
        except CorruptBlobError as exc:
            for part in files_of(variant):
                if part.sha256 == exc.digest:
                    self.verdicts.corrupt(part, exc.message)
            self.refresh()
            raise
        self.verdicts.loaded(variant)
        return handle

    async def _retire(self, handle: Handle) -> None:
        """Drain a handle's leases, then free it."""
        drain = self.settings.server.drain_seconds
        if not await handle.drained(drain):
            log.warning(
                "%s variant %s still had %d requests after %.0fs; waiting on",
                handle.manifest.name,
                handle.variant.id,
                handle.inflight,
                drain,
            )
            await handle.drained()
        if handle.preloaded and not handle.used:
            self.events.preload_wasted(handle.manifest.name)
        await self.loader.close(handle)
        self._notify()

    # -- operations -----------------------------------------------------------------------------

    def slot(self, name: str) -> Slot:
        slot = self.slots.get(name)
        if slot is None:
            raise NotFoundError(f"unknown model {name!r}")
        return slot

    async def load(self, name: str, variant_id: str | None = None) -> Handle:
        self.refresh()
        return await self.ensure_ready(self.slot(name), variant_id)

    async def unload(self, name: str, why: str = "api") -> None:
        slot = self.slot(name)
        async with self._memory:
            old = slot.drop(f"evicted ({why})")
            if old is None:
                return
            self.events.evicted(why)
            # Its bytes stay promised until it is closed; the drain itself waits outside the
            # memory lock, so loads and requests to other models go on meanwhile (a stalled
            # client's lease once held every other model up for the evict's whole wait).
            key = f"retiring {name} {id(old)}"
            self.budget.reserved[key] = self.bytes_of(old)
        try:
            await self._retire(old)
        finally:
            self.budget.reserved.pop(key, None)
            self._notify()

    def pin(self, name: str, pinned: bool) -> None:
        self.slot(name).pin(pinned)

    # -- versions: what the lifecycle asks for --------------------------------------------------

    async def load_beside(self, name: str, manifest: Manifest) -> Handle:
        """Load another version of ``name`` next to the serving one, without serving it.

        The engine places it as a model of its own (``name@version``) with the serving version's
        traffic, making room as for any load, but never displacing the serving version; the same
        variant as the serving one when it fits (comparisons between versions then compare like
        with like), the best that fits otherwise. Bytes are reserved under the memory lock and
        the load runs outside it on the background load thread, as a preload does.
        RESOURCE_EXHAUSTED (NoRoomError) when both cannot fit."""
        slot = self.slot(name)
        options = tuple(o for _, o in await self.costs.usable(manifest))
        key = f"{name}@{manifest.version}"
        async with self._memory:
            serving = slot.handle
            extra = ModelState(key, options, None, max(self.predicted_requests(slot), 1.0))
            snapshot = self.snapshot(extra)
            if serving is not None:  # it serves on meanwhile: never displaced
                models = dict(snapshot.models)
                models[name] = dataclasses.replace(models[name], busy=True)
                snapshot = dataclasses.replace(snapshot, models=models)
            decision: Placement | NoRoom = NoRoom(key, (), 0)
            if serving is not None and any(o.variant == serving.variant.id for o in options):
                decision = self.engine.place(snapshot, key, variant=serving.variant.id)
            if isinstance(decision, NoRoom):
                decision = self.engine.place(snapshot, key)
            if isinstance(decision, NoRoom):
                raise NoRoomError(self._no_room(decision))
            for action in decision.actions:
                await self._apply(action, "candidate")
            self.budget.reserved[key] = decision.option.bytes
        try:
            handle = await self._load(manifest, manifest.variant(decision.option.variant), True)
        finally:
            self.budget.reserved.pop(key, None)
        async with self._memory:
            if slot.candidate is not None:
                self._in_background(self._retire(slot.candidate))
            slot.candidate = handle
            await self._shed_if_over(protect=name)
        self._notify()
        return handle

    async def flip(self, name: str, reason: str, keep_previous: bool) -> None:
        """The candidate serves from now on, in one step: a request sees the old version or the
        new one, never neither and never a wait. The version it replaces is kept warm as
        ``previous`` (the fallback during probation) or drained and closed in the background."""
        slot = self.slot(name)
        async with self._memory:
            candidate = slot.candidate
            if candidate is None:
                raise EdgedError(f"model {name!r} has no candidate loaded", ErrorCode.ABORTED)
            slot.candidate = None
            slot.serve(candidate.manifest)
            old = slot.install(candidate, reason)
            if old is not None:
                if keep_previous:
                    if slot.previous is not None:
                        self._in_background(self._retire(slot.previous))
                    slot.previous = old
                else:
                    self._in_background(self._retire(old))
            await self._shed_if_over(protect=name)
        self._notify()

    async def flip_back(self, name: str, reason: str) -> bool:
        """Serve the previous version again (kept warm) and close the one that served; False
        when no previous version is resident."""
        slot = self.slot(name)
        async with self._memory:
            previous = slot.previous
            if previous is None:
                return False
            slot.previous = None
            slot.serve(previous.manifest)
            bad = slot.install(previous, reason)
            if bad is not None:
                self._in_background(self._retire(bad))
        self._notify()
        return True

    async def release(self, name: str, which: str) -> None:
        """Let the candidate (``which="candidate"``) or the previous version go."""
        slot = self.slot(name)
        async with self._memory:
            handle = slot.candidate if which == "candidate" else slot.previous
            if which == "candidate":
                slot.candidate = None
            else:
                slot.previous = None
        if handle is not None:
            await self._retire(handle)

    async def swap_in_place(
        self,
        name: str,
        manifest: Manifest,
        reason: str,
        check: Callable[[Handle], Awaitable[str | None]] | None = None,
    ) -> Handle:
        """The resource-preserving swap: requests to ``name`` are held (a bounded queue), the
        serving version drains and is released, ``manifest`` is loaded into the room it left
        (the engine may make more), ``check`` looks at it while requests still wait (a reason
        to refuse it, or None), and it serves. Refused or failed to load, the old version is
        loaded again (raising why). The hold ends either way."""
        slot = self.slot(name)
        hold: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        slot.swapping = hold
        try:
            async with self._memory:
                old_manifest = slot.manifest
                old = slot.drop(f"swapping to version {manifest.version}")
                if old is not None:
                    await self._retire(old)
                slot.serve(manifest)
                refused: EdgedError | None = None
                try:
                    outcome = await self._try_load(slot, None, None)
                    if not isinstance(outcome, Handle):
                        refused = NoRoomError(outcome)
                    elif check is not None:
                        why = await check(outcome)
                        if why is not None:
                            refused = RefusedError(why)
                except EdgedError as exc:
                    refused = exc
                if refused is None:
                    assert isinstance(outcome, Handle)
                    slot.reason = reason
                    return outcome
                bad = slot.drop(slot.reason)
                if bad is not None:
                    await self._retire(bad)
                slot.serve(old_manifest)
                await self._try_load(slot, None, None)
                raise refused
        finally:
            slot.swapping = None
            hold.set_result(None)
            self._notify()

    def serve_version(self, name: str, manifest: Manifest) -> None:
        """Serve ``manifest`` from the next request on, with no evaluation (the lifecycle's
        ``direct`` mode): it loads at once if the old version was resident."""
        slot = self.slot(name)
        was_resident = slot.handle is not None
        slot.serve(manifest)
        if was_resident:
            self._in_background(self.load(name))

    # -- the request path -----------------------------------------------------------------------

    async def lease(self, name: str, version: str) -> Lease:
        """Hold ``name``'s serving version for one request, loading it if it is not resident."""
        slot, arrived = self.arrive(name, version)
        return self.warm_lease(slot, arrived) or await self.cold_lease(slot, arrived)

    def arrive(self, name: str, version: str) -> tuple[Slot, float]:
        """A request for ``name``: check the name and version, note the arrival; (the slot, the
        arrival's perf_counter). Then warm_lease, or cold_lease when that returns None: the
        request path leases a resident model without creating a coroutine."""
        slot = self.slots.get(name)
        if slot is None:
            raise NotFoundError(f"unknown model {name!r}")
        if version and version != slot.manifest.version:
            raise NotFoundError(
                f"model {name!r} version {version!r} is not served "
                f"(the active version is {slot.manifest.version!r})"
            )
        arrived = time.perf_counter()
        slot.last_use = now = self.clock()
        slot.rate.observe(now)
        if self.on_arrival is not None:
            self.on_arrival(name)
        return slot, arrived

    def warm_lease(self, slot: Slot, arrived: float) -> Lease | None:
        handle = slot.handle
        if handle is None or handle.version != slot.manifest.version or slot.swapping:
            return None
        return self._leased(handle, arrived, cold=False)

    async def cold_lease(self, slot: Slot, arrived: float) -> Lease:
        return self._leased(await self.ensure_ready(slot), arrived, cold=True)

    def _leased(self, handle: Handle, arrived: float, cold: bool) -> Lease:
        name = handle.manifest.name
        if not handle.used:
            handle.used = True
            if handle.preloaded:
                self.events.preload_hit(name)
        self.events.served(name, handle.variant.quality)
        return Lease(handle, cold=cold, arrived=arrived, done=self.on_complete)

    # -- preloading -----------------------------------------------------------------------------

    async def preload(
        self, name: str, probability: float, lead: float, trigger: str, wait: float = 0.0
    ) -> bool:
        """Load ``name``'s serving version ahead of demand when it pays (engine.preload).

        Never while a request's load or another memory decision is under way (it may wait
        ``wait`` seconds for one to finish), never a variant that has not been validated, and
        outside the memory lock: the bytes are reserved, the load runs on the low-priority
        preload thread, and requests for other models go on meanwhile.
        Requests for this model wait for the preload instead of starting a second load.
        """
        # A pipeline head that arrived cold holds the memory lock while it loads: its follower
        # may wait up to ``wait`` for the lock to come free, then queues behind what waits.
        deadline = time.monotonic() + wait
        while self._memory.locked() and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        slot = self.slots.get(name)
        if slot is None or slot.preloading is not None:
            return False
        if slot.handle is not None or self._memory.locked():
            return False
        manifest = slot.manifest
        async with self._memory:
            if slot.handle is not None or slot.preloading is not None:
                return False
            decision = self.engine.preload(self.snapshot(), name, probability, lead)
            if decision is None:
                return False
            variant = manifest.variant(decision.option.variant)
            for action in decision.actions:
                await self._apply(action, "preload")
            self.budget.reserved[name] = decision.option.bytes
            future: asyncio.Future[Handle | None] = asyncio.get_running_loop().create_future()
            slot.preload_started(future)
        log.debug("preload %s/%s (%s, gain %.3f)", name, variant.id, trigger, decision.gain)
        installed = await self._preload_load(slot, manifest, variant, decision, trigger)
        future.set_result(slot.handle if installed else None)
        self._notify()
        return installed

    async def _preload_load(
        self, slot: Slot, manifest: Manifest, variant: Variant, decision: Placement, trigger: str
    ) -> bool:
        handle: Handle | None = None
        try:
            handle = await self._load(manifest, variant, preload=True)
        except EdgedError as exc:
            log.warning("preload of %s failed: %s", slot.name, exc.message)
        finally:
            self.budget.reserved.pop(slot.name, None)
        async with self._memory:
            slot.preload_ended()
            installed = handle is not None and slot.handle is None and slot.manifest is manifest
            if installed:
                assert handle is not None
                handle.preloaded = True
                slot.install(handle, f"preloaded {variant.id} ({trigger})")
                self.events.preloaded(slot.name, trigger)
            else:
                slot.settled()
                if handle is not None:
                    self._in_background(self._retire(handle))
            await self._shed_if_over(protect=slot.name)
        return installed

    async def close(self) -> None:
        for slot in self.slots.values():
            if slot.handle is not None:
                with contextlib.suppress(Exception):
                    await self.unload(slot.name, why="shutdown")
        self.loader.shutdown()
        self.journal.stop_cleanly()
        self.verdicts.stopped_cleanly()
