"""A model's stable identity in the portfolio: its resident handle and the leases on it."""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import time
from collections.abc import Callable, Mapping
from typing import Protocol, TypeVar

from edged.portfolio.journal import CrashJournal
from edged.portfolio.reservoir import Reservoir
from edged.portfolio.scoring import DecayedRate
from edged.runtime.base import Array, LoadStats, Runtime
from edged.store.lineage import OutputKind
from edged.store.manifest import Manifest, Variant

T = TypeVar("T")
R = TypeVar("R")


class SlotState(enum.Enum):
    UNLOADED = "UNLOADED"
    LOADING = "LOADING"
    READY = "READY"
    FAILED = "FAILED"

    @property
    def index_state(self) -> str:
        """The state as Triton's RepositoryIndex names it."""
        return {"READY": "READY", "LOADING": "LOADING"}.get(self.value, "UNAVAILABLE")


@dataclasses.dataclass
class Stats:
    success_count: int = 0
    success_ns: int = 0
    fail_count: int = 0
    fail_ns: int = 0
    last_inference_ms: int = 0

    def record(self, ok: bool, elapsed_ns: int) -> None:
        if ok:
            self.success_count += 1
            self.success_ns += elapsed_ns
        else:
            self.fail_count += 1
            self.fail_ns += elapsed_ns
        self.last_inference_ms = time.time_ns() // 1_000_000


class ComputeTiming:
    """How long a variant's inference takes, to decide whether a thread hop is worth it.

    Handing a call to a worker thread and back costs ~100 us of wakeups on a small CPU. A model
    whose runs take less than about that is cheaper to run on the event loop than to hand off (the
    bound sits above what a tiny MLP measures inside a busy daemon, so it does not flip between
    the two); a model that takes longer must never run there. The decision uses an exponential
    average of measured run times, needs several fast runs in a row first, and is bounded by
    input size so one huge batch to a tiny model still goes to a worker.
    """

    INLINE_MAX_NS = 150_000
    INLINE_MAX_INPUT_BYTES = 64 * 1024
    WARM_RUNS = 8

    SAMPLE_EVERY = 4  # once warm, one run in this many is timed (two clock reads saved)

    __slots__ = ("calls", "ewma_ns", "runs")

    def __init__(self) -> None:
        self.ewma_ns = float("inf")
        self.runs = 0
        self.calls = 0

    def run_inline(self, input_bytes: int) -> bool:
        return (
            self.runs >= self.WARM_RUNS
            and self.ewma_ns < self.INLINE_MAX_NS
            and input_bytes <= self.INLINE_MAX_INPUT_BYTES
        )

    def timed(self, fn: Callable[[T], R], arg: T) -> R:
        self.calls += 1
        if self.runs >= self.WARM_RUNS and self.calls % self.SAMPLE_EVERY:
            return fn(arg)
        start = time.perf_counter_ns()
        try:
            return fn(arg)
        finally:
            elapsed = time.perf_counter_ns() - start
            self.runs += 1
            self.ewma_ns = elapsed if self.runs == 1 else 0.8 * self.ewma_ns + 0.2 * elapsed


class Handle:
    """One loaded variant. Leases count the requests using it; unload waits for zero."""

    def __init__(
        self,
        manifest: Manifest,
        variant: Variant,
        runtime: Runtime,
        stats: LoadStats,
        journal: CrashJournal,
        journal_key: str,
    ) -> None:
        self.manifest = manifest
        self.variant = variant
        self.runtime = runtime
        self.load_stats = stats
        self.inflight = 0
        self._journal = journal
        self.journal_key = journal_key
        self._idle = asyncio.Event()
        self._idle.set()
        self.timing = ComputeTiming()
        self.preloaded = False  # loaded ahead of demand
        self.used = False  # has served a request
        # The request layout (edged/grpc/wire.py) whose tensors were last checked against this
        # runtime's signature: the same layout has the same names, datatypes and shapes.
        self.checked_layout: object | None = None
        # Requests it may run at once (runtime.concurrency), the rest wait on the event loop
        # (the serving layer makes it on first use), and how many wait now.
        self.gate: asyncio.Semaphore | None = None
        self.waiting = 0
        # How its outputs are compared and scored (the quality package fills it once).
        self.kinds: Mapping[str, OutputKind] | None = None

    @property
    def version(self) -> str:
        return self.manifest.version

    def acquire(self) -> None:
        self.inflight += 1
        self._idle.clear()
        self._journal.set_inflight(self.journal_key, self.inflight)

    def release(self) -> None:
        self.inflight -= 1
        self._journal.set_inflight(self.journal_key, self.inflight)
        if self.inflight == 0:
            self._idle.set()

    async def drained(self, timeout: float | None = None) -> bool:
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True


