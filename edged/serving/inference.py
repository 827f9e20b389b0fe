"""Inference and generation, transport-free: the lease protocol in one place.

A request is routed to its model's serving handle (leased without a coroutine when it is
resident), its inputs checked against the signature, the model run on the event loop when that
is cheaper than the hop to a worker thread (docs/performance.md) or on the worker pool, and the
lease released when the answer (or the last chunk of a stream) is out.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
import os
import random
import threading
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from edged.errors import EdgedError, ErrorCode, InvalidInputError
from edged.events import Events
from edged.portfolio.portfolio import Portfolio
from edged.portfolio.slot import Handle, Lease, Router, Slot
from edged.quality.monitor import QualityMonitor
from edged.runtime.cascade import CHECK_SHARE, CascadeRuntime
from edged.runtime.memory import trim_heap
from edged.serving.views import Served
from edged.store.manifest import CASCADE
from edged.tensors import (
    NUMPY_TO_DATATYPE,
    Array,
    GenerationParams,
    TensorSpec,
    prompt_text,
    short_shape,
)

_END = object()


class RuntimeFailedError(EdgedError):
    """The runtime raised while running a request its signature accepted (not the client's
    fault: INTERNAL, with what the runtime said)."""

    code = ErrorCode.INTERNAL


def check_inputs(model: str, specs: Sequence[TensorSpec], inputs: Mapping[str, Array]) -> None:
    """Names, datatypes and shapes against the model's signature; errors name the tensor."""
    if len(inputs) == len(specs):
        for spec in specs:
            if not _matches(spec, inputs.get(spec.name)):
                break
        else:
            return  # the request path: every tensor as the model wants it
    _explain_mismatch(model, specs, inputs)


def _matches(spec: TensorSpec, array: Array | None) -> bool:
    if array is None or len(array.shape) != len(spec.shape):
        return False
    if _datatype(array) != spec.datatype:
        return False
    for want, got in zip(spec.shape, array.shape, strict=True):
        if want >= 0 and want != got:
            return False
    return True


def _explain_mismatch(model: str, specs: Sequence[TensorSpec], inputs: Mapping[str, Array]) -> None:
    """Raise the error that names what is wrong (only called when something is)."""
    declared = {name: (_datatype(array), array.shape) for name, array in inputs.items()}
    check_declared(model, specs, declared)


def _datatype(array: Array) -> str:
    return "BYTES" if array.dtype == object else NUMPY_TO_DATATYPE.get(array.dtype, "?")


def check_declared(
    model: str, specs: Sequence[TensorSpec], declared: Mapping[str, tuple[str, tuple[int, ...]]]
) -> None:
    """Input tensors as a request declares them, name -> (datatype, shape), against the
    model's signature: InvalidInputError naming the first thing that does not fit."""
    expected = {s.name for s in specs}
    for spec in specs:
        if spec.name not in declared:
            got = ", ".join(repr(n) for n in declared) or "none"
            raise InvalidInputError(
                f"missing input tensor {spec.name!r} for model {model!r} (got {got})"
            )
    for name in declared:
        if name not in expected:
            raise InvalidInputError(
                f"unexpected input tensor {name!r}: model {model!r} takes "
                f"{', '.join(sorted(expected))}"
            )
    for spec in specs:
        datatype, shape = declared[spec.name]
        if datatype != spec.datatype:
            raise InvalidInputError(
                f"input tensor {spec.name!r}: datatype {datatype} does not match the model's "
                f"{spec.datatype}"
            )
        if len(shape) != len(spec.shape) or any(
            want >= 0 and want != got for want, got in zip(spec.shape, shape, strict=True)
        ):
            raise InvalidInputError(
                f"input tensor {spec.name!r}: shape {short_shape(shape)} does not match the "
                f"model's {list(spec.shape)} (-1 is any size)"
            )


def select_outputs(
    model: str, outputs: dict[str, Array], requested: Sequence[str]
) -> list[tuple[str, Array]]:
    if not requested:
        return list(outputs.items())
    selected = []
    for name in requested:
        if name not in outputs:
            raise InvalidInputError(
                f"requested output {name!r} does not exist: model {model!r} produces "
                f"{', '.join(outputs)}"
            )
        selected.append((name, outputs[name]))
    return selected


