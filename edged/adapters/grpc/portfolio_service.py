"""edged.v1.Portfolio: what the store holds and what is resident, for `edged models`."""

from __future__ import annotations

from typing import Any

import grpc

from edged.adapters.grpc.access import Access
from edged.adapters.grpc.status import mapped_errors
from edged.api import portfolio_pb2 as pb
from edged.api import portfolio_pb2_grpc as pb_grpc
from edged.serving import Serving

Context = grpc.aio.ServicerContext[Any, Any]


class PortfolioServicer(pb_grpc.PortfolioServicer):
    def __init__(self, serving: Serving, access: Access) -> None:
        self.repository = serving.repository
        self.operations = serving.operations
        self.access = access

    @mapped_errors
    async def ListModels(self, request: pb.ListModelsRequest, context: Context) -> Any:
        view = self.repository.portfolio_view()
        response = pb.ListModelsResponse()
        b = view.budget
        response.budget.bytes = b.bytes
        response.budget.limited_by = b.limited_by
        response.budget.accounted_bytes = b.accounted_bytes
        response.budget.available_bytes = b.available_bytes
        response.budget.psi_some_avg10 = b.psi_some_avg10 or 0.0
        for m in view.models:
            model = response.models.add(
                name=m.name,
                active_version=m.active_version,
                state=m.state,
                pinned=m.pinned,
                predicted_rate=m.predicted_rate,
                last_use_seconds_ago=m.last_use_seconds_ago,
                reason=m.reason,
            )
            for v in m.versions:
                entry = model.versions.add(version=v.version, active=v.active)
                for variant in v.variants:
                    entry.variants.add(
                        id=variant.id,
                        format=variant.format,
                        quantization=variant.quantization,
                        quality=variant.quality,
                        size=variant.size,
                        state=variant.state,
                        reason=variant.reason,
                        serving=variant.serving,
                        resident_bytes=variant.resident_bytes,
                        load_seconds=variant.load_seconds,
                        labels=variant.labels,
                        accuracy=variant.accuracy,
                        ece=variant.ece,
                        measured_quality=variant.measured_quality,
                    )
        return response

    @mapped_errors
    async def Pin(self, request: pb.PinRequest, context: Context) -> Any:
        self.access.require(context, "operate", "Pin")
        self.operations.pin(request.model, True)
        return pb.PinResponse()

    @mapped_errors
    async def Unpin(self, request: pb.PinRequest, context: Context) -> Any:
        self.access.require(context, "operate", "Unpin")
        self.operations.pin(request.model, False)
        return pb.PinResponse()

    @mapped_errors
    async def Evict(self, request: pb.EvictRequest, context: Context) -> Any:
        self.access.require(context, "operate", "Evict")
        await self.operations.evict(request.model)
        return pb.EvictResponse()

    @mapped_errors
    async def Load(self, request: pb.LoadRequest, context: Context) -> Any:
        self.access.require(context, "operate", "Load")
        loaded = await self.operations.load(request.model, request.variant or None)
        return pb.LoadResponse(
            version=loaded.version, variant=loaded.variant, resident_bytes=loaded.resident_bytes
        )
