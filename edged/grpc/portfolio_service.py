"""edged.v1.Portfolio: what the store holds and what is resident, for `edged models`."""

from __future__ import annotations

from typing import Any

import grpc

from edged.api import portfolio_pb2 as pb
from edged.api import portfolio_pb2_grpc as pb_grpc
from edged.grpc.status import mapped_errors
from edged.portfolio.portfolio import Portfolio

Context = grpc.aio.ServicerContext[Any, Any]


class PortfolioServicer(pb_grpc.PortfolioServicer):
    def __init__(self, portfolio: Portfolio) -> None:
        self.portfolio = portfolio

    @mapped_errors
    async def ListModels(self, request: pb.ListModelsRequest, context: Context) -> Any:
        portfolio = self.portfolio
        portfolio.refresh()
        response = pb.ListModelsResponse()
        now = portfolio.clock()
        reading = portfolio.reading
        response.budget.bytes = reading.bytes
        response.budget.limited_by = reading.limited_by
        response.budget.accounted_bytes = portfolio.accounted()
        response.budget.available_bytes = reading.available
        response.budget.psi_some_avg10 = reading.psi_some_avg10 or 0.0
        for name, slot in sorted(portfolio.slots.items()):
            active = slot.manifest.version if slot.manifest else ""
            model = response.models.add(
                name=name,
                active_version=active,
                state=slot.state.index_state,
                pinned=slot.pinned,
                predicted_rate=slot.rate.rate(now),
                last_use_seconds_ago=-1.0 if slot.last_use is None else now - slot.last_use,
                reason=slot.reason,
            )
            handle = slot.handle
            for version in portfolio.store.versions(name):
                manifest = portfolio.store.manifest(name, version)
                entry = model.versions.add(version=version, active=version == active)
                for variant in manifest.variants:
                    state, reason, result = portfolio.verdict(variant)
                    serving = (
                        handle is not None
                        and handle.version == version
                        and (handle.variant.id == variant.id)
                    )
                    entry.variants.add(
                        id=variant.id,
                        format=variant.format,
                        quantization=variant.quantization,
                        quality=variant.quality,
                        size=variant.size,
                        state="READY" if serving else state,
                        reason=reason,
                        serving=serving,
                        resident_bytes=portfolio.bytes_of(handle) if serving and handle else 0,
                        load_seconds=(
                            handle.load_stats.seconds
                            if serving and handle
                            else result.load_seconds
                            if result
                            else 0.0
                        ),
                    )
        return response

    @mapped_errors
    async def Pin(self, request: pb.PinRequest, context: Context) -> Any:
        self.portfolio.pin(request.model, True)
        return pb.PinResponse()

    @mapped_errors
    async def Unpin(self, request: pb.PinRequest, context: Context) -> Any:
        self.portfolio.pin(request.model, False)
        return pb.PinResponse()

    @mapped_errors
    async def Evict(self, request: pb.EvictRequest, context: Context) -> Any:
        await self.portfolio.unload(request.model)
        return pb.EvictResponse()

    @mapped_errors
    async def Load(self, request: pb.LoadRequest, context: Context) -> Any:
        handle = await self.portfolio.load(request.model, request.variant or None)
        return pb.LoadResponse(
            version=handle.version,
            variant=handle.variant.id,
            resident_bytes=self.portfolio.bytes_of(handle),
        )
