"""edged.v1.Quality: delayed labels, and what they have measured."""

from __future__ import annotations

from typing import Any

import grpc

from edged.adapters.grpc.status import mapped_errors
from edged.api import quality_pb2 as pb
from edged.api import quality_pb2_grpc as pb_grpc
from edged.serving import QualityService

Context = grpc.aio.ServicerContext[Any, Any]


class QualityServicer(pb_grpc.QualityServicer):
    def __init__(self, quality: QualityService) -> None:
        self.quality = quality

    @mapped_errors
    async def Label(self, request: pb.LabelRequest, context: Context) -> Any:
        done = self.quality.label(request.model, request.request_id, list(request.labels))
        return pb.LabelResponse(
            version=done.version, variant=done.variant, stratum=done.stratum, correct=done.correct
        )

    @mapped_errors
    async def Report(self, request: pb.ReportRequest, context: Context) -> Any:
        report = self.quality.report(request.model)
        return pb.ReportResponse(
            rows=[
                pb.ScoreRow(
                    version=r.version,
                    variant=r.variant,
                    stratum=r.stratum,
                    labels=r.labels,
                    accuracy=r.accuracy,
                    ece=r.ece,
                    measured_quality=r.measured_quality,
                )
                for r in report.rows
            ],
            strata_edges=list(report.strata_edges),
            cascade=report.cascade,
        )
