"""How much memory resident variants may hold, and how much they do hold.

The working budget is the lowest of the configured budget, the cgroup limit (less a reserve and
the daemon's own baseline) and what live pressure leaves (docs/residency.md). What variants hold
is measured per load (a ``MemoryMeter``) and corrected by what the process really holds, within
reason. The meter and the readers of /proc and the cgroup are ports: tests pass fakes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import re
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Protocol

import psutil

from edged.runtime.base import LoadStats
from edged.runtime.memory import measure, release_freed_memory, rss_bytes
from edged.settings import MemorySettings
from edged.store.manifest import Variant


class LimitedBy(enum.StrEnum):
    """What set the working budget."""

    CONFIG = "config"
    CGROUP = "cgroup"
    AVAILABLE = "available"
    PRESSURE = "pressure"


@dataclasses.dataclass(frozen=True)
class BudgetReading:
    bytes: int
    limited_by: LimitedBy
    available: int
    psi_some_avg10: float | None


_PSI = re.compile(r"some avg10=([0-9.]+)")


class SystemMemory:
    """Readers of the machine's memory state; paths injectable for tests."""

    def __init__(
        self,
        proc: Path = Path("/proc"),
        cgroup_root: Path = Path("/sys/fs/cgroup"),
        available: Callable[[], int] | None = None,
    ) -> None:
        self.proc = proc
        self.cgroup_root = cgroup_root
        self._available = available or (lambda: int(psutil.virtual_memory().available))

    def available(self) -> int:
        return self._available()

    def psi_some_avg10(self) -> float | None:
        try:
            match = _PSI.search((self.proc / "pressure" / "memory").read_text())
        except OSError:
            return None
        return float(match.group(1)) if match else None

    def cgroup_limit(self) -> int | None:
        """The lower of memory.max and memory.high of this process's cgroup (v2), if set."""
        try:
            lines = (self.proc / "self" / "cgroup").read_text().splitlines()
        except OSError:
            return None
        path = next((ln.split("::", 1)[1] for ln in lines if ln.startswith("0::")), None)
        if path is None:
            return None
        directory = self.cgroup_root / path.lstrip("/")
        limits = []
        for name in ("memory.max", "memory.high"):
            try:
                text = (directory / name).read_text().strip()
            except OSError:
                continue
            if text.isdigit():
                limits.append(int(text))
        return min(limits) if limits else None


def working_budget(
    settings: MemorySettings, system: SystemMemory, accounted: int, process_baseline: int
) -> BudgetReading:
    """The lowest of: the configured budget; the cgroup limit minus the reserve and the daemon's
    own baseline; and, under live pressure, what is held now minus what must be given back."""
    candidates = [(settings.budget.resolve(), LimitedBy.CONFIG)]
    limit = system.cgroup_limit()
    if limit is not None:
        candidates.append((limit - settings.reserve - process_baseline, LimitedBy.CGROUP))
    available = system.available()
    if available < settings.available_floor:
        deficit = settings.available_floor - available
        candidates.append((accounted - deficit, LimitedBy.AVAILABLE))
    psi = system.psi_some_avg10()
    # Pressure asks for some of what edged holds back; holding nothing, it has nothing to give.
    if psi is not None and psi > settings.psi_threshold and accounted > 0:
        candidates.append((int(accounted * 0.9), LimitedBy.PRESSURE))
    value, reason = min(candidates, key=lambda c: c[0])
    return BudgetReading(max(value, 0), reason, available, psi)


class MemoryMeter(Protocol):
    """What a load costs in memory, and what the process holds."""

    def rss(self) -> int: ...

    def measure(self, variant: Variant, path: Path) -> AbstractContextManager[LoadStats]:
        """Fill a LoadStats with the time and memory a load inside the block takes."""
        ...

    def released(self, variant: Variant) -> None:
        """A runtime of ``variant`` was closed: hand its freed pages back to the OS."""
        ...


class ProcessMemory:
    """The real meter: this process's RSS and the file pages a variant maps."""

    def rss(self) -> int:
        return rss_bytes()

    @contextlib.contextmanager
    def measure(self, variant: Variant, path: Path) -> Iterator[LoadStats]:
        with measure(path) as stats:
            yield stats

    def released(self, variant: Variant) -> None:
        release_freed_memory()


class Accounting:
    """Bytes charged to resident variants: each load's measurement times the correction, which
    is the process's measured RSS above its baseline over the sum of per-load measurements
    (>= 1, at most 2: the rest of the heap, requests in flight and caches, lives there too)."""

    MAX_CORRECTION = 2.0

    def __init__(self, settings: MemorySettings, system: SystemMemory, meter: MemoryMeter) -> None:
        self.settings = settings
        self.system = system
        self.meter = meter
        self.baseline = meter.rss()
        self.correction = 1.0
        self.reading = BudgetReading(settings.budget.resolve(), LimitedBy.CONFIG, 0, None)
        # Bytes promised to loads in flight outside the memory lock (preloads), by model.
        self.reserved: dict[str, int] = {}

    def charge(self, stats: LoadStats) -> int:
        return int(stats.memory_bytes * self.correction)

    def reread(self, measured: int, accounted: Callable[[], int]) -> BudgetReading:
        """Correct by what the process holds (``measured``: the sum of per-load figures) and
        read the working budget again."""
        observed = self.meter.rss() - self.baseline
        self.correction = (
            min(max(observed / measured, 1.0), self.MAX_CORRECTION) if measured > 0 else 1.0
        )
        self.reading = working_budget(self.settings, self.system, accounted(), self.baseline)
        return self.reading
