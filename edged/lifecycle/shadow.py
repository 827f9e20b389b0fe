"""Shadow comparison: a sampled share of live requests is mirrored to the candidate, off the
request path, and its answers compared with the serving version's (never returned to anyone).

The request path only draws a random number and, for a sampled request, hands its inputs and
the answer it got to the lifecycle's background thread (at most ``MAX_INFLIGHT`` at once: when
the candidate falls behind, requests are skipped, never queued). A sequential test decides.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Mapping
from concurrent.futures import Executor

from edged.lifecycle.statistics import AgreementTest
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
        test: AgreementTest,
        share: float,
        pool: Executor,
        rng: random.Random | None = None,
    ) -> None:
        self.candidate = candidate
        self.kinds = dict(kinds)
        self.test = test
        self.share = share
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
        if self._random() >= self.share:
            return
        if self.inflight >= MAX_INFLIGHT or self.candidate.runtime.generative:
            self.skipped += 1
            return
        self.inflight += 1
        self.candidate.acquire()
        future = self._loop.run_in_executor(self.pool, self.candidate.runtime.infer, inputs)
        future.add_done_callback(lambda f: self._compared(f, outputs))

    def failed(self, handle: Handle, error: BaseException) -> None:
        pass

    # -- the background --------------------------------------------------------------------------

    def _compared(self, future: asyncio.Future[dict[str, Array]], live: dict[str, Array]) -> None:
        self.inflight -= 1
        self.candidate.release()
        if future.cancelled():
            return
        error = future.exception()
        if error is not None:
            self.errors += 1
            self.first_error = self.first_error or str(error)
            self.test.observe(False)
        else:
            answer = future.result()
            self.test.observe(requests_agree(self.kinds, live, answer))
            self.incumbent_confidence.extend(confidence(self.kinds, live))
            self.candidate_confidence.extend(confidence(self.kinds, answer))
        self.changed.set()

    async def drained(self) -> None:
        """Wait until no mirrored request is in flight."""
        while self.inflight:
            self.changed.clear()
            await self.changed.wait()
