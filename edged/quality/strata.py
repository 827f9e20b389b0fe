"""Difficulty strata: a request's difficulty is the serving version's confidence on it, bucketed by
quantiles learned on this device (per model, persisted), so that comparisons and accuracy are
reported for the hard tail apart from the easy bulk.

With the default cut points (0.1, 0.3, 0.6) stratum 0 is the hardest 10% of this device's
requests, 1 the next 20%, 2 the next 30%, 3 the easiest 40%. Until ``MIN_SAMPLES`` confidences
have been seen, everything is one stratum's worth of unknowns (stratum -1: "not learned yet").
"""

from __future__ import annotations

import bisect
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from edged.store import atomic

CUTS = (0.1, 0.3, 0.6)
MIN_SAMPLES = 200
WINDOW = 5000  # recent confidences the quantiles are taken over
REFIT_EVERY = 250


class Strata:
    def __init__(self, cuts: Sequence[float] = CUTS) -> None:
        self.cuts = tuple(cuts)
        self.edges: tuple[float, ...] = ()
        self._recent: list[float] = []
        self._next = 0
        self._since_fit = 0

    @property
    def count(self) -> int:
        return len(self.cuts) + 1

    def stratum(self, confidence: float) -> int:
        """0 is the hardest; -1 until the edges are learned."""
        if not self.edges:
            return -1
        return bisect.bisect_right(self.edges, confidence)

    def observe(self, confidences: Sequence[float]) -> None:
        for c in confidences:
            if len(self._recent) < WINDOW:
                self._recent.append(c)
            else:
                self._recent[self._next] = c
                self._next = (self._next + 1) % WINDOW
        self._since_fit += len(confidences)
        if len(self._recent) >= MIN_SAMPLES and (not self.edges or self._since_fit >= REFIT_EVERY):
            self.edges = tuple(float(q) for q in np.quantile(self._recent, self.cuts))
            self._since_fit = 0

    def to_json(self) -> dict[str, object]:
        return {"cuts": list(self.cuts), "edges": list(self.edges), "recent": self._recent[-1000:]}

    @classmethod
    def from_json(cls, data: dict[str, object]) -> Strata:
        cuts = data.get("cuts", CUTS)
        strata = cls(tuple(float(c) for c in cuts) if isinstance(cuts, list) else CUTS)
        edges = data.get("edges", [])
        if isinstance(edges, list) and len(edges) == len(strata.cuts):
            strata.edges = tuple(float(e) for e in edges)
        recent = data.get("recent", [])
        if isinstance(recent, list):
            strata._recent = [float(c) for c in recent][-WINDOW:]
        return strata


def load_all(path: Path) -> dict[str, Strata]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {str(k): Strata.from_json(v) for k, v in data.items() if isinstance(v, dict)}


def save_all(path: Path, strata: dict[str, Strata]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_text(path, json.dumps({k: s.to_json() for k, s in strata.items()}))
