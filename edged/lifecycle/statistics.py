"""The statistics the lifecycle decides with: Wald's sequential probability ratio test on an
agreement rate, percentiles, and two measures of drift between score distributions (the
population stability index and the two-sample Kolmogorov-Smirnov statistic)."""

from __future__ import annotations

import dataclasses
import enum
import math
from collections.abc import Sequence

import numpy as np


class Outcome(enum.StrEnum):
    PASS = "pass"
    FAIL = "fail"
    INCONCLUSIVE = "inconclusive"
    UNDECIDED = "undecided"  # still collecting


@dataclasses.dataclass
class AgreementTest:
    """SPRT of H0: agreement >= ``good`` against H1: agreement <= ``bad``.

    Each observation adds log(p1/p0) when it agrees and log((1-p1)/(1-p0)) when not; the test
    accepts H0 (pass) below log(beta/(1-alpha)) and H1 (fail) above log((1-beta)/alpha), and
    never before ``min_samples``. With good=0.99 and bad=0.95 a pass needs ~72 agreements in a
    row, and two disagreements among the first dozens fail it: a sample size that adapts to how
    clear the evidence is, with error rates alpha and beta whatever the traffic.
    """

    good: float = 0.99
    bad: float = 0.95
    alpha: float = 0.05
    beta: float = 0.05
    min_samples: int = 50
    samples: int = 0
    agreed: int = 0
    llr: float = 0.0

    def __post_init__(self) -> None:
        self.bad = min(self.bad, self.good - 1e-3)

    def observe(self, agreed: bool) -> None:
        self.samples += 1
        if agreed:
            self.agreed += 1
            self.llr += math.log(self.bad / self.good)
        else:
            self.llr += math.log((1 - self.bad) / (1 - self.good))

    @property
    def outcome(self) -> Outcome:
        if self.samples < self.min_samples:
            return Outcome.UNDECIDED
        if self.llr >= math.log((1 - self.beta) / self.alpha):
            return Outcome.FAIL
        if self.llr <= math.log(self.beta / (1 - self.alpha)):
            return Outcome.PASS
        return Outcome.UNDECIDED

    @property
    def rate(self) -> float:
        return self.agreed / self.samples if self.samples else 0.0


def percentiles(values: Sequence[float]) -> tuple[float, float, float]:
    """(p50, p95, p99) of ``values`` (nearest rank, as latency budgets are written)."""
    ordered = sorted(values)
    if not ordered:
        return (math.nan, math.nan, math.nan)

    def rank(q: float) -> float:
        return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]

    return rank(0.50), rank(0.95), rank(0.99)


def psi(reference: Sequence[float], current: Sequence[float], bins: int = 10) -> float:
    """Population stability index of ``current`` against ``reference``, over the reference's
    quantile bins (0.1 is a small shift, 0.25 a large one, by the usual reading)."""
    ref = np.asarray(reference, dtype=np.float64)
    cur = np.asarray(current, dtype=np.float64)
    if ref.size == 0 or cur.size == 0:
        return 0.0
    edges = np.unique(np.quantile(ref, np.linspace(0, 1, bins + 1)[1:-1]))
    ref_share = np.bincount(np.searchsorted(edges, ref, side="right"), minlength=len(edges) + 1)
    cur_share = np.bincount(np.searchsorted(edges, cur, side="right"), minlength=len(edges) + 1)
    p = np.maximum(ref_share / ref.size, 1e-4)
    q = np.maximum(cur_share / cur.size, 1e-4)
    return float(np.sum((q - p) * np.log(q / p)))


def ks_statistic(reference: Sequence[float], current: Sequence[float]) -> float:
    """The two-sample Kolmogorov-Smirnov statistic: the largest gap between the two empirical
    distribution functions."""
    a = np.sort(np.asarray(reference, dtype=np.float64))
    b = np.sort(np.asarray(current, dtype=np.float64))
    if a.size == 0 or b.size == 0:
        return 0.0
    grid = np.concatenate([a, b])
    cdf_a = np.searchsorted(a, grid, side="right") / a.size
    cdf_b = np.searchsorted(b, grid, side="right") / b.size
    return float(np.max(np.abs(cdf_a - cdf_b)))


def ks_critical(n: int, m: int, alpha: float = 0.01) -> float:
    """The statistic above which two samples of sizes n and m differ at level ``alpha``."""
    return math.sqrt(-0.5 * math.log(alpha / 2)) * math.sqrt((n + m) / (n * m))


MIN_LABELS = 50
LABEL_Z = 2.33  # one-sided, p < 0.01


def less_accurate(new_correct: int, new_n: int, old_correct: int, old_n: int) -> bool:
    """Whether the new version's accuracy on its labelled answers is significantly below the
    old one's: a one-sided two-proportion z-test (z > 2.33), never on fewer than
    ``MIN_LABELS`` labels for either."""
    if new_n < MIN_LABELS or old_n < MIN_LABELS:
        return False
    pooled = (new_correct + old_correct) / (new_n + old_n)
    spread = math.sqrt(pooled * (1 - pooled) * (1 / new_n + 1 / old_n))
    return spread > 0 and (old_correct / old_n - new_correct / new_n) / spread > LABEL_Z
