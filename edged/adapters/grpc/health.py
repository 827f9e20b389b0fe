"""grpc.health.v1.Health on edged's own stubs (edged/api/health_pb2: why, docs/architecture.md).

Check answers the status set for a service ("" is the whole server) or NOT_FOUND for a name
never set, as the protocol says; Watch streams the status whenever it changes (SERVICE_UNKNOWN
for a name not set yet) until the client leaves; List gives them all.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc

from edged.api import health_pb2 as pb
from edged.api import health_pb2_grpc as pb_grpc

SERVICE_NAME = "grpc.health.v1.Health"
Status = pb.HealthCheckResponse.ServingStatus


class HealthServicer(pb_grpc.HealthServicer):
    def __init__(self) -> None:
        self._statuses: dict[str, Status] = {}
        self._changed = asyncio.Condition()

    async def set(self, service: str, status: Status) -> None:
        async with self._changed:
            self._statuses[service] = status
            self._changed.notify_all()

    async def Check(self, request: pb.HealthCheckRequest, context: Any) -> pb.HealthCheckResponse:
        status = self._statuses.get(request.service)
        if status is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {request.service!r}")
        return pb.HealthCheckResponse(status=status)

    async def List(self, request: pb.HealthListRequest, context: Any) -> pb.HealthListResponse:
        return pb.HealthListResponse(
            statuses={k: pb.HealthCheckResponse(status=v) for k, v in self._statuses.items()}
        )

    async def Watch(
        self, request: pb.HealthCheckRequest, context: Any
    ) -> AsyncIterator[pb.HealthCheckResponse]:
        last: Status | None = None
        unknown = pb.HealthCheckResponse.SERVICE_UNKNOWN
        while True:
            async with self._changed:
                while (status := self._statuses.get(request.service, unknown)) == last:
                    await self._changed.wait()
            last = status
            yield pb.HealthCheckResponse(status=status)
