"""Which model follows which: pipelines such as detector -> classifier -> recognizer."""

from __future__ import annotations

import collections


class Transitions:
    """P(B is requested within ``window`` seconds after A), learned online.

    Each A request counts once for every B that follows it within the window. Counts are halved
    when A's count reaches ``halve_at``, so a pipeline that changes is re-learned, and memory stays
    bounded by the pairs seen.
    """

    def __init__(self, window: float = 2.0, halve_at: int = 1000) -> None:
        self.window = window
        self.halve_at = halve_at
        self.count: collections.Counter[str] = collections.Counter()
        self.follow: dict[str, collections.Counter[str]] = collections.defaultdict(
            collections.Counter
        )
        # Requests within the last window, oldest first, with the followers already credited.
        self._recent: collections.deque[tuple[float, str, set[str]]] = collections.deque()

    def observe(self, t: float, model: str) -> None:
        while self._recent and self._recent[0][0] < t - self.window:
            self._recent.popleft()
        for _, earlier, credited in self._recent:
            if earlier != model and model not in credited:
                credited.add(model)
                self.follow[earlier][model] += 1
        self._recent.append((t, model, set()))
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
        out = [(b, self.probability(a, b)) for b in self.follow.get(a, {})]
        return sorted(
            ((b, p) for b, p in out if p >= min_probability), key=lambda bp: (-bp[1], bp[0])
        )