class Lease:
    """Holds a handle for the duration of one request (``async with``-free for speed)."""

    __slots__ = ("_done", "arrived", "cold", "handle")

    def __init__(
        self,
        handle: Handle,
        *,
        cold: bool = False,
        arrived: float = 0.0,
        done: Callable[[Lease], None] | None = None,
    ) -> None:
        self.handle = handle
        self.cold = cold  # the request waited for a load
        self.arrived = arrived  # time.perf_counter() when the request reached the portfolio
        self._done = done
        handle.acquire()

    def release(self) -> None:
        self.handle.release()
        if self._done is not None:
            self._done(self)


class Observer(Protocol):
    """Sees a model's live requests (the lifecycle's shadow comparison and probation watch).
    Called on the request path: it must only note, or hand work to the background."""

    def served(
        self, handle: Handle, inputs: Mapping[str, Array], outputs: dict[str, Array], ns: int
    ) -> None: ...

    def failed(self, handle: Handle, error: BaseException) -> None: ...


class Router(Protocol):
    """May answer a request in the serving version's stead (the lifecycle's canary): its
    answer, and the request's difficulty stratum by the serving version's confidence."""

    async def route(
        self, inputs: Mapping[str, Array], served: Mapping[str, Array]
    ) -> tuple[dict[str, Array], int] | None: ...


class Slot:
    """A model's place in the portfolio: the serving version, the resident handle, request
    counts. Its state changes only through the methods below (the portfolio calls them with the
    memory lock held)."""

    def __init__(self, name: str, manifest: Manifest, half_life: float = 600.0) -> None:
        self.name = name
        self.manifest = manifest  # the serving version's manifest
        self.handle: Handle | None = None
        self.state = SlotState.UNLOADED
        self.reason = ""
        self.stats = Stats()
        self.pinned = False
        self.last_use: float | None = None  # portfolio clock
        self.rate = DecayedRate(half_life)
        # Set while a preload of the serving version is in flight; requests wait on it.
        self.preloading: asyncio.Future[Handle | None] | None = None
        # Portfolio clock before which the policy does not try to upgrade this model again.
        self.upgrade_after = 0.0
        # The lifecycle's: a new version loaded beside the serving one (not serving), the
        # version it replaced kept warm during probation, a hold on requests while a
        # resource-preserving swap runs (and how many wait on it), and who watches requests.
        self.candidate: Handle | None = None
        self.previous: Handle | None = None
        self.swapping: asyncio.Future[None] | None = None
        self.held = 0
        self.observer: Observer | None = None
        self.router: Router | None = None
        self.reservoir = Reservoir()

    @property
    def ready(self) -> bool:
        return self.handle is not None and self.state is SlotState.READY

    @property
    def version(self) -> str:
        return self.manifest.version

    def current(self, variant_id: str | None = None) -> Handle | None:
        """The resident handle if it serves the serving version (and ``variant_id``)."""
        handle = self.handle
        if handle is None or handle.version != self.manifest.version:
            return None
        if variant_id is not None and handle.variant.id != variant_id:
            return None
        return handle

    def pin(self, pinned: bool) -> None:
        """A pin holds the resident variant: never evicted, downgraded or swapped."""
        self.pinned = pinned

    def back_off(self, until: float) -> None:
        """No automatic upgrade before ``until`` (portfolio clock)."""
        self.upgrade_after = until

    def preload_started(self, done: asyncio.Future[Handle | None]) -> None:
        self.preloading = done
        self.state = SlotState.LOADING

    def preload_ended(self) -> None:
        self.preloading = None

    def serve(self, manifest: Manifest) -> None:
        """A new serving version: the next request loads it (the old handle stays until then)."""
        self.manifest = manifest

    def loading(self) -> None:
        self.state = SlotState.LOADING

    def install(self, handle: Handle, reason: str) -> Handle | None:
        """``handle`` serves from now on; returns the one it replaces (to drain and close)."""
        old, self.handle = self.handle, handle
        self.state, self.reason = SlotState.READY, reason
        return old

    def drop(self, reason: str) -> Handle | None:
        """Nothing serves until the next load; returns what was resident (to drain and close)."""
        old, self.handle = self.handle, None
        self.state = SlotState.UNLOADED
        if old is not None:
            self.reason = reason
        return old

    def load_failed(self, reason: str) -> None:
        self.state = SlotState.READY if self.handle is not None else SlotState.FAILED
        self.reason = reason

    def waiting(self, reason: str) -> None:
        """No room now; a request waits or gives up with this reason."""
        self.reason = reason

    def settled(self) -> None:
        """A load that was not installed (a preload that lost a race) ended."""
        self.state = SlotState.READY if self.handle is not None else SlotState.UNLOADED
