"""Whether a variant's file may be loaded into the daemon: probe verdicts and quarantine.

A file that has never run here is first loaded and run in a throwaway subprocess (the
``Prober``; runtime/probe.py is the real one). Its verdict is remembered per file (sha256 and
format, not model name: the same blob under two names is probed once) in memory and in the store.
A file that was loading or running when the daemon died (the crash journal) is blamed; after
``quarantine_after`` such deaths it is quarantined.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import logging
from pathlib import Path
from typing import Any, Protocol

from edged.portfolio.journal import CrashJournal
from edged.runtime.probe import ProbeResult, probe, record_result, stored_result
from edged.settings import ValidationSettings
from edged.store.manifest import CASCADE, Variant
from edged.store.store import ModelStore

log = logging.getLogger(__name__)


def variant_key(variant: Variant) -> str:
    """Verdicts and crash counts belong to a file and its runtime, not to a model name."""
    return f"{variant.sha256}.{variant.format}"


class VerdictState(enum.StrEnum):
    USABLE = "USABLE"
    UNUSABLE = "UNUSABLE"  # the probe refused it (crash, hang, error)
    UNVALIDATED = "UNVALIDATED"  # never probed
    QUARANTINED = "QUARANTINED"  # the daemon died while it was loading or running, repeatedly


@dataclasses.dataclass(frozen=True)
class Verdict:
    state: VerdictState
    reason: str = ""
    result: ProbeResult | None = None

    @property
    def usable(self) -> bool:
        return self.state is VerdictState.USABLE


class Prober(Protocol):
    """Loads and runs a variant file somewhere it cannot hurt the daemon."""

    async def probe(self, variant: Variant, path: Path) -> ProbeResult: ...


class SubprocessProber:
    """The real prober: a fresh interpreter per file, killed after ``timeout`` seconds."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout

    async def probe(self, variant: Variant, path: Path) -> ProbeResult:
        log.info("validating %s (%s) in a subprocess", variant.file, variant.sha256[:12])
        return await probe(variant.format, path, variant.options, self.timeout)


class Verdicts:
    def __init__(self, store: ModelStore, prober: Prober, settings: ValidationSettings) -> None:
        self.store = store
        self.prober = prober
        self.settings = settings
        self._crashes: dict[str, dict[str, Any]] = {}
        self._results: dict[str, ProbeResult] = {}
        self._probing: dict[str, asyncio.Future[ProbeResult]] = {}

    def recover_from_crash(self, journal: CrashJournal) -> list[str]:
        """Blame the variants that were loading or running when the last run died."""
        clean, entries = journal.previous_run()
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
        return suspects

    def crash_count(self, variant: Variant) -> int:
        return int(self._crashes.get(variant_key(variant), {}).get("count", 0))

    def verdict(self, variant: Variant) -> Verdict:
        """What is known now, without running anything."""
        if variant.format == CASCADE:
            return self._cascade_verdict(variant)
        crashes = self.crash_count(variant)
        if crashes >= self.settings.quarantine_after:
            return Verdict(
                VerdictState.QUARANTINED,
                f"quarantined: the daemon died {crashes} times while this variant was "
                "loading or running",
            )
        key = variant_key(variant)
        result = self._results.get(key)
        if result is None:
            result = stored_result(self.store, variant)
            if result is not None:
                self._results[key] = result
        if result is None:
            return Verdict(VerdictState.UNVALIDATED)
        if not result.usable:
            return Verdict(VerdictState.UNUSABLE, result.reason, result)
        return Verdict(VerdictState.USABLE, "", result)

    def _cascade_verdict(self, cascade: Variant) -> Verdict:
        """A cascade is as usable as its stages; its memory and load time are theirs summed."""
        stages = [self.verdict(v) for v in cascade.options["stage_variants"]]
        for verdict in stages:
            if verdict.state is not VerdictState.USABLE:
                return Verdict(verdict.state, f"a stage is {verdict.state}: {verdict.reason}")
        results = [v.result for v in stages if v.result is not None]
        last = results[-1]
        return Verdict(
            VerdictState.USABLE,
            "",
            ProbeResult(
                True,
                load_seconds=sum(r.load_seconds for r in results),
                memory_bytes=sum(r.memory_bytes for r in results),
                inputs=results[0].inputs,
                outputs=last.outputs,
                platform="edged_cascade",
            ),
        )

    async def validate(self, variant: Variant) -> ProbeResult:
        """The verdict's probe result, probing the file first if it never ran here (concurrent
        callers share one probe)."""
        if variant.format == CASCADE:
            for stage in variant.options["stage_variants"]:
                await self.validate(stage)
            return self.verdict(variant).result or ProbeResult(False, self.verdict(variant).reason)
        verdict = self.verdict(variant)
        if verdict.result is not None or verdict.state is VerdictState.QUARANTINED:
            return verdict.result or ProbeResult(False, verdict.reason)
        key = variant_key(variant)
        pending = self._probing.get(key)
        if pending is None:
            pending = asyncio.ensure_future(self._probe(variant))
            self._probing[key] = pending
            pending.add_done_callback(lambda _: self._probing.pop(key, None))
        return await asyncio.shield(pending)

    async def _probe(self, variant: Variant) -> ProbeResult:
        result = await self.prober.probe(variant, self.store.variant_path(variant))
        if not result.usable:
            log.warning(
                "variant %s (%s) refused by validation: %s",
                variant.id,
                variant.sha256[:12],
                result.reason,
            )
        record_result(self.store, variant, result)
        self._results[variant_key(variant)] = result
        return result

    def stopped_cleanly(self) -> None:
        """A clean stop clears crash suspicion for the variants that ran in this run; what was
        quarantined stays quarantined."""
        self.store.put_crashes(
            {
                k: v
                for k, v in self._crashes.items()
                if int(v.get("count", 0)) >= self.settings.quarantine_after
            }
        )
