"""Which model follows which: pipelines such as detector -> classifier -> recognizer."""

from __future__ import annotations

import bisect
import collections


class _Window:
    """One model's requests within the window: times and sequence numbers, oldest first."""

    __slots__ = ("head", "seqs", "times")

    def __init__(self) -> None:
        self.times: list[float] = []
        self.seqs: list[int] = []
        self.head = 0  # entries before it have left the window

    def add(self, t: float, seq: int) -> None:
        self.times.append(t)
        self.seqs.append(seq)

    def prune(self, cutoff: float) -> bool:
        """Drop requests older than ``cutoff``; False when none is left."""
        times = self.times
        while self.head < len(times) and times[self.head] < cutoff:
            self.head += 1
        if self.head > 64 and self.head * 2 > len(times):  # amortized O(1) per request
            del times[: self.head], self.seqs[: self.head]
            self.head = 0
        return self.head < len(times)

    def after(self, seq: int) -> int:
        """How many requests in the window came after request number ``seq``."""
        return len(self.seqs) - max(self.head, bisect.bisect_right(self.seqs, seq))


class Transitions:
    """P(B is requested within ``window`` seconds after A), learned online.

    Each A request counts once for every B that follows it within the window. Counts are halved
    when A's count reaches ``halve_at``, so a pipeline that changes is re-learned, and memory stays
    bounded by the pairs seen.

    This runs on every request, so its cost must not grow with the request rate: requests are
    kept per model, and per pair (A, B) the number of the last A request already credited with a
    following B. A new B request then credits, for each model A seen within the window, the A
    requests since that mark at once: O(models in the window x log requests) per request.
    """

    def __init__(self, window: float = 2.0, halve_at: int = 1000) -> None:
        self.window = window
        self.halve_at = halve_at
        self.count: collections.Counter[str] = collections.Counter()
        self.follow: dict[str, collections.Counter[str]] = collections.defaultdict(
            collections.Counter
        )
        self._recent: dict[str, _Window] = {}
        self._credited: dict[tuple[str, str], int] = {}
        self._seq = 0

    def observe(self, t: float, model: str) -> None:
        cutoff = t - self.window
        for earlier, requests in list(self._recent.items()):
            if not requests.prune(cutoff):
                del self._recent[earlier]
                continue
            if earlier == model:
                continue
            pair = (earlier, model)
            followed = requests.after(self._credited.get(pair, -1))
            if followed:
                self.follow[earlier][model] += followed
            self._credited[pair] = self._seq - 1  # every request so far is credited with model
        self._recent.setdefault(model, _Window()).add(t, self._seq)
        self._seq += 1
        self.count[model] += 1
        if self.count[model] >= self.halve_at:
            self.count[model] //= 2
            followers = self.follow[model]
            for other in list(followers):
                followers[other] //= 2
                if not followers[other]:
                    del followers[other]

    def probability(self, a: str, b: str) -> float:
        n = self.count[a]
        # One pseudo-observation of "nothing followed": a single coincidence is not a pipeline.
        return self.follow[a][b] / (n + 1) if n else 0.0

    def followers(self, a: str, min_probability: float) -> list[tuple[str, float]]:
        """Models likely to follow ``a``, most likely first."""
        follow = self.follow.get(a)
        if not follow:
            return []  # the common case, on every request: no pipeline starts at ``a``
        out = [(b, self.probability(a, b)) for b in follow]
        return sorted(
            ((b, p) for b, p in out if p >= min_probability), key=lambda bp: (-bp[1], bp[0])
        )
