"""The portfolio: one slot per model, variant validation and choice, loading and leases.

Loading order for a variant that has never run here: probe it in a subprocess (runtime/probe.py),
remember the verdict per blob, and only then load it into the daemon. Loads run one at a time on
their own thread, so a cold load never occupies an inference worker and RSS deltas measure one
load each.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from edged.errors import EdgedError, ErrorCode, NotFoundError, UnavailableError
from edged.portfolio.journal import LOADING, RESIDENT, CrashJournal
from edged.portfolio.residency import (
    Action,
    BudgetReading,
    BudgetSettings,
    Option,
    Resident,
    ScoringWeights,
    SystemMemory,
    candidate_actions,
    choose_load,
    plan,
    preload_choice,
    startup_reserve,
    upgrade_target,
    working_budget,
)
from edged.portfolio.slot import Handle, Lease, Slot, SlotState
from edged.runtime import open_runtime
from edged.runtime.base import LoadStats, Runtime
from edged.runtime.memory import measure, release_freed_memory, rss_bytes
from edged.runtime.probe import ProbeResult, probe_and_record, stored_result
from edged.store.manifest import Manifest, Variant
from edged.store.store import ModelStore

if TYPE_CHECKING:
    from edged.metrics import Metrics

log = logging.getLogger(__name__)

# After an upgrade that did not fit once loaded, how long before that model may try again.
UPGRADE_BACKOFF_SECONDS = 300.0


def _background_priority() -> None:
    """Run preloads below the request path's priority (nice 10 on this thread only)."""
    with contextlib.suppress(OSError, AttributeError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)


def _threads() -> set[str]:
    try:
        return set(os.listdir("/proc/self/task"))
    except OSError:
        return set()


def _restore_priority(tids: set[str]) -> None:
    """Threads a runtime starts during a preload inherit its nice value; give them the
    process's (needs CAP_SYS_NICE or a LimitNICE= that allows it; else they stay niced)."""
    # The main thread's (its id is the pid); 0 would mean the calling, niced preload thread.
    base = os.getpriority(os.PRIO_PROCESS, os.getpid())
    for tid in tids:
        with contextlib.suppress(OSError, ValueError):
            os.setpriority(os.PRIO_PROCESS, int(tid), base)


def variant_key(variant: Variant) -> str:
    """Verdicts and crash counts belong to a file and its runtime, not to a model name."""
    return f"{variant.sha256}.{variant.format}"


@dataclasses.dataclass(frozen=True)
class PortfolioSettings:
    budget: BudgetSettings
    weights: ScoringWeights = dataclasses.field(default_factory=ScoringWeights)
    probe_timeout: float = 120.0
    quarantine_after: int = 2
    drain_seconds: float = 10.0
    infer_workers: int = 4
    # How long a request waits for memory before RESOURCE_EXHAUSTED.
    load_timeout: float = 30.0
    pinned: frozenset[str] = frozenset()
    # A downgraded model is upgraded back when it expects at least this many requests.
    upgrade_min_requests: float = 1.0


