"""inference.GRPCInferenceService: the KServe v2 protocol plus Triton's extensions. Thin."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc

import edged
from edged.api import inference_pb2 as pb
from edged.api import inference_pb2_grpc as pb_grpc
from edged.dataplane import DataPlane
from edged.errors import EdgedError, ErrorCode, NotFoundError
from edged.grpc import convert, wire
from edged.grpc.status import abort, mapped_errors
from edged.metrics import Metrics
from edged.portfolio.portfolio import Portfolio
from edged.runtime.base import Array, GenerationParams, TensorSpec
from edged.runtime.probe import ProbeResult
from edged.store.store import version_key

log = logging.getLogger(__name__)

Context = grpc.aio.ServicerContext[Any, Any]
EXTENSIONS = ["model_repository", "statistics", "binary_tensor_data", "edged_generate"]
FINAL = "triton_final_response"


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, portfolio: Portfolio, metrics: Metrics, ready: list[bool]) -> None:
        self.portfolio = portfolio
        self.dataplane = DataPlane(portfolio)
        self.metrics = metrics
        self._ready = ready
        self._templates = wire.RequestTemplates()

    # -- health -----------------------------------------------------------------------------

    async def ServerLive(self, request: pb.ServerLiveRequest, context: Context) -> Any:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: pb.ServerReadyRequest, context: Context) -> Any:
        return pb.ServerReadyResponse(ready=self._ready[0])

    async def ModelReady(self, request: pb.ModelReadyRequest, context: Context) -> Any:
        slot = self.portfolio.slots.get(request.name)
        ready = bool(
            slot is not None
            and slot.ready
            and slot.handle is not None
            and request.version in ("", slot.handle.version)
        )
        return pb.ModelReadyResponse(ready=ready)

    async def ServerMetadata(self, request: pb.ServerMetadataRequest, context: Context) -> Any:
        return pb.ServerMetadataResponse(
            name="edged", version=edged.__version__, extensions=EXTENSIONS
        )

    # -- metadata ----------------------------------------------------------------------------

    @mapped_errors
    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: Context) -> Any:
        slot = self.portfolio.slot(request.name)
        assert slot.manifest is not None
        if request.version and request.version != slot.manifest.version:
            raise NotFoundError(
                f"model {request.name!r} version {request.version!r} is not served "
                f"(the active version is {slot.manifest.version!r})"
            )
        if slot.handle is not None and slot.handle.version == slot.manifest.version:
            runtime = slot.handle.runtime
            platform, inputs, outputs = runtime.platform, runtime.inputs, runtime.outputs
        else:
            result = await self._signature(slot.manifest.variants)
            platform = result.platform
            inputs = tuple(TensorSpec.from_json(s) for s in result.inputs)
            outputs = tuple(TensorSpec.from_json(s) for s in result.outputs)
        versions = sorted(self.portfolio.store.versions(request.name), key=version_key)
        return pb.ModelMetadataResponse(
            name=request.name,
            versions=versions,
            platform=platform,
            inputs=[_tensor_metadata(s) for s in inputs],
            outputs=[_tensor_metadata(s) for s in outputs],
        )

    async def _signature(self, variants: Any) -> ProbeResult:
        reasons = []
        for variant in variants:
            result = await self.portfolio.validate(variant)
            if result.usable:
                return result
            reasons.append(f"{variant.id}: {result.reason}")
        raise EdgedError("no usable variant: " + "; ".join(reasons), ErrorCode.FAILED_PRECONDITION)

    # -- inference ---------------------------------------------------------------------------

    async def ModelInfer(self, body: bytes, context: Context) -> bytes:
        """The hot path, bytes in and bytes out (registered without protobuf (de)serializers,
        see wire.py). Errors are mapped here rather than by @mapped_errors: one coroutine less."""
        start = time.perf_counter_ns()
        model = ""
        ok = False
        try:
            known = self._templates.match(body)
            if known is not None:
                template, inputs = known
                model = template.model
                handle, outputs, cold = await self.dataplane.infer(
                    model, template.version, inputs, template.requested, template.params, template
                )
                request_id = ""  # templates hold no request id
            else:
                request = wire.parse_request(body)
                model, request_id = request.model_name, request.id
                inputs = convert.decode_inputs(request)
                params, _ = convert.generation_params(request.parameters)
                requested = convert.requested_outputs(request)
                handle, outputs, cold = await self.dataplane.infer(
                    model, request.model_version, inputs, requested, params
                )
                # Learned only once served: the model exists and the request was valid.
                self._templates.learn(body, request, inputs, requested, params)
            reply = wire.infer_response(
                model, handle.version, handle.variant.id, request_id, outputs, cold
            )
            ok = True
            return reply
        except Exception as exc:
            await abort(context, exc, "ModelInfer")
        finally:
            self._observe(model, ok, start)

    async def _infer(
        self, request: pb.ModelInferRequest, inputs: dict[str, Array], params: GenerationParams
    ) -> pb.ModelInferResponse:
        """One whole (non-streaming) inference, as a KServe v2 response."""
        handle, outputs, cold = await self.dataplane.infer(
            request.model_name,
            request.model_version,
            inputs,
            convert.requested_outputs(request),
            params,
        )
        return convert.infer_response(request, handle.version, handle.variant.id, outputs, cold)

    def _observe(self, model: str, ok: bool, start_ns: int) -> None:
        slot = self.portfolio.slots.get(model)
        if slot is None:  # unknown names must not grow the label set
            return
        elapsed = time.perf_counter_ns() - start_ns
        slot.stats.record(ok, elapsed)
        self.metrics.for_model(model).record(ok, elapsed / 1e9)

    async def ModelStreamInfer(
        self, request_iterator: AsyncIterator[pb.ModelInferRequest], context: Context
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        async for request in request_iterator:
            start = time.perf_counter_ns()
            ok = False
            try:
                async for response in self._stream_one(request):
                    yield response
                ok = True
            except EdgedError as exc:
                # Triton's convention: a failed request in a stream is reported in-band and the
                # stream stays open for the next request.
                yield pb.ModelStreamInferResponse(
                    error_message=exc.message,
                    infer_response=pb.ModelInferResponse(
                        model_name=request.model_name, id=request.id
                    ),
                )
            finally:
                self._observe(request.model_name, ok, start)

    async def _stream_one(
        self, request: pb.ModelInferRequest
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        inputs = convert.decode_inputs(request)
        params, stream = convert.generation_params(request.parameters)
        empty_final = (
            bool(convert.parameter_value(request.parameters["triton_enable_empty_final_response"]))
            if "triton_enable_empty_final_response" in request.parameters
            else False
        )
        generative = False
        if stream:
            slot = self.portfolio.slot(request.model_name)
            generative = (await self.portfolio.ensure_ready(slot)).runtime.generative
        if not generative:
            yield _stream_response(await self._infer(request, inputs, params), final=True)
            return
        handle, chunks = await self.dataplane.generate(
            request.model_name, request.model_version, inputs, params
        )
        output = handle.runtime.outputs[0].name

        def text(chunk: str, final: bool) -> Any:
            response = convert.text_response(
                request, handle.version, handle.variant.id, chunk, output
            )
            return _stream_response(response, final)

        pending: str | None = None
        # Hold one chunk back so the last one can carry the final flag.
        async for chunk in chunks:
            if pending is not None:
                yield text(pending, final=False)
            pending = chunk
        if not empty_final:
            yield text(pending or "", final=True)
            return
        if pending is not None:
            yield text(pending, final=False)
        empty = pb.ModelInferResponse(
            model_name=request.model_name, model_version=handle.version, id=request.id
        )
        empty.parameters["edged_variant"].string_param = handle.variant.id
        yield _stream_response(empty, final=True)

    # -- statistics and repository -----------------------------------------------------------

    @mapped_errors
    async def ModelStatistics(self, request: pb.ModelStatisticsRequest, context: Context) -> Any:
        names = [request.name] if request.name else sorted(self.portfolio.slots)
        response = pb.ModelStatisticsResponse()
        for name in names:
            slot = self.portfolio.slot(name)
            assert slot.manifest is not None
            s = slot.stats
            entry = response.model_stats.add(
                name=name,
                version=slot.handle.version if slot.handle else slot.manifest.version,
                last_inference=s.last_inference_ms,
                inference_count=s.success_count,
                execution_count=s.success_count,
            )
            entry.inference_stats.success.count = s.success_count
            entry.inference_stats.success.ns = s.success_ns
            entry.inference_stats.fail.count = s.fail_count
            entry.inference_stats.fail.ns = s.fail_ns
            if slot.handle is not None:
                entry.memory_usage.add(
                    type="CPU", id=0, byte_size=slot.handle.load_stats.memory_bytes
                )
        return response

    @mapped_errors
    async def RepositoryIndex(self, request: pb.RepositoryIndexRequest, context: Context) -> Any:
        self.portfolio.refresh()
        response = pb.RepositoryIndexResponse()
        for name, slot in sorted(self.portfolio.slots.items()):
            if slot.manifest is None or (request.ready and not slot.ready):
                continue
            state = slot.state.index_state
            response.models.add(
                name=name, version=slot.manifest.version, state=state, reason=slot.reason
            )
        return response

    @mapped_errors
    async def RepositoryModelLoad(
        self, request: pb.RepositoryModelLoadRequest, context: Context
    ) -> Any:
        await self.portfolio.load(request.model_name)
        return pb.RepositoryModelLoadResponse()

    @mapped_errors
    async def RepositoryModelUnload(
        self, request: pb.RepositoryModelUnloadRequest, context: Context
    ) -> Any:
        await self.portfolio.unload(request.model_name)
        return pb.RepositoryModelUnloadResponse()


def _tensor_metadata(spec: TensorSpec) -> pb.ModelMetadataResponse.TensorMetadata:
    return pb.ModelMetadataResponse.TensorMetadata(
        name=spec.name, datatype=spec.datatype, shape=list(spec.shape)
    )


def _stream_response(response: pb.ModelInferResponse, final: bool) -> Any:
    response.parameters[FINAL].bool_param = final
    return pb.ModelStreamInferResponse(infer_response=response)
