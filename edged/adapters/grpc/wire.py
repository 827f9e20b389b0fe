"""ModelInfer on the wire: a fast path for requests that differ from a known one only in tensor
bytes, and responses serialized without building a message.

Why: a tiny model's request spends more time in Python turning protobuf objects into arrays
and back (decode, parameters, requested outputs, response message) than the model takes to run,
and on a loaded 2-core box every step runs several times slower than in a warm loop
(docs/performance.md). Clients send the same request shape again and again, so edged remembers,
per model, the serialized bytes of a request it has parsed and served (everything before the
tensor contents) and where each tensor's bytes sit. A later request whose bytes are identical
except inside those tensor regions *is* that request with other tensor values — by the protobuf
encoding, not by assumption — so its tensors become numpy views of the request bytes without
parsing anything. Everything else (a new shape, a request id, BYTES tensors, non-canonical field
order) takes the full path, which stays the reference: tests/test_wire.py checks that both paths
agree on random requests and that no mutated request is misread.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
from google.protobuf.message import DecodeError

from edged.adapters.grpc.convert import datatype_of, encode_output, response_head
from edged.api import inference_pb2 as pb
from edged.errors import InvalidInputError
from edged.tensors import Array, GenerationParams

# Field tags (field number << 3 | wire type 2) of ModelInferRequest / ModelInferResponse.
_REQUEST_NAME = 0x0A  # model_name = 1
_RAW_INPUT = b"\x3a"  # raw_input_contents = 7
_RESPONSE_ID = b"\x1a"  # id = 3
_OUTPUT = b"\x2a"  # outputs = 5
_RAW_OUTPUT = b"\x32"  # raw_output_contents = 6
# Request shapes remembered per model: a client rarely sends more than a few.
TEMPLATES_PER_MODEL = 4


def varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def parse_request(body: bytes) -> pb.ModelInferRequest:
    try:
        return pb.ModelInferRequest.FromString(body)
    except DecodeError as e:
        raise InvalidInputError(f"the request is not a valid ModelInferRequest: {e}") from None


class RequestTemplate:
    """One request, as bytes: the fields before the tensors, then each tensor's header and size."""

    __slots__ = ("headers", "model", "params", "prefix", "requested", "size", "tensors", "version")

    def __init__(
        self,
        request: pb.ModelInferRequest,
        prefix: bytes,
        size: int,
        headers: tuple[tuple[int, bytes], ...],
        tensors: tuple[tuple[str, np.dtype[Any], tuple[int, ...], int], ...],
        requested: list[str],
        params: GenerationParams,
    ) -> None:
        self.model = request.model_name
        self.version = request.model_version
        self.prefix = prefix
        self.size = size
        self.headers = headers  # (offset, tag + length) of each raw_input_contents entry
        self.tensors = tensors  # (name, dtype, shape, offset of its bytes)
        self.requested = requested
        self.params = params


class RequestTemplates:
    """Known request layouts per model name. Used on the event loop only (no locks)."""

    def __init__(self) -> None:
        self._by_name: dict[bytes, list[RequestTemplate]] = {}

    def match(self, body: bytes) -> tuple[RequestTemplate, dict[str, Array]] | None:
        """The template ``body`` is an instance of, and its tensors as read-only views of
        ``body``; None when no template fits exactly (then parse the request in full)."""
        if len(body) < 2 or body[0] != _REQUEST_NAME or body[1] > 0x7F:
            return None
        templates = self._by_name.get(body[2 : 2 + body[1]])
        if templates is None:
            return None
        size = len(body)
        for template in templates:
            if size != template.size or not body.startswith(template.prefix):
                continue
            for offset, header in template.headers:
                if not body.startswith(header, offset):
                    break
            else:
                return template, {
                    name: np.ndarray(shape, dtype, buffer=body, offset=offset)
                    for name, dtype, shape, offset in template.tensors
                }
        return None

    def learn(
        self,
        body: bytes,
        request: pb.ModelInferRequest,
        inputs: dict[str, Array],
        requested: list[str],
        params: GenerationParams,
    ) -> None:
        """Remember the layout of a request that was parsed in full and served, if it has one
        that can be matched byte for byte."""
        template = _template(body, request, inputs, requested, params)
        if template is None:
            return
        key = request.model_name.encode()
        templates = self._by_name.setdefault(key, [])
        templates.insert(0, template)
        del templates[TEMPLATES_PER_MODEL:]