class Portfolio:
    def __init__(
        self,
        store: ModelStore,
        journal: CrashJournal,
        settings: PortfolioSettings,
        *,
        system: SystemMemory | None = None,
        clock: Callable[[], float] = time.monotonic,
        metrics: Metrics | None = None,
    ) -> None:
        self.store = store
        self.journal = journal
        self.settings = settings
        self.system = system or SystemMemory()
        self.clock = clock
        self.metrics = metrics
        self.slots: dict[str, Slot] = {}
        self.infer_pool = ThreadPoolExecutor(settings.infer_workers, "edged-infer")
        self._load_pool = ThreadPoolExecutor(1, "edged-load")
        self._preload_pool = ThreadPoolExecutor(
            1, "edged-preload", initializer=_background_priority
        )
        # Bytes promised to preloads in flight (they load outside the memory lock).
        self._reserved: dict[str, int] = {}
        # Two loads at once share one RSS delta: a load overlapped another when one was running as
        # it started, or one started before it finished.
        self._loads_running = 0
        self._loads_started = 0
        # Hooks of the preloader (edged/portfolio/preloader.py): forecast expected requests
        # within the horizon, see each arrival, see each finished request.
        self.expected: Callable[[str], float] | None = None
        self.on_arrival: Callable[[str], None] | None = None
        self.on_complete: Callable[[Lease], None] | None = None
        self._crashes: dict[str, dict[str, Any]] = {}
        self._verdicts: dict[str, ProbeResult] = {}
        self._probing: dict[str, asyncio.Future[ProbeResult]] = {}
        self._background: set[asyncio.Future[None]] = set()
        # Every decision that changes what is resident holds this lock; requests to resident
        # models never take it.
        self._memory = asyncio.Lock()
        self._memory_changed = asyncio.Event()
        self.reading = BudgetReading(settings.budget.configured, "config", 0, None)
        self.baseline_rss = rss_bytes()
        # Measured RSS above the baseline over the sum of per-load measurements (>= 1).
        self.correction = 1.0

    # -- start-up -------------------------------------------------------------------------------

    def recover_from_crash(self) -> list[str]:
        """Blame the variants that were loading or running when the last run died."""
        clean, entries = self.journal.previous_run()
        self._crashes = self.store.crashes()
        suspects = [] if clean else [e.key for e in entries if e.suspect]
        for key in suspects:
            record = self._crashes.setdefault(key, {"count": 0})
            record["count"] = int(record.get("count", 0)) + 1
            log.warning(
                "the last run died while %s was loading or running (crash %d)", key, record["count"]
            )
        if suspects:
            self.store.put_crashes(self._crashes)
        self.journal.start()
        return suspects

    def refresh(self) -> None:
        """Re-read the store: new models, new active versions."""
        for name in self.store.models():
            slot = self.slots.get(name)
            if slot is None:
                slot = self.slots[name] = Slot(name, self.settings.weights.half_life_seconds)
                slot.pinned = name in self.settings.pinned
            active = self.store.active(name)
            if active is None:
                continue
            if slot.manifest is None or slot.manifest.version != active:
                try:
                    slot.manifest = self.store.manifest(name, active)
                except EdgedError as exc:
                    slot.reason = exc.message
                    log.error("model %s: cannot read version %s: %s", name, active, exc.message)

    def version_changed(self, name: str) -> None:
        """The store's active version of ``name`` moved (a pushed update): requests get it from
        now on; it loads at once if the old version was resident, so few requests wait."""
        slot = self.slots.get(name)
        was_resident = slot is not None and slot.handle is not None
        self.refresh()
        if was_resident:
            self._in_background(self.load(name))

    async def load_all(self) -> None:
        """Load every model's active version while the budget allows; the rest load on demand.

        Nothing is evicted at start, so a greedy pass would give the first models their best
        variants and leave the last ones cold. Instead each load keeps room for the smallest
        variants of the models still to come; models go busiest first (the replayed history),
        then by name. So every model that can be resident is, at the best quality left for it,
        and the residency tick upgrades busy ones later as memory allows (docs/residency.md).
        """
        slots = [slot for _, slot in sorted(self.slots.items()) if slot.manifest is not None]
        smallest: dict[str, int] = {}
        for slot in slots:
            assert slot.manifest is not None
            with contextlib.suppress(EdgedError):  # reported by the load below
                options = await self._usable_options(slot.manifest)
                smallest[slot.name] = min(o.bytes for _, o in options)
        order = sorted(slots, key=lambda s: -self.predicted_requests(s))  # stable: name order
        for i, slot in enumerate(order):
            reserve = startup_reserve(
                self.free(),
                smallest.get(slot.name, 0),
                sum(smallest.get(s.name, 0) for s in order[i + 1 :]),
            )
            try:
                await self.ensure_ready(slot, wait=False, evict=False, reserve=reserve)
            except EdgedError as exc:
                log.warning("model %s not loaded at start: %s", slot.name, exc.message)

    # -- verdicts -------------------------------------------------------------------------------

    def crash_count(self, variant: Variant) -> int:
        return int(self._crashes.get(variant_key(variant), {}).get("count", 0))

    def verdict(self, variant: Variant) -> tuple[str, str, ProbeResult | None]:
        """(state, reason, probe result) without running anything."""
        crashes = self.crash_count(variant)
        if crashes >= self.settings.quarantine_after:
            return (
                "QUARANTINED",
                f"quarantined: the daemon died {crashes} times while this variant was "
                "loading or running",
                None,
            )
        result = self._verdicts.get(variant_key(variant))
        if result is None:
            result = stored_result(self.store, variant)
            if result is not None:
                self._verdicts[variant_key(variant)] = result
        if result is None:
            return ("UNVALIDATED", "", None)
        if not result.usable:
            return ("UNUSABLE", result.reason, result)
        return ("USABLE", "", result)

    async def validate(self, variant: Variant) -> ProbeResult:
        state, reason, result = self.verdict(variant)
        if result is not None or state == "QUARANTINED":
            return result or ProbeResult(False, reason)
        key = variant_key(variant)
        pending = self._probing.get(key)
        if pending is None:
            pending = asyncio.ensure_future(self._run_probe(variant))
            self._probing[key] = pending
            pending.add_done_callback(lambda _: self._probing.pop(key, None))
        return await asyncio.shield(pending)

    async def _run_probe(self, variant: Variant) -> ProbeResult:
        result = await probe_and_record(self.store, variant, self.settings.probe_timeout)
        self._verdicts[variant_key(variant)] = result
        return result

    # -- accounting -----------------------------------------------------------------------------

    def accounted(self) -> int:
        """Bytes the resident variants hold, as measured at load and corrected since."""
        return sum(self.bytes_of(s.handle) for s in self.slots.values() if s.handle)

    def free(self) -> int:
        return self.reading.bytes - self.accounted() - sum(self._reserved.values())

    def bytes_of(self, handle: Handle) -> int:
        return int(handle.load_stats.memory_bytes * self.correction)

    @staticmethod
    def expected_bytes(variant: Variant, result: ProbeResult | None) -> int:
        if result is not None and result.memory_bytes > 0:
            return result.memory_bytes
        return variant.memory_bytes or variant.size

    def predicted_requests(self, slot: Slot) -> float:
        w = self.settings.weights
        by_rate = slot.rate.rate(self.clock()) * w.horizon_seconds
        if self.expected is None:
            return by_rate
        return max(by_rate, self.expected(slot.name))

    def _option(self, variant: Variant, result: ProbeResult | None) -> Option:
        return Option(
            variant.id,
            int(self.expected_bytes(variant, result) * self.correction),
            variant.quality,
            result.load_seconds if result else 1.0,
        )

    def _known_options(self, manifest: Manifest) -> list[tuple[Variant, Option]]:
        """Usable variants whose verdict is already known, best quality first."""
        out = []
        for variant in manifest.variants:
            state, _, result = self.verdict(variant)
            if state == "USABLE":
                out.append((variant, self._option(variant, result)))
        out.sort(key=lambda vo: (-vo[1].quality, vo[1].bytes))
        return out

    async def _usable_options(self, manifest: Manifest) -> list[tuple[Variant, Option]]:
        reasons = []
        for variant in manifest.variants:
            result = await self.validate(variant)
            if not result.usable:
                reasons.append(f"{variant.id}: {result.reason}")
        options = self._known_options(manifest)
        if not options:
            raise EdgedError(
                f"model {manifest.name} version {manifest.version}: no variant can be loaded ("
                + "; ".join(reasons)
                + ")",
                ErrorCode.FAILED_PRECONDITION,
            )
        return options

    def residents(self, exclude: str | None = None) -> list[Resident]:
        out = []
        for name, slot in self.slots.items():
            handle = slot.handle
            if handle is None or name == exclude:
                continue
            current = Option(
                handle.variant.id,
                self.bytes_of(handle),
                handle.variant.quality,
                handle.load_stats.seconds,
            )
            smaller = tuple(
                option
                for _, option in self._known_options(handle.manifest)
                if option.bytes < current.bytes and option.variant != current.variant
            )
            out.append(
                Resident(
                    name,
                    current,
                    smaller,
                    self.predicted_requests(slot),
                    pinned=slot.pinned,
                    busy=handle.inflight > 0,
                )
            )
        return out

    # -- decisions ------------------------------------------------------------------------------

    async def ensure_ready(
        self,
        slot: Slot,
        variant_id: str | None = None,
        *,
        wait: bool = True,
        evict: bool = True,
        reserve: int = 0,
    ) -> Handle:
        """The slot's handle for its active version, loading it (and making room) if needed.

        Waits up to ``load_timeout`` for memory to free up; then RESOURCE_EXHAUSTED names what
        could not fit. ``reserve`` bytes of the free memory are left alone (load_all).
        """
        deadline = time.monotonic() + (self.settings.load_timeout if wait else 0.0)
        if slot.preloading is not None:  # a preload is bringing it in: faster than a new load
            await asyncio.shield(slot.preloading)
        while True:
            changed = self._memory_changed
            async with self._memory:
                handle = slot.handle
                manifest = slot.manifest
                if manifest is None:
                    raise NotFoundError(f"model {slot.name!r} has no active version")
                if (
                    handle is not None
                    and handle.version == manifest.version
                    and (variant_id is None or handle.variant.id == variant_id)
                ):
                    return handle
                try:
                    outcome = await self._try_load(slot, manifest, variant_id, evict, reserve)
                except EdgedError as exc:
                    slot.reason = exc.message
                    if slot.handle is None:
                        slot.state = SlotState.FAILED
                    raise
                if isinstance(outcome, Handle):
                    return outcome
            remaining = deadline - time.monotonic()
            if remaining > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), remaining)
            if time.monotonic() >= deadline:
                slot.reason = outcome
                raise EdgedError(outcome, ErrorCode.RESOURCE_EXHAUSTED)

    async def _try_load(
        self,
        slot: Slot,
        manifest: Manifest,
        variant_id: str | None,
        evict: bool = True,
        reserve: int = 0,
    ) -> Handle | str:
        """Load the variant worth the most after what making room for it costs, or say why
        none can be loaded now. Called with the memory lock held."""
        options = await self._usable_options(manifest)
        if variant_id is not None:
            options = [vo for vo in options if vo[0].id == variant_id]
            if not options:
                raise NotFoundError(f"model {manifest.name!r} has no usable variant {variant_id!r}")
        old = slot.handle
        free = self.free() + (self.bytes_of(old) if old is not None else 0) - reserve
        residents = self.residents(exclude=slot.name) if evict else []
        choice = choose_load(
            [o for _, o in options],
            free,
            residents,
            self.predicted_requests(slot),
            self.settings.weights,
        )
        if isinstance(choice, list):
            pinned = sorted(s.name for s in self.slots.values() if s.pinned and s.handle)
            return (
                f"model {manifest.name}: no variant fits in memory ("
                + "; ".join(choice)
                + f"; {max(free, 0)} of {self.reading.bytes} budget bytes free"
                + (f"; pinned: {', '.join(pinned)}" if pinned else "")
                + ")"
            )
        option, actions = choice
        variant = next(v for v, o in options if o is option)
        for action in actions:
            await self._apply(action, "memory")
        slot.state = SlotState.LOADING
        try:
            handle = await self._load(manifest, variant)
        except EdgedError as exc:
            slot.state = SlotState.READY if old is not None else SlotState.FAILED
            slot.reason = exc.message
            raise
        slot.handle, slot.state = handle, SlotState.READY
        slot.reason = f"serving {variant.id} (quality {variant.quality:.3f})" + (
            f" after {', '.join(f'{a.kind} {a.model}/{a.variant}' for a in actions)}"
            if actions
            else ""
        )
        log.debug("cold load of %s: %s", slot.name, slot.reason)
        if self.metrics is not None:
            self.metrics.cold_loads.labels(slot.name).inc()
        if old is not None:
            self._in_background(self._retire(old))
        await self._shed_if_over(protect=slot.name)
        return handle

    async def _apply(self, action: Action, why: str) -> None:
        """Carry out an eviction or a downgrade (memory lock held)."""
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
        if self.metrics is not None:
            counter = self.metrics.evictions if action.kind == "evict" else self.metrics.downgrades
            counter.labels(why).inc()
        if action.kind == "evict":
            slot.handle, slot.state = None, SlotState.UNLOADED
            slot.reason = f"evicted ({why}): {action.reason}"
            await self._retire(old)
            return
        assert action.to is not None
        await self._switch(slot, old.manifest.variant(action.to), f"downgraded ({why})")

    async def _switch(self, slot: Slot, variant: Variant, why: str) -> None:
        """Serve ``variant`` instead of the current one: load it first when memory allows,
        else drop the current one first (requests queue for the memory lock meanwhile)."""
        old = slot.handle
        assert old is not None
        _, _, result = self.verdict(variant)
        need = self._option(variant, result).bytes
        drop_first = need > self.free()
        if drop_first:
            slot.handle, slot.state = None, SlotState.LOADING
            await self._retire(old)
        handle = await self._load(old.manifest, variant)
        slot.handle, slot.state = handle, SlotState.READY
        slot.reason = f"{why}: serving {variant.id} (quality {variant.quality:.3f})"
        if not drop_first:
            await self._retire(old)

    async def _shed_if_over(self, protect: str | None = None, why: str = "memory") -> None:
        # A downgrade's small variant is planned on an estimate and may measure more once
        # loaded: then plan again from what is resident now (a few rounds at most).
        for _ in range(3):
            accounted = self.accounted()
            if accounted <= self.reading.bytes:
                return
            await self._shed_round(protect, why)
            if self.accounted() >= accounted:
                return  # nothing more could leave

    async def _shed_round(self, protect: str | None, why: str) -> None:
        over = self.accounted() - self.reading.bytes
        residents = [r for r in self.residents() if r.model != protect]
        actions = plan(residents, over, self.settings.weights)
        if actions is None:
            # Not enough can leave: free all that can, one action per model, the one freeing
            # the most (an eviction, not a downgrade that would leave bytes behind); cheapest
            # models first.
            most: dict[str, Action] = {}
            for action in candidate_actions(residents, self.settings.weights):
                if action.model not in most or action.freed > most[action.model].freed:
                    most[action.model] = action
            actions = sorted(most.values(), key=lambda a: a.loss_per_byte)
            log.warning("over budget by %d bytes and not enough may leave (pinned or busy)", over)
        for action in actions:
            if self.accounted() <= self.reading.bytes:
                break
            await self._apply(action, why)

    async def tick(self) -> BudgetReading:
        """Re-read memory pressure; shed when over budget, upgrade busy models when it eases."""
        raw = sum(s.handle.load_stats.memory_bytes for s in self.slots.values() if s.handle)
        observed = rss_bytes() - self.baseline_rss
        # Correct per-load measurements by what the process really holds, within reason: the
        # rest of the heap (requests in flight, caches) also lives above the baseline.
        self.correction = min(max(observed / raw, 1.0), 2.0) if raw > 0 else 1.0
        self.reading = working_budget(
            self.settings.budget, self.system, self.accounted(), self.baseline_rss
        )
        async with self._memory:
            if self.accounted() > self.reading.bytes:
                await self._shed_if_over(why="pressure")
            else:
                await self._upgrade_one()
        self._notify()
        return self.reading

    async def _upgrade_one(self) -> None:
        for name, slot in sorted(self.slots.items()):
            handle = slot.handle
            # A pin holds the variant that is resident: no automatic swap in either direction.
            if (
                handle is None
                or handle.inflight > 0
                or slot.pinned
                or slot.upgrade_after > self.clock()
            ):
                continue
            options = self._known_options(handle.manifest)
            current = next((o for v, o in options if v.id == handle.variant.id), None)
            if current is None:
                continue
            target = upgrade_target(
                dataclasses.replace(current, bytes=self.bytes_of(handle)),
                [o for _, o in options],
                self.free(),
                self.predicted_requests(slot),
                self.settings.upgrade_min_requests,
            )
            if target is not None:
                log.info("upgrade %s: %s -> %s", name, handle.variant.id, target.variant)
                if self.metrics is not None:
                    self.metrics.upgrades.inc()
                await self._switch(slot, handle.manifest.variant(target.variant), "upgraded")
                if self.accounted() > self.reading.bytes:
                    # Planned on an estimate, the load measured more: shed the excess now, and
                    # do not try this model again for a while (no upgrade/shed churn).
                    slot.upgrade_after = self.clock() + UPGRADE_BACKOFF_SECONDS
                    await self._shed_if_over()
                return

    def _notify(self) -> None:
        """Wake requests waiting for memory."""
        self._memory_changed.set()
        self._memory_changed = asyncio.Event()

    def _in_background(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _load(self, manifest: Manifest, variant: Variant, preload: bool = False) -> Handle:
        key = variant_key(variant)
        path = self.store.variant_path(variant)

        def work() -> tuple[Runtime, LoadStats]:
            before = _threads() if preload else set()
            with measure(path) as stats:
                runtime = open_runtime(variant.format, path, variant.options)
                runtime.warm_up(manifest.warmup)
            if preload:
                _restore_priority(_threads() - before)
            return runtime, stats

        self.journal.set(key, LOADING)
        loop = asyncio.get_running_loop()
        overlapped = self._loads_running > 0
        self._loads_running += 1
        self._loads_started += 1
        started = self._loads_started
        try:
            pool = self._preload_pool if preload else self._load_pool
            runtime, stats = await loop.run_in_executor(pool, work)
        except Exception as exc:
            self.journal.clear(key)
            raise UnavailableError(
                f"model {manifest.name} variant {variant.id} failed to load: {exc}"
            ) from exc
        finally:
            self._loads_running -= 1
            overlapped = overlapped or self._loads_started != started
        # Freed pages of an earlier unload hide part of the real cost (a reload of a variant the
        # probe measured at 13.6 MB grew RSS by 1.1 MB), and two loads at once share one RSS
        # delta: the subprocess probe's measurement, taken in a fresh interpreter, is the floor.
        expected = self.expected_bytes(variant, self.verdict(variant)[2])
        if overlapped or stats.memory_bytes < expected:
            stats.rss_delta_bytes = expected
            stats.mapped_bytes = 0
        self.journal.set(key, RESIDENT)
        if self.metrics is not None:
            self.metrics.loads.labels(manifest.name, variant.id).inc()
            self.metrics.load_seconds.observe(stats.seconds)
        log.info(
            "loaded %s version %s variant %s in %.3fs (%d bytes)",
            manifest.name,
            manifest.version,
            variant.id,
            stats.seconds,
            stats.memory_bytes,
        )
        return Handle(manifest, variant, runtime, stats, self.journal, key)

    async def _retire(self, handle: Handle) -> None:
        """Drain a handle's leases, then free it."""
        if not await handle.drained(self.settings.drain_seconds):
            log.warning(
                "%s variant %s still had %d requests after %.0fs; waiting on",
                handle.manifest.name,
                handle.variant.id,
                handle.inflight,
                self.settings.drain_seconds,
            )
            await handle.drained()
        self.journal.clear(variant_key(handle.variant))
        if handle.preloaded and not handle.used and self.metrics is not None:
            self.metrics.preload_wasted.labels(handle.manifest.name).inc()
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._load_pool, self._close, handle.runtime)
        self._notify()

    @staticmethod
    def _close(runtime: Runtime) -> None:
        runtime.close()
        release_freed_memory()

    # -- operations -----------------------------------------------------------------------------

    def slot(self, name: str) -> Slot:
        slot = self.slots.get(name)
        if slot is None or slot.manifest is None:
            raise NotFoundError(f"unknown model {name!r}")
        return slot

    async def load(self, name: str, variant_id: str | None = None) -> Handle:
        self.refresh()
        return await self.ensure_ready(self.slot(name), variant_id)

    async def unload(self, name: str, why: str = "api") -> None:
        slot = self.slot(name)
        async with self._memory:
            old, slot.handle = slot.handle, None
            slot.state = SlotState.UNLOADED
            if old is not None:
                slot.reason = f"evicted ({why})"
                if self.metrics is not None:
                    self.metrics.evictions.labels(why).inc()
                await self._retire(old)

    def pin(self, name: str, pinned: bool) -> None:
        self.slot(name).pinned = pinned

    async def lease(self, name: str, version: str) -> Lease:
        """Hold ``name``'s active version for one request, loading it if it is not resident."""
        slot, arrived = self.arrive(name, version)
        return self.warm_lease(slot, arrived) or await self.cold_lease(slot, arrived)

    def arrive(self, name: str, version: str) -> tuple[Slot, float]:
        """A request for ``name``: check the name and version, note the arrival; (the slot, the
        arrival's perf_counter). Then warm_lease, or cold_lease when that returns None: the
        request path leases a resident model without creating a coroutine."""
        slot = self.slots.get(name)
        if slot is None or slot.manifest is None:
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
        assert slot.manifest is not None
        if handle is None or handle.version != slot.manifest.version:
            return None
        return self._leased(handle, arrived, cold=False)

    async def cold_lease(self, slot: Slot, arrived: float) -> Lease:
        return self._leased(await self.ensure_ready(slot), arrived, cold=True)

    def _leased(self, handle: Handle, arrived: float, cold: bool) -> Lease:
        name = handle.manifest.name
        if not handle.used:
            handle.used = True
            if handle.preloaded and self.metrics is not None:
                self.metrics.preload_hits.labels(name).inc()
        if self.metrics is not None:
            self.metrics.served_quality(handle.variant.quality)
        return Lease(handle, cold=cold, arrived=arrived, done=self.on_complete)

    async def preload(
        self, name: str, probability: float, lead: float, trigger: str, wait: float = 0.0
    ) -> bool:
        """Load ``name``'s active version ahead of demand when it pays (residency.preload_choice).

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
        if slot is None or slot.manifest is None or slot.preloading is not None:
            return False
        if slot.handle is not None or self._memory.locked():
            return False
        manifest = slot.manifest
        async with self._memory:
            if slot.handle is not None or slot.preloading is not None:
                return False
            options = self._known_options(manifest)
            choice = preload_choice(
                [o for _, o in options],
                self.free(),
                self.residents(exclude=name),
                probability,
                lead,
                self.settings.weights,
            )
            if choice is None:
                return False
            option, actions, gain = choice
            variant = next(v for v, o in options if o is option)
            for action in actions:
                await self._apply(action, "preload")
            self._reserved[name] = option.bytes
            future: asyncio.Future[Handle | None] = asyncio.get_running_loop().create_future()
            slot.preloading, slot.state = future, SlotState.LOADING
        log.debug("preload %s/%s (%s, gain %.3f)", name, variant.id, trigger, gain)
        handle: Handle | None = None
        try:
            handle = await self._load(manifest, variant, preload=True)
        except EdgedError as exc:
            log.warning("preload of %s failed: %s", name, exc.message)
        finally:
            self._reserved.pop(name, None)
        installed = False
        async with self._memory:
            slot.preloading = None
            if handle is not None and slot.handle is None and slot.manifest is manifest:
                handle.preloaded = installed = True
                slot.handle, slot.state = handle, SlotState.READY
                slot.reason = f"preloaded {variant.id} ({trigger})"
                if self.metrics is not None:
                    self.metrics.preloads.labels(name, trigger).inc()
            else:
                slot.state = SlotState.READY if slot.handle is not None else SlotState.UNLOADED
                if handle is not None:
                    self._in_background(self._retire(handle))
            await self._shed_if_over(protect=name)
        future.set_result(handle if installed else None)
        self._notify()
        return installed

    async def close(self) -> None:
        for slot in self.slots.values():
            if slot.handle is not None:
                with contextlib.suppress(Exception):
                    await self.unload(slot.name, why="shutdown")
        self.infer_pool.shutdown(wait=True)
        self._load_pool.shutdown(wait=True)
        self._preload_pool.shutdown(wait=True)
        self.journal.stop_cleanly()
        # A clean stop clears crash suspicion for the variants that ran in this run.
        self.store.put_crashes(
            {
                k: v
                for k, v in self._crashes.items()
                if int(v.get("count", 0)) >= self.settings.quarantine_after
            }
        )
