"""A small sample of a model's recent requests, in memory only (never written to disk: inputs
are the users' data), for the lifecycle's latency gate: a candidate is measured on inputs shaped
like this device's traffic.

The request path pays a counter per request; every ``EVERY``-th request's inputs are copied (so
the request's buffer is not kept alive) into a ring of ``SIZE``, unless they are larger than
``MAX_BYTES`` together.
"""

from __future__ import annotations

from collections.abc import Mapping

from edged.tensors import Array


class Reservoir:
    EVERY = 16
    SIZE = 16
    MAX_BYTES = 4 << 20

    __slots__ = ("_next", "_seen", "samples")

    def __init__(self) -> None:
        self.samples: list[dict[str, Array]] = []
        self._seen = 0
        self._next = 0

    def offer(self, inputs: Mapping[str, Array]) -> None:
        self._seen += 1
        if self._seen % self.EVERY != 1:
            return
        if sum(a.nbytes for a in inputs.values()) > self.MAX_BYTES:
            return
        sample = {name: array.copy() for name, array in inputs.items()}
        if len(self.samples) < self.SIZE:
            self.samples.append(sample)
        else:
            self.samples[self._next] = sample
            self._next = (self._next + 1) % self.SIZE
