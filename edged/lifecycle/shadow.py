"""Shadow comparison: a sampled share of live requests is mirrored to the candidate, off the
request path, and its answers compared with the serving version's (never returned to anyone),
per difficulty stratum (lifecycle/stratified.py): the hardest stratum is mirrored
``hard_factor`` times more often, and the candidate passes only when every stratum passes.

The request path only draws a random number and, for a request that may be sampled, works out
its stratum from the answer it got and hands its inputs to the lifecycle's background thread (at
most ``MAX_INFLIGHT`` at once: when the candidate falls behind, requests are skipped, never
queued). A sequential test per stratum decides.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor

from edged.lifecycle.stratified import ALL, HARDEST, PerStratum
from edged.portfolio.slot import Handle
from edged.quality.compare import confidence, requests_agree
from edged.store.lineage import OutputKind
from edged.tensors import Array

MAX_INFLIGHT = 2


class Shadow:
    """The candidate's shadow: an Observer of the serving version's requests."""

    def __init__(
        self,
        candidate: Handle,
        kinds: Mapping[str, OutputKind],
        tests: PerStratum,
        share: float,
        pool: Executor,
        *,
        stratum_of: Callable[[Sequence[float]], int] = lambda _: ALL,
        hard_factor: float = 1.0,
        rng: random.Random | None = None,
    ) -> None:
        self.candidate = candidate
        self.kinds = dict(kinds)
        self.tests = tests
        self.share = share
        self.hard_factor = hard_factor if tests.stratified else 1.0
        self.stratum_of = stratum_of
        self.pool = pool
        self._random = (rng or random.Random()).random
        self.inflight = 0
        self.skipped = 0
        self.errors = 0
        self.first_error = ""
        self.incumbent_confidence: list[float] = []
        self.candidate_confidence: list[float] = []
        # The serving version's live latency meanwhile: what probation compares the new one to.
        self.live_ms: list[float] = []
        self._loop = asyncio.get_running_loop()
        self.changed = asyncio.Event()

    # -- Observer (the request path) -------------------------------------------------------------

    def served(
        self, handle: Handle, inputs: Mapping[str, Array], outputs: dict[str, Array], ns: int
    ) -> None:
        self.live_ms.append(ns / 1e6)
        draw = self._random()
        if draw >= self.share * self.hard_factor:
            return
        stratum = ALL
        if self.tests.stratified:  # only a request that may be mirrored pays for its stratum
            stratum = self.stratum_of(confidence(self.kinds, outputs))
            if stratum != HARDEST and draw >= self.share:
                return
        if self.inflight >= MAX_INFLIGHT or self.candidate.runtime.generative:
            self.skipped += 1
            return
        self.inflight += 1
        self.candidate.acquire()
        future = self._loop.run_in_executor(self.pool, self.candidate.runtime.infer, inputs)
        uniform = draw < self.share  # the oversampled tail must not skew the baseline
        future.add_done_callback(lambda f: self._compared(f, outputs, stratum, uniform))

    def failed(self, handle: Handle, error: BaseException) -> None:
        pass

    # -- the background --------------------------------------------------------------------------

    def _compared(
        self,
        future: asyncio.Future[dict[str, Array]],
        live: dict[str, Array],
        stratum: int,
        uniform: bool,
    ) -> None:
        self.inflight -= 1
        self.candidate.release()
        if future.cancelled():
            return
        error = future.exception()
        if error is not None:
            self.errors += 1
            self.first_error = self.first_error or str(error)
            self.tests.observe(stratum, False)
        else:
            answer = future.result()
            self.tests.observe(stratum, requests_agree(self.kinds, live, answer))
            if uniform:  # what probation's drift check takes as the serving version's picture
                self.incumbent_confidence.extend(confidence(self.kinds, live))
                self.candidate_confidence.extend(confidence(self.kinds, answer))
        self.changed.set()

    async def drained(self) -> None:
        """Wait until no mirrored request is in flight."""
        while self.inflight:
            self.changed.clear()
            await self.changed.wait()
