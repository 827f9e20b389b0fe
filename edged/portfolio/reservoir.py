"""A small sample of a model's recent requests, in memory only (never written to disk: inputs
are the users' data), for the lifecycle's latency gate: a candidate is measured on inputs shaped
like this device's traffic.

The request path pays a counter per request; every ``EVERY``-th request's inputs are copied (so
the request's buffer is not kept alive) into a ring of ``SIZE``, as long as the ring holds no
more than ``MAX_BYTES`` in all (a request larger than that is not kept).
"""

from __future__ import annotations

from collections.abc import Mapping

from edged.tensors import Array


class Reservoir:
    EVERY = 16
    SIZE = 64
    MAX_BYTES = 16 << 20

    __slots__ = ("_bytes", "_next", "_seen", "samples")

    def __init__(self) -> None:
        self.samples: list[dict[str, Array]] = []
        self._seen = 0
        self._next = 0
        self._bytes = 0

    def offer(self, inputs: Mapping[str, Array]) -> None:
        self._seen += 1
        if self._seen % self.EVERY != 1:
            return
        size = sum(a.nbytes for a in inputs.values())
        replaced = self.samples[self._next] if len(self.samples) == self.SIZE else None
        freed = sum(a.nbytes for a in replaced.values()) if replaced else 0
        if self._bytes - freed + size > self.MAX_BYTES:
            return
        sample = {name: array.copy() for name, array in inputs.items()}
        self._bytes += size - freed
        if replaced is None:
            self.samples.append(sample)
        else:
            self.samples[self._next] = sample
            self._next = (self._next + 1) % self.SIZE