def _template(
    body: bytes,
    request: pb.ModelInferRequest,
    inputs: dict[str, Array],
    requested: list[str],
    params: GenerationParams,
) -> RequestTemplate | None:
    # A request id is usually unique per request: a layout holding one would never match again.
    if request.id or not request.raw_input_contents:
        return None
    name = request.model_name.encode()
    if not 0 < len(name) <= 0x7F or not body.startswith(bytes((_REQUEST_NAME, len(name))) + name):
        return None
    if any(array.dtype == object for array in inputs.values()):
        return None  # BYTES tensors vary in length with their contents
    raw = request.raw_input_contents
    headers = [_RAW_INPUT + varint(len(data)) for data in raw]
    offset = len(body) - sum(len(h) + len(d) for h, d in zip(headers, raw, strict=True))
    prefix = body[:offset]
    # The tensors must be the last fields, in order, each as one entry: check the bytes.
    layout: list[tuple[int, bytes]] = []
    starts = []
    view = memoryview(body)  # compared in place: a tensor may be large
    for header, data in zip(headers, raw, strict=True):
        if not body.startswith(header, offset):
            return None
        layout.append((offset, header))
        offset += len(header)
        if view[offset : offset + len(data)] != data:
            return None
        starts.append(offset)
        offset += len(data)
    # ... and the bytes before them must be the rest of the request, whole fields only.
    try:
        head = pb.ModelInferRequest.FromString(prefix)
    except DecodeError:
        return None
    if (
        head.raw_input_contents
        or head.model_name != request.model_name
        or head.model_version != request.model_version
        or head.parameters != request.parameters
        or head.inputs != request.inputs
        or head.outputs != request.outputs
    ):
        return None
    tensors = tuple(
        (tensor.name, inputs[tensor.name].dtype, inputs[tensor.name].shape, start)
        for tensor, start in zip(request.inputs, starts, strict=True)
    )
    return RequestTemplate(
        request, prefix, len(body), tuple(layout), tensors, list(requested), params
    )


def infer_response(
    model: str,
    version: str,
    variant: str,
    request_id: str,
    outputs: list[tuple[str, Array]],
    cold: bool,
    escalated: bool | None = None,
    in_shared_memory: frozenset[str] = frozenset(),
) -> bytes:
    """A serialized ModelInferResponse, equal to what building the message would give. Outputs
    written to shared memory get an empty raw entry, as Triton gives them (clients index raw
    contents by output position)."""
    parts = [_head(model, version, variant, cold, escalated)]
    if request_id:
        data = request_id.encode()
        parts += (_RESPONSE_ID, varint(len(data)), data)
    payloads: list[Any] = []
    for name, array in outputs:
        if name in in_shared_memory:
            parts.append(_output(name, datatype_of(array), array.shape))
            payloads += (_RAW_OUTPUT, b"\x00")
            continue
        # Joined straight from the array's memory: the one copy is into the reply.
        datatype, payload, size = encode_output(array)
        parts.append(_output(name, datatype, array.shape))
        payloads += (_RAW_OUTPUT, varint(size), payload)
    return b"".join(parts + payloads)


@functools.lru_cache(maxsize=1024)
def _head(model: str, version: str, variant: str, cold: bool, escalated: bool | None) -> bytes:
    return response_head(model, version, variant, cold, escalated).SerializeToString()


@functools.lru_cache(maxsize=1024)
def _output(name: str, datatype: str, shape: tuple[int, ...]) -> bytes:
    tensor = pb.ModelInferResponse.InferOutputTensor(name=name, datatype=datatype, shape=shape)
    data = tensor.SerializeToString()
    return _OUTPUT + varint(len(data)) + data
