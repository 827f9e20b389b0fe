"""Agreement tested per difficulty stratum: one sequential test per stratum, and a candidate
passes only when every stratum passes (any failing stratum fails it). Used by the shadow and the
canary, so that a version that is as good on the easy bulk but worse on the hard tail is caught
by the tail's own test instead of being averaged away (docs/quality.md).

A request's stratum is the serving version's confidence on it, bucketed by the quantiles the
quality monitor learned on this device (0 is the hardest). Until they are learned, or when
stratification is off, there is one test over everything (``ALL``).
"""

from __future__ import annotations

import math

from edged.lifecycle.statistics import AgreementTest, Outcome

HARDEST = 0
ALL = -1


class PerStratum:
    def __init__(
        self, strata: int, *, stratified: bool, good: float, bad: float, min_samples: int
    ) -> None:
        self.stratified = stratified and strata > 1
        keys = range(strata) if self.stratified else (ALL,)
        self.tests = {k: AgreementTest(good, bad, min_samples=min_samples) for k in keys}

    def observe(self, stratum: int, agreed: bool) -> None:
        test = self.tests.get(stratum if self.stratified else ALL)
        if test is None:  # the strata were re-learned with other cut points meanwhile
            test = self.tests[min(max(stratum, 0), len(self.tests) - 1)]
        test.observe(agreed)

    @property
    def samples(self) -> int:
        return sum(t.samples for t in self.tests.values())

    @property
    def rate(self) -> float:
        samples = self.samples
        return sum(t.agreed for t in self.tests.values()) / samples if samples else 0.0

    def outcome(self) -> Outcome:
        """FAIL when any stratum fails; PASS when every one passes; else undecided."""
        outcomes = [t.outcome for t in self.tests.values()]
        if Outcome.FAIL in outcomes:
            return Outcome.FAIL
        if all(o is Outcome.PASS for o in outcomes):
            return Outcome.PASS
        return Outcome.UNDECIDED

    def describe(self) -> str:
        """Per stratum: agreement, its 95% interval, samples, verdict."""
        parts = []
        for key, test in self.tests.items():
            label = "all" if key == ALL else f"stratum {key}"
            lo, hi = wilson(test.agreed, test.samples)
            parts.append(
                f"{label}: {test.rate:.1%} [{lo:.1%}, {hi:.1%}] on {test.samples} ({test.outcome})"
            )
        return "; ".join(parts)

    def figures(self, prefix: str) -> dict[str, float]:
        out = {f"{prefix}_samples": float(self.samples), f"{prefix}_agreement": self.rate}
        for key, test in self.tests.items():
            name = "all" if key == ALL else str(key)
            out[f"{prefix}_agreement_{name}"] = test.rate
            out[f"{prefix}_samples_{name}"] = float(test.samples)
        return out


def wilson(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a proportion."""
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))
