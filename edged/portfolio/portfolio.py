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
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from edged.errors import EdgedError, ErrorCode, NotFoundError, UnavailableError
from edged.portfolio.journal import LOADING, RESIDENT, CrashJournal
from edged.portfolio.slot import Handle, Lease, Slot, SlotState
from edged.runtime import open_runtime
from edged.runtime.base import LoadStats, Runtime
from edged.runtime.memory import measure, release_freed_memory
from edged.runtime.probe import ProbeResult, probe
from edged.store.manifest import Manifest, Variant
from edged.store.store import ModelStore

log = logging.getLogger(__name__)


def variant_key(variant: Variant) -> str:
    """Verdicts and crash counts belong to a file and its runtime, not to a model name."""
    return f"{variant.sha256}.{variant.format}"


@dataclasses.dataclass(frozen=True)
class PortfolioSettings:
    budget_bytes: int
    probe_timeout: float = 120.0
    quarantine_after: int = 2
    drain_seconds: float = 10.0
    infer_workers: int = 4


class Portfolio:
    def __init__(self, store: ModelStore, journal: CrashJournal, settings: PortfolioSettings):
        self.store = store
        self.journal = journal
        self.settings = settings
        self.slots: dict[str, Slot] = {}
        self.infer_pool = ThreadPoolExecutor(settings.infer_workers, "edged-infer")
        self._load_pool = ThreadPoolExecutor(1, "edged-load")
        self._crashes: dict[str, dict[str, Any]] = {}
        self._probing: dict[str, asyncio.Future[ProbeResult]] = {}
        self._background: set[asyncio.Future[None]] = set()

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
            slot = self.slots.setdefault(name, Slot(name))
            active = self.store.active(name)
            if active is None:
                continue
            if slot.manifest is None or slot.manifest.version != active:
                try:
                    slot.manifest = self.store.manifest(name, active)
                except EdgedError as exc:
                    slot.reason = exc.message
                    log.error("model %s: cannot read version %s: %s", name, active, exc.message)

    async def load_all(self) -> None:
        """Load every model's active version while the budget allows; the rest load on demand."""
        for name, slot in sorted(self.slots.items()):
            if slot.manifest is None:
                continue
            try:
                await self.ensure_ready(slot)
            except EdgedError as exc:
                log.warning("model %s not loaded at start: %s", name, exc.message)

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
        record = self.store.validation(variant)
        result = ProbeResult.from_json(record) if record else None
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
        path = self.store.variant_path(variant)
        log.info("validating %s (%s) in a subprocess", variant.file, variant.sha256[:12])
        result = await probe(variant.format, path, variant.options, self.settings.probe_timeout)
        if not result.usable:
            log.warning(
                "variant %s (%s) refused by validation: %s",
                variant.id,
                variant.sha256[:12],
                result.reason,
            )
        self.store.put_validation(variant, result.to_json())
        return result

    # -- choice, load, unload -------------------------------------------------------------------

    def resident_bytes(self) -> int:
        return sum(s.handle.load_stats.memory_bytes for s in self.slots.values() if s.handle)

    @staticmethod
    def expected_bytes(variant: Variant, result: ProbeResult | None) -> int:
        if result is not None and result.memory_bytes > 0:
            return result.memory_bytes
        return variant.memory_bytes or variant.size

    async def choose(self, manifest: Manifest, replacing: Handle | None = None) -> Variant:
        """The best-quality usable variant that fits the memory left (smaller on ties)."""
        free = self.settings.budget_bytes - self.resident_bytes()
        if replacing is not None:
            free += replacing.load_stats.memory_bytes
        reasons = []
        ranked = sorted(manifest.variants, key=lambda v: (-v.quality, v.size))
        for variant in ranked:
            result = await self.validate(variant)
            if not result.usable:
                reasons.append(f"{variant.id}: {result.reason}")
                continue
            need = self.expected_bytes(variant, result)
            if need > free:
                reasons.append(f"{variant.id}: needs {need} bytes, {max(free, 0)} free")
                continue
            return variant
        code = (
            ErrorCode.RESOURCE_EXHAUSTED
            if any("free" in r for r in reasons)
            else (ErrorCode.FAILED_PRECONDITION)
        )
        raise EdgedError(
            f"model {manifest.name} version {manifest.version}: no variant can be loaded ("
            + "; ".join(reasons)
            + ")",
            code,
        )

    async def ensure_ready(self, slot: Slot) -> Handle:
        handle = slot.handle
        if (
            handle is not None
            and slot.manifest is not None
            and (handle.version == slot.manifest.version)
        ):
            return handle
        async with slot.lock:
            manifest = slot.manifest
            if manifest is None:
                raise NotFoundError(f"model {slot.name!r} has no active version")
            old = slot.handle
            if old is not None and old.version == manifest.version:
                return old
            slot.state = SlotState.LOADING
            try:
                variant = await self.choose(manifest, replacing=old)
                handle = await self._load(manifest, variant)
            except EdgedError as exc:
                slot.state = SlotState.READY if old is not None else SlotState.FAILED
                slot.reason = exc.message
                raise
            slot.handle, slot.state, slot.reason = handle, SlotState.READY, ""
        if old is not None:
            task = asyncio.ensure_future(self._retire(old))
            self._background.add(task)
            task.add_done_callback(self._background.discard)
        return handle

    async def _load(self, manifest: Manifest, variant: Variant) -> Handle:
        key = variant_key(variant)
        path = self.store.variant_path(variant)

        def work() -> tuple[Runtime, LoadStats]:
            with measure(path) as stats:
                runtime = open_runtime(variant.format, path, variant.options)
                runtime.warm_up()
            return runtime, stats

        self.journal.set(key, LOADING)
        loop = asyncio.get_running_loop()
        try:
            runtime, stats = await loop.run_in_executor(self._load_pool, work)
        except Exception as exc:
            self.journal.clear(key)
            raise UnavailableError(
                f"model {manifest.name} variant {variant.id} failed to load: {exc}"
            ) from exc
        self.journal.set(key, RESIDENT)
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
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._load_pool, self._close, handle.runtime)

    @staticmethod
    def _close(runtime: Runtime) -> None:
        runtime.close()
        release_freed_memory()

    def slot(self, name: str) -> Slot:
        slot = self.slots.get(name)
        if slot is None or slot.manifest is None:
            raise NotFoundError(f"unknown model {name!r}")
        return slot

    async def load(self, name: str) -> Handle:
        self.refresh()
        return await self.ensure_ready(self.slot(name))

    async def unload(self, name: str) -> None:
        slot = self.slot(name)
        async with slot.lock:
            old, slot.handle = slot.handle, None
            slot.state = SlotState.UNLOADED
        if old is not None:
            await self._retire(old)

    async def lease(self, name: str, version: str) -> Lease:
        slot = self.slots.get(name)
        if slot is None or slot.manifest is None:
            raise NotFoundError(f"unknown model {name!r}")
        if version and version != slot.manifest.version:
            raise NotFoundError(
                f"model {name!r} version {version!r} is not served "
                f"(the active version is {slot.manifest.version!r})"
            )
        handle = slot.handle
        if handle is None or handle.version != slot.manifest.version:
            handle = await self.ensure_ready(slot)
        return Lease(handle)

    async def close(self) -> None:
        for slot in self.slots.values():
            if slot.handle is not None:
                with contextlib.suppress(Exception):
                    await self.unload(slot.name)
        self.infer_pool.shutdown(wait=True)
        self._load_pool.shutdown(wait=True)
        self.journal.stop_cleanly()
        # A clean stop clears crash suspicion for the variants that ran in this run.
        self.store.put_crashes(
            {
                k: v
                for k, v in self._crashes.items()
                if int(v.get("count", 0)) >= self.settings.quarantine_after
            }
        )

    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000
