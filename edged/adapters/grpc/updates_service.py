"""edged.v1.Updates: resumable, signed pushes from the fleet controller (docs/updates.md).
Converts the stream's messages and delegates the session to the service layer."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc

from edged.adapters.grpc.access import Access
from edged.adapters.grpc.status import mapped_errors
from edged.api import updates_pb2 as pb
from edged.api import updates_pb2_grpc as pb_grpc
from edged.serving import Chunk, Header, UpdateService
from edged.serving.views import FileProgress, PushResult

Context = grpc.aio.ServicerContext[Any, Any]


class UpdatesServicer(pb_grpc.UpdatesServicer):
    def __init__(self, updates: UpdateService, access: Access) -> None:
        self.updates = updates
        self.access = access

    @mapped_errors
    async def Push(self, request_iterator: AsyncIterator[pb.PushRequest], context: Context) -> Any:
        self.access.require(context, "update", "Push")  # before a byte of the update is read
        result = await self.updates.push(_parts(request_iterator))
        return _response(result)

    @mapped_errors
    async def Status(self, request: pb.UpdateStatusRequest, context: Context) -> Any:
        status = await self.updates.status(request.update_id)
        response = pb.UpdateStatusResponse(
            update_id=status.update_id,
            state=status.state,
            model=status.model,
            version=status.version,
        )
        response.files.extend(_progress(status.files))
        return response


async def _parts(messages: AsyncIterator[pb.PushRequest]) -> AsyncIterator[Header | Chunk | None]:
    """The stream's messages as the service's parts; a message with neither part is None (the
    service refuses it where it stands)."""
    async for message in messages:
        part = message.WhichOneof("part")
        if part == "header":
            h = message.header
            yield Header(h.manifest, h.signature, tuple(h.roots))
        elif part == "chunk":
            c = message.chunk
            yield Chunk(c.variant, c.offset, c.data)
        else:
            yield None


def _progress(files: tuple[FileProgress, ...]) -> list[pb.FileProgress]:
    return [
        pb.FileProgress(variant=f.variant, method=f.method, held=f.held, size=f.size) for f in files
    ]


def _response(result: PushResult) -> pb.PushResponse:
    response = pb.PushResponse(
        update_id=result.update_id, model=result.model, version=result.version, state=result.state
    )
    response.files.extend(_progress(result.files))
    return response
