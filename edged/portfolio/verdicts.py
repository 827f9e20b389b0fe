"""Whether a variant's file may be loaded into the daemon: probe verdicts and quarantine.

A file that has never run here is first loaded and run in a throwaway subprocess (the
``Prober``; runtime/probe.py is the real one). Its verdict is remembered per file (sha256 and
format, not model name: the same blob under two names is probed once) in memory and in the store.
What the crash journal found loading or running when the daemon died is blamed according to how
it died (edged/portfolio/fatal.py). Of a fatal signal in the process: every variant that was
loading or had requests in flight, quarantined after ``quarantine_after`` such deaths. Killed from
outside (power cut, SIGKILL, the OOM killer): only the variants that were loading, and only runs in
a row that never finished that load count (the OOM kill loop of a variant too big for the device);
requests in flight at a power cut blame nobody.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import logging
from pathlib import Path
from typing import Any, Protocol

from edged.portfolio.journal import LOADING, CrashJournal
from edged.runtime.probe import ProbeResult, probe, record_result, stored_result
from edged.settings import ValidationSettings
from edged.store.manifest import CASCADE, Variant
from edged.store.store import ModelStore

log = logging.getLogger(__name__)

# Keys of a variant's record in state/crashes.json. "count" is what stores of earlier edged wrote.
CRASHES = "count"  # runs that died of a fatal signal while it loaded or ran
KILLED_LOADING = "killed_loading"  # runs in a row killed from outside while it loaded


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

    def recover_from_crash(self, journal: CrashJournal, fatal_signal: bool) -> list[str]:
        """Blame what was loading or running when the last run died; ``fatal_signal``: it died of
        one inside the process (else it was killed from outside, or stopped cleanly). Returns the
        variants blamed for the death (what the lifecycle takes back)."""
        clean, entries = journal.previous_run()
        self._crashes = self.store.crashes()
        if clean:
            return []
        blamed = [e.key for e in entries if e.suspect] if fatal_signal else []
        for key in blamed:
            record = self._crashes.setdefault(key, {})
            record[CRASHES] = int(record.get(CRASHES, 0)) + 1
            log.warning(
                "the last run died of a fatal signal while %s was loading or running (crash %d)",
                key,
                record[CRASHES],
            )
        killed = [] if fatal_signal else [e.key for e in entries if e.state == LOADING]
        for key in killed:
            record = self._crashes.setdefault(key, {})
            record[KILLED_LOADING] = int(record.get(KILLED_LOADING, 0)) + 1
            log.warning(
                "the last run was killed while %s was loading (%d runs in a row)",
                key,
                record[KILLED_LOADING],
            )
        if blamed or killed:
            self.store.put_crashes(self._crashes)
        return blamed

    def crash_count(self, variant: Variant) -> int:
        return int(self._crashes.get(variant_key(variant), {}).get(CRASHES, 0))

    def killed_loading(self, variant: Variant) -> int:
        return int(self._crashes.get(variant_key(variant), {}).get(KILLED_LOADING, 0))

    def loaded(self, variant: Variant) -> None:
        """A load finished: the runs killed while it loaded are no longer a loop."""
        record = self._crashes.get(variant_key(variant))
        if record is not None and record.pop(KILLED_LOADING, None) is not None:
            if not record:
                del self._crashes[variant_key(variant)]
            self.store.put_crashes(self._crashes)

    def verdict(self, variant: Variant) -> Verdict:
        """What is known now, without running anything."""
        if variant.format == CASCADE:
            return self._cascade_verdict(variant)
        limit = self.settings.quarantine_after
        crashes = self.crash_count(variant)
        if crashes >= limit:
            return Verdict(
                VerdictState.QUARANTINED,
                f"quarantined: the daemon died of a fatal signal {crashes} times while this "
                "variant was loading or running",
            )
        killed = self.killed_loading(variant)
        if killed >= limit:
            return Verdict(
                VerdictState.QUARANTINED,
                f"quarantined: the daemon was killed {killed} runs in a row while this variant "
                "was loading (out of memory?)",
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

    def corrupt(self, variant: Variant, reason: str) -> None:
        """The variant's blob no longer matches its digest: unusable from now on (recorded in
        the store, like a refused validation), so residency places another variant."""
        log.error("variant %s (%s): %s", variant.id, variant.sha256[:12], reason)
        result = ProbeResult(False, f"corrupted on disk: {reason}")
        record_result(self.store, variant, result)
        self._results[variant_key(variant)] = result

    def stopped_cleanly(self) -> None:
        """A clean stop clears crash suspicion for the variants that ran in this run; what was
        quarantined stays quarantined."""
        limit = self.settings.quarantine_after
        self.store.put_crashes(
            {
                k: v
                for k, v in self._crashes.items()
                if int(v.get(CRASHES, 0)) >= limit or int(v.get(KILLED_LOADING, 0)) >= limit
            }
        )
