"""The update session: a pushed, signed, resumable update from header to the version staged or
active (docs/updates.md). Transport-free: the gRPC adapter hands over the stream's parts.

The header is checked and the model held for this update (one update per model at a time), chunks
are written where the node says it holds the file up to, the receive rate is capped, and when the
stream ends the update is applied if complete. Whatever happens to the client, the model is
released and what arrived is made durable for the next push (kill -9 included: receiver.py).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import TypeVar

from edged.errors import EdgedError, RejectedError
from edged.events import Events
from edged.serving.views import FileProgress, PushResult, UpdateStatus
from edged.store.manifest import Manifest
from edged.update.node.receiver import FileState, Update, UpdateError, UpdateReceiver
from edged.update.protocol import update_id

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class Header:
    manifest: bytes  # exactly the signed bytes
    signature: bytes
    roots: tuple[bytes, ...] = ()  # newer root documents to trust first, oldest first


@dataclasses.dataclass(frozen=True)
class Chunk:
    variant: str
    offset: int
    data: bytes


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


class UpdateService:
    def __init__(
        self,
        receiver: UpdateReceiver,
        events: Events,
        bandwidth: int,
        activated: Callable[[str], None],
    ) -> None:
        self.receiver = receiver
        self.events = events
        self.bandwidth = bandwidth
        # Called with the model's name when a version arrived with its promotion requested.
        self.activated = activated

    async def push(self, parts: AsyncIterator[Header | Chunk | None]) -> PushResult:
        """One Push stream: a header, then chunks."""
        try:
            return await self._push(parts)
        except EdgedError as e:
            self.events.update_rejected(e.reason if isinstance(e, RejectedError) else "other")
            log.warning("push refused: %s", e.message)
            raise

    async def _push(self, parts: AsyncIterator[Header | Chunk | None]) -> PushResult:
        header = await anext(aiter(parts), None)
        if not isinstance(header, Header):
            raise UpdateError("Push: the first message must be the header", "bad_stream")
        uid = update_id(header.manifest)
        begin = asyncio.ensure_future(
            asyncio.to_thread(self.receiver.begin, header.manifest, header.signature, header.roots)
        )
        try:
            opened = await asyncio.shield(begin)
        except asyncio.CancelledError:
            # The client left while its header was checked: give the model back once it is held.
            begin.add_done_callback(self._release_when_opened)
            raise
        if isinstance(opened, Manifest):
            async for _ in parts:
                pass  # already applied: drain what the client still sends
            return _result(uid, opened, self._state(opened), [])
        update = opened
        self.events.update_started()
        try:
            await self._receive(update, parts)
        except BaseException:
            await _to_thread_uncancelled(self._finish, update, False)
            raise
        if not await _to_thread_uncancelled(self._finish, update, True):
            return _result(uid, update.manifest, "receiving", update.files())
        if update.manifest.update is not None and update.manifest.update.activate == "immediate":
            self.activated(update.manifest.name)
        state = self._state(update.manifest)
        log.info(
            "update %s: %s version %s %s", uid, update.manifest.name, update.manifest.version, state
        )
        return _result(uid, update.manifest, state, update.files())

    def _finish(self, update: Update, apply: bool) -> bool:
        """Apply the update if asked and complete, then release its model; True when applied.
        Runs to the end even when the client leaves meanwhile: a skipped release would leave the
        model busy and the bytes received not durable."""
        try:
            if not (apply and update.complete()):
                return False
            started = time.perf_counter()
            update.apply()
            self.events.update_applied(time.perf_counter() - started)
            return True
        finally:
            self.events.update_finished()
            self.receiver.end(update)

    def _release_when_opened(self, begin: asyncio.Future[Update | Manifest]) -> None:
        if not begin.cancelled() and begin.exception() is None:
            opened = begin.result()
            if isinstance(opened, Update):
                asyncio.get_running_loop().run_in_executor(None, self.receiver.end, opened)

    async def _receive(self, update: Update, parts: AsyncIterator[Header | Chunk | None]) -> None:
        # A dropped link ends the stream early; receiver.end (in _finish) makes what arrived
        # durable for the next Push.
        throttle = Throttle(self.bandwidth)
        async for chunk in parts:
            if not isinstance(chunk, Chunk):
                raise UpdateError("Push: only chunks may follow the header", "bad_stream")
            await asyncio.to_thread(update.write, chunk.variant, chunk.offset, chunk.data)
            self.events.update_bytes(len(chunk.data))
            await throttle.account(len(chunk.data))

    def _state(self, manifest: Manifest) -> str:
        """``active`` when this version is the committed one, else its lifecycle state (staged,
        candidate, probation, ...)."""
        store = self.receiver.store
        if store.active(manifest.name) == manifest.version:
            return "active"
        return str(store.record(manifest.name, manifest.version).state)

    async def status(self, uid: str) -> UpdateStatus:
        update = await asyncio.to_thread(self.receiver.find, uid)
        if update is None:
            return UpdateStatus(uid, "unknown")
        return UpdateStatus(
            update.id,
            "receiving",
            update.manifest.name,
            update.manifest.version,
            _progress(update.files()),
        )


async def _to_thread_uncancelled(fn: Callable[..., T], *args: object) -> T:
    """Run fn in a worker thread; cancelling the caller does not stop or skip it."""
    return await asyncio.shield(asyncio.to_thread(fn, *args))


def _progress(files: list[FileState]) -> tuple[FileProgress, ...]:
    return tuple(FileProgress(f.variant, f.method, f.held, f.size) for f in files)


def _result(uid: str, manifest: Manifest, state: str, files: list[FileState]) -> PushResult:
    return PushResult(uid, manifest.name, manifest.version, state, _progress(files))
