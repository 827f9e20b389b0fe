"""edged.v1.Updates: resumable, signed pushes from the fleet controller (docs/updates.md)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import grpc

from edged.api import updates_pb2 as pb
from edged.api import updates_pb2_grpc as pb_grpc
from edged.errors import EdgedError, RejectedError
from edged.grpc.status import mapped_errors
from edged.metrics import Metrics
from edged.store.manifest import Manifest
from edged.update.receiver import FileState, Update, UpdateError, UpdateReceiver, update_id

log = logging.getLogger(__name__)

T = TypeVar("T")
Context = grpc.aio.ServicerContext[Any, Any]


class Throttle:
    """Caps the receive rate at ``rate`` bytes per second (0: no cap), by sleeping the stream."""

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self.start = time.monotonic()
        self.bytes = 0

    async def account(self, n: int) -> None:
        if not self.rate:
            return
        self.bytes += n
        ahead = self.bytes / self.rate - (time.monotonic() - self.start)
        if ahead > 0:
            await asyncio.sleep(ahead)


class UpdatesServicer(pb_grpc.UpdatesServicer):
    def __init__(
        self,
        receiver: UpdateReceiver,
        metrics: Metrics,
        bandwidth: int,
        activated: Callable[[str], None],
    ) -> None:
        self.receiver = receiver
        self.metrics = metrics
        self.bandwidth = bandwidth
        self.activated = activated  # called with the model name when its active version moved

    @mapped_errors
    async def Push(self, request_iterator: AsyncIterator[pb.PushRequest], context: Context) -> Any:
        try:
            return await self._push(request_iterator)
        except EdgedError as e:
            reason = e.reason if isinstance(e, RejectedError) else "other"
            self.metrics.patches_rejected.labels(reason).inc()
            log.warning("push refused: %s", e.message)
            raise

    async def _push(self, requests: AsyncIterator[pb.PushRequest]) -> pb.PushResponse:
        first = await anext(aiter(requests), None)
        if first is None or first.WhichOneof("part") != "header":
            raise UpdateError("Push: the first message must be the header", "bad_stream")
        header = first.header
        uid = update_id(header.manifest)
        begin = asyncio.ensure_future(
            asyncio.to_thread(self.receiver.begin, header.manifest, header.signature)
        )
        try:
            opened = await asyncio.shield(begin)
        except asyncio.CancelledError:
            # The client left while its header was checked: give the model back once it is held.
            begin.add_done_callback(self._release_when_opened)
            raise
        if isinstance(opened, Manifest):
            async for _ in requests:
                pass  # already applied: drain what the client still sends
            return _response(uid, opened, self._state(opened), [])
        update = opened
        self.metrics.updates_in_flight.inc()
        try:
            await self._receive(update, requests)
        except BaseException:
            await _to_thread_uncancelled(self._finish, update, False)
            raise
        if not await _to_thread_uncancelled(self._finish, update, True):
            return _response(uid, update.manifest, "receiving", update.files())
        state = self._state(update.manifest)
        log.info(
            "update %s: %s version %s %s", uid, update.manifest.name, update.manifest.version, state
        )
        if state == "active":
            self.activated(update.manifest.name)
        return _response(uid, update.manifest, state, update.files())

    def _finish(self, update: Update, apply: bool) -> bool:
        """Apply the update if asked and complete, then release its model; True when applied.
        Runs to the end even when the client leaves meanwhile: a skipped release would leave the
        model busy and the bytes received not durable."""
        try:
            if not (apply and update.complete()):
                return False
            started = time.perf_counter()
            update.apply()
            self.metrics.patch_apply_seconds.observe(time.perf_counter() - started)
            return True
        finally:
            self.metrics.updates_in_flight.dec()
            self.receiver.end(update)

    def _release_when_opened(self, begin: asyncio.Future[Update | Manifest]) -> None:
        if not begin.cancelled() and begin.exception() is None:
            opened = begin.result()
            if isinstance(opened, Update):
                asyncio.get_running_loop().run_in_executor(None, self.receiver.end, opened)

    async def _receive(self, update: Update, requests: AsyncIterator[pb.PushRequest]) -> None:
        # A dropped link ends the stream early; receiver.end (in _push) makes what arrived
        # durable for the next Push.
        throttle = Throttle(self.bandwidth)
        async for message in requests:
            if message.WhichOneof("part") != "chunk":
                raise UpdateError("Push: only chunks may follow the header", "bad_stream")
            chunk = message.chunk
            await asyncio.to_thread(update.write, chunk.variant, chunk.offset, chunk.data)
            self.metrics.update_bytes.inc(len(chunk.data))
            await throttle.account(len(chunk.data))

    def _state(self, manifest: Manifest) -> str:
        active = self.receiver.store.active(manifest.name)
        return "active" if active == manifest.version else "staged"

    @mapped_errors
    async def Status(self, request: pb.UpdateStatusRequest, context: Context) -> Any:
        update = await asyncio.to_thread(self.receiver.find, request.update_id)
        if update is None:
            return pb.UpdateStatusResponse(update_id=request.update_id, state="unknown")
        response = pb.UpdateStatusResponse(
            update_id=update.id,
            state="receiving",
            model=update.manifest.name,
            version=update.manifest.version,
        )
        response.files.extend(_progress(update.files()))
        return response


async def _to_thread_uncancelled(fn: Callable[..., T], *args: Any) -> T:
    """Run fn in a worker thread; cancelling the caller does not stop or skip it."""
    return await asyncio.shield(asyncio.to_thread(fn, *args))


def _progress(files: list[FileState]) -> list[pb.FileProgress]:
    return [
        pb.FileProgress(variant=f.variant, method=f.method, held=f.held, size=f.size) for f in files
    ]


def _response(uid: str, manifest: Manifest, state: str, files: list[FileState]) -> pb.PushResponse:
    response = pb.PushResponse(
        update_id=uid, model=manifest.name, version=manifest.version, state=state
    )
    response.files.extend(_progress(files))
    return response