@dataclasses.dataclass
class Stream:
    """An opened streamed request: who answers, and either text chunks (a generative model
    asked to stream) or the whole answer."""

    version: str
    variant: str
    output: str  # the output tensor's name
    cold: bool
    chunks: AsyncIterator[str] | None = None
    outputs: list[tuple[str, Array]] | None = None


TRIM_INTERVAL_SECONDS = 1.0
INFLIGHT_KEY = "requests in flight"
TRIM_DELAY_SECONDS = 0.2


class InferenceService:
    def __init__(
        self,
        portfolio: Portfolio,
        events: Events,
        workers: int,
        quality: QualityMonitor | None = None,
    ) -> None:
        self.portfolio = portfolio
        self.events = events
        self.pool = ThreadPoolExecutor(workers, "edged-infer")
        # Generation has threads of its own, below the request path's priority: a generation
        # takes a core for seconds, and on a two-core device the event loop and the other
        # models' requests would wait for the scheduler behind it (docs/reliability.md).
        self.generation_pool = ThreadPoolExecutor(
            workers,
            "edged-generate",
            initializer=_lower_priority,
            initargs=(portfolio.settings.server.generation_nice,),
        )
        self.quality = quality or QualityMonitor(portfolio.settings.quality, None, events)
        self._random = random.Random(0).random
        self._trimmed = 0.0
        self.workers = workers
        self.max_queue = portfolio.settings.server.max_queue_per_model
        self.max_inflight_bytes = portfolio.settings.server.max_inflight_bytes
        self.inflight_bytes = 0

    def admit_bytes(self, size: int) -> None:
        """A large request's bytes, held from its arrival to its answer: refused past
        server.max_inflight_bytes, and counted against the memory budget meanwhile (a load
        planned now sees them; ten 64 MiB requests once took 1.1 GB nobody accounted for)."""
        if self.inflight_bytes + size > self.max_inflight_bytes:
            raise EdgedError(
                f"requests in flight hold {self.inflight_bytes} bytes; this one's {size} would "
                f"pass server.max_inflight_bytes ({self.max_inflight_bytes}): retry later",
                ErrorCode.RESOURCE_EXHAUSTED,
            )
        self.inflight_bytes += size
        self.portfolio.budget.reserved[INFLIGHT_KEY] = self.inflight_bytes

    def signature(self, model: str, version: str) -> Sequence[TensorSpec] | None:
        """The input tensors a request for ``model`` must carry when its serving variant is
        resident (and ``version`` is empty or the serving one), else None. Only reads: the
        request screen calls it from a worker thread."""
        slot = self.portfolio.slots.get(model)
        if slot is None or (version and version != slot.version):
            return None
        handle = slot.current()
        return None if handle is None else handle.runtime.inputs

    def release_bytes(self, size: int) -> None:
        self.inflight_bytes -= size
        if self.inflight_bytes:
            self.portfolio.budget.reserved[INFLIGHT_KEY] = self.inflight_bytes
        else:
            self.portfolio.budget.reserved.pop(INFLIGHT_KEY, None)

    def _queue_bound(self, handle: Handle) -> int:
        """Requests a variant may hold at once: what it can run (its contexts, or the worker
        threads) plus the queue of one model."""
        return (handle.runtime.concurrency or self.workers) + self.max_queue

    def after_large_request(self) -> None:
        """A request of many bytes ended (served or refused): hand the heap pages its buffers
        held back to the OS, at most once a second, off the event loop. glibc keeps freed
        pages otherwise, and a burst of large refused requests would leave the daemon's RSS
        hundreds of MB above its level (issue 17)."""
        now = time.monotonic()
        if now - self._trimmed < TRIM_INTERVAL_SECONDS:
            return
        self._trimmed = now
        loop = asyncio.get_running_loop()
        # Shortly after: by then the request's buffers are freed (the call has ended).
        loop.call_later(TRIM_DELAY_SECONDS, loop.run_in_executor, None, trim_heap)

    async def infer(
        self,
        model: str,
        version: str,
        inputs: Mapping[str, Array],
        requested: Sequence[str],
        params: GenerationParams,
        layout: object | None = None,
        request_id: str = "",
    ) -> Served:
        """One whole inference. ``layout``: an object standing for the inputs' names,
        datatypes and shapes (a wire.py request layout); a handle that has checked it once does
        not check it again. ``request_id``: the client's, kept for a later label."""
        portfolio = self.portfolio
        slot, arrived = portfolio.arrive(model, version)
        lease = portfolio.warm_lease(slot, arrived) or await portfolio.cold_lease(slot, arrived)
        handle = lease.handle
        try:
            if handle.inflight > self._queue_bound(handle):
                raise _queue_full(model, handle)
            served = await self._run(lease, inputs, requested, params, layout)
        except RuntimeFailedError as failure:
            served = await self._fall_back(slot, handle, failure, inputs, requested, params)
        finally:
            lease.release()
        router = slot.router
        if router is not None:
            served = await self._routed(router, slot, inputs, served, requested)
        slot.reservoir.offer(inputs)
        quality = self.quality
        quality.note(
            model,
            served.version,
            served.variant if served.escalated is None else f"{CASCADE}/{served.variant}",
            request_id,
            served.outputs,
            handle.kinds or quality.kinds(handle),
            None if served.confidence is None else (served.confidence,),
            served.stratum,
        )
        observer = slot.observer
        if observer is not None:
            ns = int((time.perf_counter() - arrived) * 1e9)
            observer.served(handle, inputs, dict(served.outputs), ns)
        return served

    async def _routed(
        self,
        router: Router,
        slot: Slot,
        inputs: Mapping[str, Array],
        served: Served,
        requested: Sequence[str],
    ) -> Served:
        """A canary may answer instead (with all of the serving version's outputs to compare)."""
        routed = await router.route(inputs, dict(served.outputs))
        candidate = slot.candidate
        if routed is None or candidate is None:
            return served
        answer, stratum = routed
        return Served(
            candidate.version,
            candidate.variant.id,
            select_outputs(slot.name, answer, requested),
            served.cold,
            stratum=stratum,
        )

    async def _fall_back(
        self,
        slot: Slot,
        handle: Handle,
        failure: RuntimeFailedError,
        inputs: Mapping[str, Array],
        requested: Sequence[str],
        params: GenerationParams,
    ) -> Served:
        """The runtime failed on this request. During probation the previous version is kept
        warm: it answers instead, and the failure counts against the new version. (If the
        versions were swapped while this request ran, whatever serves now answers.)"""
        observer = slot.observer
        if observer is not None:
            observer.failed(handle, failure)
        fallback = slot.previous
        if fallback is None or fallback is handle:
            fallback = slot.handle
        if fallback is None or fallback is handle:
            raise failure
        lease = Lease(fallback, arrived=time.perf_counter())
        try:
            return await self._run(lease, inputs, requested, params)
        finally:
            lease.release()

    async def _run(
        self,
        lease: Lease,
        inputs: Mapping[str, Array],
        requested: Sequence[str],
        params: GenerationParams,
        layout: object | None = None,
    ) -> Served:
        handle = lease.handle
        runtime = handle.runtime
        model = handle.manifest.name
        if layout is None or handle.checked_layout is not layout:
            check_inputs(model, runtime.inputs, inputs)
            handle.checked_layout = layout
        stage = -1
        outputs: dict[str, Array]
        try:
            if runtime.staged:
                outputs, stage = await self._staged(handle, inputs)
            elif runtime.generative:
                logprobs: list[float] = []
                chunks = self._stream(handle, inputs, params, logprobs, whole=True)
                text = "".join([c async for c in chunks])
                outputs = {runtime.outputs[0].name: _text_array(text)}
                return Served(
                    handle.version,
                    handle.variant.id,
                    select_outputs(model, outputs, requested),
                    lease.cold,
                    confidence=token_confidence(logprobs),
                )
            elif handle.timing.run_inline(_nbytes(inputs)):
                # Cheaper than the hop to a worker thread and back (docs/performance.md).
                outputs = handle.timing.timed(runtime.infer, inputs)
            else:
                outputs = await asyncio.get_running_loop().run_in_executor(
                    self.pool, handle.timing.timed, runtime.infer, inputs
                )
        except EdgedError:
            raise
        except Exception as exc:
            raise RuntimeFailedError(
                f"model {model!r} version {handle.version} variant {handle.variant.id} failed "
                f"on this request: {str(exc)[:500]}"
            ) from exc
        if stage >= 0:
            return self._cascaded(lease, inputs, outputs, stage, requested)
        return Served(
            handle.version, handle.variant.id, select_outputs(model, outputs, requested), lease.cold
        )

    async def _staged(
        self, handle: Handle, inputs: Mapping[str, Array]
    ) -> tuple[dict[str, Array], int]:
        """A cascade's run: (the answer, the stage that gave it)."""
        cascade = handle.runtime
        assert isinstance(cascade, CascadeRuntime)
        if handle.timing.run_inline(_nbytes(inputs)):
            outputs, stage, _ = handle.timing.timed(cascade.infer_staged, inputs)
        else:
            outputs, stage, _ = await asyncio.get_running_loop().run_in_executor(
                self.pool, handle.timing.timed, cascade.infer_staged, inputs
            )
        return outputs, stage

    def _cascaded(
        self,
        lease: Lease,
        inputs: Mapping[str, Array],
        outputs: dict[str, Array],
        stage: int,
        requested: Sequence[str],
    ) -> Served:
        """A cascade's answer: the stage that gave it is the variant the response names; a share
        of first-stage answers is checked by the last stage off the request path (the
        threshold's calibration)."""
        handle = lease.handle
        cascade = handle.runtime
        assert isinstance(cascade, CascadeRuntime)
        escalated = stage > 0
        model = handle.manifest.name
        self.events.escalated(model, escalated, cascade.saved(stage))
        if not escalated and self._random() < CHECK_SHARE:
            handle.acquire()
            check = asyncio.get_running_loop().run_in_executor(
                self.pool, cascade.check, inputs, outputs, CHECK_SHARE
            )
            check.add_done_callback(lambda _: handle.release())
        return Served(
            handle.version,
            cascade.names[stage],
            select_outputs(model, outputs, requested),
            lease.cold,
            escalated,
        )

    async def stream(
        self,
        model: str,
        version: str,
        inputs: Mapping[str, Array],
        requested: Sequence[str],
        params: GenerationParams,
        stream: bool,
    ) -> Stream:
        """A streamed request, leased once: text chunks when the model generates and ``stream``
        is asked, else the whole answer. The lease ends with the last chunk (or at once)."""
        lease = await self.portfolio.lease(model, version)
        handle = lease.handle
        if handle.inflight > self._queue_bound(handle):
            lease.release()
            raise _queue_full(model, handle)
        runtime = handle.runtime
        opened = Stream(handle.version, handle.variant.id, runtime.outputs[0].name, lease.cold)
        if not (stream and runtime.generative):
            try:
                opened.outputs = (await self._run(lease, inputs, requested, params)).outputs
            finally:
                lease.release()
            return opened
        try:
            check_inputs(model, runtime.inputs, inputs)
        except BaseException:
            lease.release()
            raise

        async def chunks() -> AsyncIterator[str]:
            logprobs: list[float] = []
            released = False

            def release() -> None:
                nonlocal released
                if not released:
                    released = True
                    lease.release()

            try:
                # The lease ends when generation does, not when the client has read the last
                # chunk: a client that stops reading holds text, never the model (an evict or a
                # swap waits for leases).
                async for chunk in self._stream(handle, inputs, params, logprobs, release):
                    yield chunk
            finally:
                release()
            confidence = token_confidence(logprobs)
            if confidence is not None:
                self.quality.note(
                    model, handle.version, handle.variant.id, "", (), {}, [confidence]
                )

        opened.chunks = chunks()
        return opened

    def observe(self, model: str, ok: bool, start_ns: int, version: str = "") -> None:
        """A request to ``model`` ended (started at ``start_ns``, perf_counter_ns): its
        statistics and the request events. Unknown names are not counted (the label set of the
        metrics must not grow with what clients send)."""
        slot = self.portfolio.slots.get(model)
        if slot is None:
            return
        elapsed = time.perf_counter_ns() - start_ns
        slot.stats.record(ok, elapsed)
        self.events.request_finished(model, version, ok, elapsed / 1e9)

    async def _stream(
        self,
        handle: Handle,
        inputs: Mapping[str, Array],
        params: GenerationParams,
        logprobs: list[float] | None = None,
        generated: Callable[[], None] | None = None,
        whole: bool = False,
    ) -> AsyncIterator[str]:
        """Run generation on a worker thread, handing chunks to the loop as they come (with
        ``whole``, the whole text at the end: each hand-over wakes the event loop, which then
        takes the GIL from the generation); ``generated`` is called on the loop once the
        runtime is done with the request."""
        runtime = handle.runtime
        name = runtime.inputs[0].name
        prompt = prompt_text(inputs[name], name)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        stop = threading.Event()
        gate = await self._enter(handle)

        def work() -> None:
            try:
                chunks = runtime.generate(prompt, params, stop.is_set, logprobs)
                if whole:
                    loop.call_soon_threadsafe(queue.put_nowait, "".join(chunks))
                else:
                    for chunk in chunks:
                        loop.call_soon_threadsafe(queue.put_nowait, chunk)
            except BaseException as exc:
                loop.call_soon_threadsafe(queue.put_nowait, exc)
            finally:
                loop.call_soon_threadsafe(queue.put_nowait, _END)
                if gate is not None:
                    loop.call_soon_threadsafe(gate.release)
                if generated is not None:
                    loop.call_soon_threadsafe(generated)

        try:
            future = loop.run_in_executor(self.generation_pool, work)
        except BaseException:
            if gate is not None:
                gate.release()
            raise
        try:
            while (item := await queue.get()) is not _END:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()
            await asyncio.shield(future)

    async def _enter(self, handle: Handle) -> asyncio.Semaphore | None:
        """Wait, on the event loop, until the runtime can take one more request (a llama.cpp
        context is free): a waiting request never holds a worker thread, and one whose client
        leaves or whose deadline passes is cancelled here, before any work."""
        limit = handle.runtime.concurrency
        if limit is None:
            return None
        gate = handle.gate
        if gate is None:
            gate = handle.gate = asyncio.Semaphore(limit)
        if handle.waiting >= self.max_queue:
            raise _queue_full(handle.manifest.name, handle)
        handle.waiting += 1
        try:
            await gate.acquire()
        finally:
            handle.waiting -= 1
        return gate

    def close(self) -> None:
        self.pool.shutdown(wait=True)
        self.generation_pool.shutdown(wait=True)


def _lower_priority(nice: int) -> None:
    """Set this thread's nice (Linux: per thread) to ``nice`` above the process's. Once
    lowered it is never raised again (that needs CAP_SYS_NICE): these threads only generate."""
    if nice:
        with contextlib.suppress(OSError, AttributeError):
            base = os.getpriority(os.PRIO_PROCESS, os.getpid())
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), min(base + nice, 19))


def _queue_full(model: str, handle: Handle) -> EdgedError:
    return EdgedError(
        f"model {model!r} has {handle.inflight} requests in flight, its queue is full "
        "(server.max_queue_per_model): retry later",
        ErrorCode.RESOURCE_EXHAUSTED,
    )


def token_confidence(logprobs: Sequence[float]) -> float | None:
    """A generation's confidence: the geometric mean probability of its tokens."""
    if not logprobs:
        return None
    return float(math.exp(sum(logprobs) / len(logprobs)))


def _nbytes(inputs: Mapping[str, Array]) -> int:
    total = 0
    for array in inputs.values():
        total += array.nbytes
    return total


def _text_array(text: str) -> Array:
    import numpy as np

    return np.array([text.encode()], dtype=object)
