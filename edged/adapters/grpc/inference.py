"""inference.GRPCInferenceService: the KServe v2 protocol plus Triton's extensions. Thin."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc

import edged
from edged.adapters.grpc import convert, screen, shared_memory, wire
from edged.adapters.grpc.access import Access
from edged.adapters.grpc.status import abort, bounded, mapped_errors
from edged.api import inference_pb2 as pb
from edged.api import inference_pb2_grpc as pb_grpc
from edged.errors import EdgedError, InvalidInputError, UnavailableError
from edged.serving import Serving
from edged.tensors import TensorSpec

log = logging.getLogger(__name__)

Context = grpc.aio.ServicerContext[Any, Any]
EXTENSIONS = [
    "model_repository",
    "statistics",
    "binary_tensor_data",
    "system_shared_memory",
    "edged_generate",
]
# Requests and shared-memory tensors larger than this are parsed and copied in a worker
# thread, not on the event loop.
INLINE_COPY_BYTES = 1 << 20
# After a request this large, freed heap pages are handed back to the OS (serving/inference.py).
TRIM_AFTER_BYTES = 4 << 20
NO_CUDA = (
    "CUDA shared memory is not available: edged runs its models on the CPU; pass tensors in "
    "system shared memory (tritonclient.utils.shared_memory) or in the request"
)
FINAL = "triton_final_response"


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, serving: Serving, access: Access) -> None:
        self.access = access
        self.inference = serving.inference
        self.repository = serving.repository
        self.operations = serving.operations
        self._templates = wire.RequestTemplates()
        self.regions = shared_memory.SystemRegions()

    # -- health -----------------------------------------------------------------------------

    async def ServerLive(self, request: pb.ServerLiveRequest, context: Context) -> Any:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: pb.ServerReadyRequest, context: Context) -> Any:
        return pb.ServerReadyResponse(ready=self.repository.server_ready())

    async def ModelReady(self, request: pb.ModelReadyRequest, context: Context) -> Any:
        ready = self.repository.model_ready(request.name, request.version)
        return pb.ModelReadyResponse(ready=ready)

    async def ServerMetadata(self, request: pb.ServerMetadataRequest, context: Context) -> Any:
        return pb.ServerMetadataResponse(
            name="edged", version=edged.__version__, extensions=EXTENSIONS
        )

    # -- metadata ----------------------------------------------------------------------------

    @mapped_errors
    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: Context) -> Any:
        meta = await self.repository.metadata(request.name, request.version)
        return pb.ModelMetadataResponse(
            name=meta.name,
            versions=list(meta.versions),
            platform=meta.platform,
            inputs=[_tensor_metadata(s) for s in meta.inputs],
            outputs=[_tensor_metadata(s) for s in meta.outputs],
        )

    # -- inference ---------------------------------------------------------------------------

    async def ModelInfer(self, body: bytes, context: Context) -> bytes:
        """The hot path, bytes in and bytes out (registered without protobuf (de)serializers,
        see wire.py). Errors are mapped here rather than by @mapped_errors: one coroutine less."""
        start = time.perf_counter_ns()
        model = version = ""
        ok = False
        admitted = 0
        try:
            if len(body) >= INLINE_COPY_BYTES:  # a large request's bytes are accounted for
                self.inference.admit_bytes(len(body))
                admitted = len(body)
            known = self._templates.match(body)
            if known is not None:
                template, inputs = known
                model = template.model
                served = await self.inference.infer(
                    model, template.version, inputs, template.requested, template.params, template
                )
                request_id = ""  # templates hold no request id
            else:
                # A large body is parsed and split into tensors on a worker thread: the event
                # loop never runs work that grows with a request's size.
                size = len(body)
                request = await _off_loop_if_large(size, self._parse, body)
                model, request_id = request.model_name, request.id
                if shared_memory.uses_shared_memory(request):
                    reply, version = await self._infer_shared(request, context)
                    ok = True
                    return reply
                inputs = await _off_loop_if_large(size, convert.decode_inputs, request)
                params, _ = convert.generation_params(request.parameters)
                requested = convert.requested_outputs(request)
                served = await self.inference.infer(
                    model, request.model_version, inputs, requested, params, None, request_id
                )
                # Learned only once served: the model exists and the request was valid.
                self._templates.learn(body, request, inputs, requested, params)
            version = served.version
            reply = wire.infer_response(
                model,
                version,
                served.variant,
                request_id,
                served.outputs,
                served.cold,
                served.escalated,
            )
            ok = True
            return reply
        except Exception as exc:
            if isinstance(exc, screen.ScreenedOutError):
                model = exc.model  # counted in the model's statistics, as a parsed refusal is
            # The abort's traceback keeps this frame: let it not keep the parsed request and
            # its tensors too (grpc holds the abort with the call; a burst of large refused
            # requests grew the daemon by hundreds of MB).
            large = len(body) >= TRIM_AFTER_BYTES
            known = request = inputs = body = None  # type: ignore[assignment]
            if large:
                self.inference.after_large_request()
            await abort(context, exc, "ModelInfer")
        finally:
            self.inference.observe(model, ok, start, version)
            if admitted:
                self.inference.release_bytes(admitted)
            if body is not None and len(body) >= TRIM_AFTER_BYTES:
                self.inference.after_large_request()

    def _parse(self, body: bytes) -> pb.ModelInferRequest:
        if len(body) >= screen.SCREEN_BYTES:
            screen.screen(body, self.inference.signature)
        return wire.parse_request(body)

    async def _infer_shared(
        self, request: pb.ModelInferRequest, context: Context
    ) -> tuple[bytes, str]:
        """A request with tensors in shared-memory regions (never learned as a template: its
        bytes do not hold its tensors)."""
        regions = shared_memory.RequestRegions(self.regions, context.peer())
        try:
            inputs = await self._shared_inputs(request, regions)
            params, _ = convert.generation_params(request.parameters)
            served = await self.inference.infer(
                request.model_name,
                request.model_version,
                inputs,
                convert.requested_outputs(request),
                params,
                None,
                request.id,
            )
            written = await _off_loop_if_large(
                regions.output_bytes(), regions.write_outputs, served.outputs
            )
            reply = wire.infer_response(
                request.model_name,
                served.version,
                served.variant,
                request.id,
                served.outputs,
                served.cold,
                served.escalated,
                written,
            )
            return reply, served.version
        finally:
            regions.close()

    async def _shared_inputs(
        self, request: pb.ModelInferRequest, regions: shared_memory.RequestRegions
    ) -> dict[str, Any]:
        regions.claim_outputs(request)
        inputs: dict[str, Any] = await _off_loop_if_large(
            regions.input_bytes(request), convert.decode_inputs, request, regions.input
        )
        return inputs

    async def ModelStreamInfer(
        self, bodies: AsyncIterator[bytes], context: Context
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        """Requests arrive as bytes (registered without a request deserializer): a large one is
        screened and parsed on a worker thread, as in ModelInfer, and one that is not a request
        at all is answered in-band like any other failure."""
        async for body in bodies:
            start = time.perf_counter_ns()
            ok = False
            model = request_id = ""
            size = len(body)
            admitted = 0
            try:
                if size >= INLINE_COPY_BYTES:
                    self.inference.admit_bytes(size)
                    admitted = size
                request = await _off_loop_if_large(size, self._parse, body)
                model, request_id = request.model_name, request.id
                async for response in self._stream_one(request, size, context):
                    yield response
                ok = True
            except Exception as exc:
                if isinstance(exc, screen.ScreenedOutError):
                    model = exc.model
                # Triton's convention: a failed request in a stream is reported in-band and the
                # stream stays open for the next request, whatever failed.
                if not isinstance(exc, EdgedError):
                    log.error("unexpected error in ModelStreamInfer", exc_info=exc)
                message = (
                    exc.message
                    if isinstance(exc, EdgedError)
                    else "internal error; see the daemon's log"
                )
                yield pb.ModelStreamInferResponse(
                    error_message=bounded(message),
                    infer_response=pb.ModelInferResponse(model_name=model, id=request_id),
                )
            finally:
                self.inference.observe(model, ok, start)
                if admitted:
                    self.inference.release_bytes(admitted)
                if size >= TRIM_AFTER_BYTES:
                    self.inference.after_large_request()

    async def _stream_one(
        self, request: pb.ModelInferRequest, size: int, context: Context
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        if shared_memory.uses_shared_memory(request):
            yield await self._stream_shared(request, context)
            return
        inputs = await _off_loop_if_large(size, convert.decode_inputs, request)
        params, stream = convert.generation_params(request.parameters)
        empty_final = (
            bool(convert.parameter_value(request.parameters["triton_enable_empty_final_response"]))
            if "triton_enable_empty_final_response" in request.parameters
            else False
        )
        opened = await self.inference.stream(
            request.model_name,
            request.model_version,
            inputs,
            convert.requested_outputs(request),
            params,
            stream,
        )
        if opened.chunks is None:
            assert opened.outputs is not None
            response = convert.infer_response(
                request, opened.version, opened.variant, opened.outputs, opened.cold
            )
            yield _stream_response(response, final=True)
            return

        def text(chunk: str, final: bool) -> Any:
            response = convert.text_response(
                request, opened.version, opened.variant, chunk, opened.output
            )
            return _stream_response(response, final)

        pending: str | None = None
        # Each chunk goes out as soon as it is made (time to first token is a token's time,
        # not two), except the one that may be the last by length, held back so that it can
        # carry the final flag. A generation that ends otherwise (end of sequence) ends with an
        # empty-text final response, as Triton's vLLM backend ends its streams.
        sent = 0
        async for chunk in opened.chunks:
            if pending is not None:
                yield text(pending, final=False)
                pending = None
            if sent + 1 < params.max_tokens:
                yield text(chunk, final=False)
                sent += 1
            else:
                pending = chunk
        if not empty_final:
            yield text(pending or "", final=True)
            return
        if pending is not None:
            yield text(pending, final=False)
        empty = pb.ModelInferResponse(
            model_name=request.model_name, model_version=opened.version, id=request.id
        )
        empty.parameters["edged_variant"].string_param = opened.variant
        yield _stream_response(empty, final=True)

    async def _stream_shared(
        self, request: pb.ModelInferRequest, context: Context
    ) -> pb.ModelStreamInferResponse:
        """One request of a stream with tensors in shared memory: answered in one response
        (text generation streams its chunks in the messages, not in a region)."""
        if convert.generation_params(request.parameters)[1]:
            raise InvalidInputError(
                "a streamed generation ('stream': true) sends its text in the responses; "
                "shared-memory tensors are for requests answered once"
            )
        reply, _ = await self._infer_shared(request, context)
        response = pb.ModelInferResponse.FromString(reply)
        streamed: pb.ModelStreamInferResponse = _stream_response(response, final=True)
        return streamed

    # -- system shared memory ----------------------------------------------------------------

    @mapped_errors
    async def SystemSharedMemoryRegister(
        self, request: pb.SystemSharedMemoryRegisterRequest, context: Context
    ) -> Any:
        self.regions.register(
            context.peer(), request.name, request.key, request.offset, request.byte_size
        )
        return pb.SystemSharedMemoryRegisterResponse()

    @mapped_errors
    async def SystemSharedMemoryUnregister(
        self, request: pb.SystemSharedMemoryUnregisterRequest, context: Context
    ) -> Any:
        self.regions.unregister(context.peer(), request.name)
        return pb.SystemSharedMemoryUnregisterResponse()

    @mapped_errors
    async def SystemSharedMemoryStatus(
        self, request: pb.SystemSharedMemoryStatusRequest, context: Context
    ) -> Any:
        response = pb.SystemSharedMemoryStatusResponse()
        for region in self.regions.status(context.peer(), request.name):
            entry = response.regions[region.name]
            entry.name, entry.key = region.name, region.key
            entry.offset, entry.byte_size = region.offset, region.byte_size
        return response

    @mapped_errors
    async def CudaSharedMemoryRegister(
        self, request: pb.CudaSharedMemoryRegisterRequest, context: Context
    ) -> Any:
        raise UnavailableError(NO_CUDA)

    @mapped_errors
    async def CudaSharedMemoryUnregister(
        self, request: pb.CudaSharedMemoryUnregisterRequest, context: Context
    ) -> Any:
        raise UnavailableError(NO_CUDA)

    @mapped_errors
    async def CudaSharedMemoryStatus(
        self, request: pb.CudaSharedMemoryStatusRequest, context: Context
    ) -> Any:
        raise UnavailableError(NO_CUDA)

    # -- statistics and repository -----------------------------------------------------------

    @mapped_errors
    async def ModelStatistics(self, request: pb.ModelStatisticsRequest, context: Context) -> Any:
        response = pb.ModelStatisticsResponse()
        for s in self.repository.statistics(request.name):
            entry = response.model_stats.add(
                name=s.name,
                version=s.version,
                last_inference=s.last_inference_ms,
                inference_count=s.success_count,
                execution_count=s.success_count,
            )
            entry.inference_stats.success.count = s.success_count
            entry.inference_stats.success.ns = s.success_ns
            entry.inference_stats.fail.count = s.fail_count
            entry.inference_stats.fail.ns = s.fail_ns
            if s.memory_bytes:
                entry.memory_usage.add(type="CPU", id=0, byte_size=s.memory_bytes)
        return response

    @mapped_errors
    async def RepositoryIndex(self, request: pb.RepositoryIndexRequest, context: Context) -> Any:
        response = pb.RepositoryIndexResponse()
        for entry in self.repository.index(ready_only=request.ready):
            response.models.add(
                name=entry.name, version=entry.version, state=entry.state, reason=entry.reason
            )
        return response

    @mapped_errors
    async def RepositoryModelLoad(
        self, request: pb.RepositoryModelLoadRequest, context: Context
    ) -> Any:
        self.access.require(context, "operate", "RepositoryModelLoad")
        await self.operations.repository_load(request.model_name)
        return pb.RepositoryModelLoadResponse()

    @mapped_errors
    async def RepositoryModelUnload(
        self, request: pb.RepositoryModelUnloadRequest, context: Context
    ) -> Any:
        self.access.require(context, "operate", "RepositoryModelUnload")
        await self.operations.evict(request.model_name)
        return pb.RepositoryModelUnloadResponse()


async def _off_loop_if_large(size: int, fn: Any, *args: Any) -> Any:
    """fn(*args) here when it copies little, in a worker thread when it copies more: the event
    loop never runs work that grows with a request's size."""
    if size > INLINE_COPY_BYTES:
        return await asyncio.to_thread(fn, *args)
    return fn(*args)


def _tensor_metadata(spec: TensorSpec) -> pb.ModelMetadataResponse.TensorMetadata:
    return pb.ModelMetadataResponse.TensorMetadata(
        name=spec.name, datatype=spec.datatype, shape=list(spec.shape)
    )


def _stream_response(response: pb.ModelInferResponse, final: bool) -> Any:
    response.parameters[FINAL].bool_param = final
    return pb.ModelStreamInferResponse(infer_response=response)
