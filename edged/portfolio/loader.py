"""Loading variants into the daemon and closing them, off the event loop.

Loads run one at a time on their own thread, so a cold load never occupies an inference worker and
RSS deltas measure one load each; preloads run on a second thread at nice 10, below the request
path. Every load is written to the crash journal first, so a native crash during it is blamed on
the right file at the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from edged.errors import UnavailableError
from edged.events import Events
from edged.portfolio.budget import MemoryMeter
from edged.portfolio.journal import LOADING, RESIDENT, CrashJournal
from edged.portfolio.slot import Handle
from edged.portfolio.verdicts import variant_key
from edged.runtime import open_runtime, warm_runtimes
from edged.runtime.base import LoadStats, Runtime
from edged.runtime.cascade import CascadeRuntime
from edged.store.check import CorruptBlobError, verify_blob
from edged.store.lineage import output_kinds
from edged.store.manifest import CASCADE, Manifest, Variant, files_of

log = logging.getLogger(__name__)

BACKGROUND_NICE = 10


def _background_priority() -> None:
    """Run preloads below the request path's priority (nice 10 on this thread only)."""
    with contextlib.suppress(OSError, AttributeError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), BACKGROUND_NICE)


def _threads() -> set[str]:
    try:
        return set(os.listdir("/proc/self/task"))
    except OSError:
        return set()


_warned = {"nice": False}  # one warning per run, not one per preload


def _restore_priority(tids: set[str]) -> None:
    """Threads a runtime starts during a preload inherit its nice value; give them the
    process's (needs CAP_SYS_NICE or a LimitNICE= that allows it; else they stay niced)."""
    # The main thread's (its id is the pid); 0 would mean the calling, niced preload thread.
    base = os.getpriority(os.PRIO_PROCESS, os.getpid())
    for tid in tids:
        try:
            os.setpriority(os.PRIO_PROCESS, int(tid), base)
        except PermissionError:
            if not _warned["nice"]:
                _warned["nice"] = True
                log.warning(
                    "threads started by a preload stay at nice %d: raising them back needs "
                    "CAP_SYS_NICE or LimitNICE=+0 in the unit (systemd/edged.service sets it)",
                    BACKGROUND_NICE,
                )
        except (OSError, ValueError):
            continue  # a thread that ended meanwhile


class Loader:
    def __init__(
        self,
        journal: CrashJournal,
        meter: MemoryMeter,
        events: Events,
        path_of: Callable[[Variant], Path],
        state_dir: Path | None = None,
    ) -> None:
        self.state_dir = state_dir  # where a cascade keeps its calibrated threshold
        self.journal = journal
        self.meter = meter
        self.events = events
        self.path_of = path_of
        self._load_pool = ThreadPoolExecutor(1, "edged-load")
        self._preload_pool = ThreadPoolExecutor(
            1, "edged-preload", initializer=_background_priority
        )
        # Two loads at once share one RSS delta: a load overlapped another when one was running as
        # it started, or one started before it finished.
        self._running = 0
        self.started = 0  # loads started since the daemon started
        # Blobs whose digest was checked in this run (edged/store/check.py): each once.
        self._verified: set[str] = set()

    async def load(
        self, manifest: Manifest, variant: Variant, floor: int, *, background: bool = False
    ) -> Handle:
        """Open and warm ``variant``; its memory is charged at least ``floor`` bytes (the probe's
        clean measurement: pages freed by an earlier unload hide part of a reload's cost, and two
        loads at once share one RSS delta)."""
        key = variant_key(variant)
        path = self.path_of(variant)
        meter = self.meter

        files = files_of(variant)
        formats = {part.format for part in files}

        def work() -> tuple[Runtime, LoadStats]:
            # Bit rot is found before a runtime reads the file: a damaged blob is never served.
            for part in files:
                if part.sha256 not in self._verified:
                    verify_blob(self.path_of(part), part.sha256)
                    self._verified.add(part.sha256)
            before = _threads() if background else set()
            # A format new since start: its runtime's one-time set-up is not this variant's memory.
            warm_runtimes(formats)
            with meter.measure(variant, path) as stats:
                runtime = self._open(manifest, variant, path)
                runtime.warm_up(manifest.warmup)
            if background:
                _restore_priority(_threads() - before)
            return runtime, stats

        self.journal.set(key, LOADING)
        loop = asyncio.get_running_loop()
        overlapped = self._running > 0
        self._running += 1
        self.started += 1
        started = self.started
        try:
            pool = self._preload_pool if background else self._load_pool
            runtime, stats = await loop.run_in_executor(pool, work)
        except CorruptBlobError:
            self.journal.clear(key)
            raise
        except Exception as exc:
            self.journal.clear(key)
            raise UnavailableError(
                f"model {manifest.name} variant {variant.id} failed to load: {exc}"
            ) from exc
        finally:
            self._running -= 1
            overlapped = overlapped or self.started != started
        if overlapped or stats.memory_bytes < floor:
            stats.rss_delta_bytes = floor
            stats.mapped_bytes = 0
        self.journal.set(key, RESIDENT)
        self.events.loaded(manifest.name, variant.id, stats.seconds)
        log.info(
            "loaded %s version %s variant %s in %.3fs (%d bytes)",
            manifest.name,
            manifest.version,
            variant.id,
            stats.seconds,
            stats.memory_bytes,
        )
        return Handle(manifest, variant, runtime, stats, self.journal, key)

    def _open(self, manifest: Manifest, variant: Variant, path: Path) -> Runtime:
        if variant.format != CASCADE:
            return open_runtime(variant.format, path, variant.options)
        # A cascade: its stages' files, opened here together (one load, one measurement).
        stages = files_of(variant)
        runtimes: list[Runtime] = []
        try:
            for stage in stages:
                runtimes.append(open_runtime(stage.format, self.path_of(stage), stage.options))
        except BaseException:
            for opened in runtimes:
                opened.close()
            raise
        kinds = output_kinds(manifest.outputs, runtimes[-1].outputs)
        scores = next((n for n, k in kinds.items() if k.kind == "class_scores"), None)
        if scores is None:
            for opened in runtimes:
                opened.close()
            raise ValueError("a cascade needs a class-score output to measure its confidence")
        return CascadeRuntime(
            runtimes,
            [s.id for s in stages],
            scores,
            float(variant.options["agreement"]),
            variant.options.get("threshold"),
            self.state_dir / f"cascade-{manifest.name}.json" if self.state_dir else None,
            [float(s.options.get("multiply_adds", 0)) or 1.0 for s in stages],
        )

    async def close(self, handle: Handle) -> None:
        """Free a drained handle's runtime and give its pages back."""
        self.journal.clear(handle.journal_key)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._load_pool, self._close, handle.runtime, handle.variant)

    def _close(self, runtime: Runtime, variant: Variant) -> None:
        runtime.close()
        self.meter.released(variant)

    def shutdown(self) -> None:
        self._load_pool.shutdown(wait=True)
        self._preload_pool.shutdown(wait=True)
