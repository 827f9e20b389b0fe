"""Quality operations and views: a delayed label for a request, and what labels have measured."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from edged.errors import ManifestError
from edged.portfolio.portfolio import Portfolio
from edged.quality.monitor import QualityMonitor
from edged.runtime.cascade import CascadeRuntime, describe
from edged.store.manifest import Manifest


@dataclasses.dataclass(frozen=True)
class Labelled:
    version: str
    variant: str
    stratum: int
    correct: bool


@dataclasses.dataclass(frozen=True)
class ScoreRow:
    version: str
    variant: str  # "" for every variant
    stratum: int  # -1 for every stratum
    labels: int
    accuracy: float
    ece: float
    measured_quality: float


@dataclasses.dataclass(frozen=True)
class QualityReport:
    rows: tuple[ScoreRow, ...]
    strata_edges: tuple[float, ...]
    cascade: str


class QualityService:
    def __init__(self, portfolio: Portfolio, monitor: QualityMonitor) -> None:
        self.portfolio = portfolio
        self.monitor = monitor

    def label(self, model: str, request_id: str, labels: Sequence[int]) -> Labelled:
        self.portfolio.slot(model)
        answer = self.monitor.label(model, request_id, labels)
        return Labelled(
            answer.version,
            answer.variant,
            answer.stratum,
            all(p == t for p, t in zip(answer.predicted, labels, strict=True)),
        )

    def report(self, model: str) -> QualityReport:
        slot = self.portfolio.slot(model)
        self.monitor.flush()
        rows = []
        keys = sorted({(v, var, s) for (m, v, var, s) in self.monitor.book.scores if m == model})
        for version, variant, stratum in keys:
            score = self.monitor.book.total(model, version, variant, stratum)
            nan = float("nan")
            rows.append(
                ScoreRow(version, variant, stratum, score.labels, score.accuracy, score.ece, nan)
            )
        for version, variant in sorted({(v, var) for v, var, _ in keys}):
            score = self.monitor.book.total(model, version, variant)
            prior = self._prior(slot.manifest, variant)
            measured = self.monitor.measured_quality(model, variant.split("/")[0], prior)
            rows.append(
                ScoreRow(version, variant, -1, score.labels, score.accuracy, score.ece, measured)
            )
        strata = self.monitor.strata.get(model)
        handle = slot.handle
        cascade = (
            describe(handle.runtime)
            if handle is not None and isinstance(handle.runtime, CascadeRuntime)
            else ""
        )
        return QualityReport(tuple(rows), strata.edges if strata else (), cascade)

    @staticmethod
    def _prior(manifest: Manifest, variant: str) -> float:
        """The manifest's quality for a variant ("cascade/<stage>": the cascade's)."""
        try:
            return manifest.variant(variant.split("/", maxsplit=1)[0]).quality
        except ManifestError:
            return float("nan")
