"""All protobuf <-> domain conversion: tensors, parameters, responses.

Raw tensor bytes become numpy arrays without a copy (np.frombuffer over the request's bytes);
outputs are serialized once into raw_output_contents, which tritonclient reads.
"""

from __future__ import annotations

import functools
import math
import struct
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np

from edged.api import inference_pb2 as pb
from edged.errors import InvalidInputError
from edged.tensors import (
    DATATYPE_TO_NUMPY,
    NUMPY_TO_DATATYPE,
    Array,
    GenerationParams,
    short_shape,
)

_CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
MAX_TOKENS_LIMIT = 8192
# numpy's limit, and a bound on what any request can carry: a shape past either is refused
# with a message, not left to fail inside numpy or the runtime.
MAX_DIMS = 64
MAX_ELEMENTS = 1 << 40
# BYTES tensors are split into their elements in Python: their count is bounded so that the
# work a request can cause is too (a 57 MiB tensor of 15M empty strings took seconds).
MAX_BYTES_ELEMENTS = 1 << 20
_LEN = struct.Struct("<I")
# numpy dtypes resolved once: the request path must not build them per tensor.
_DTYPES: dict[str, np.dtype[Any]] = {name: np.dtype(t) for name, t in DATATYPE_TO_NUMPY.items()}


def deserialize_bytes(data: bytes, count: int, name: str) -> Array:
    """BYTES elements: each a 4-byte little-endian length, then that many bytes."""
    items: list[bytes] = []
    offset, end = 0, len(data)
    while offset < end:
        if offset + 4 > end:
            raise InvalidInputError(f"input tensor {name!r}: truncated BYTES length prefix")
        (length,) = _LEN.unpack_from(data, offset)
        offset += 4
        if offset + length > end:
            raise InvalidInputError(f"input tensor {name!r}: BYTES element overruns the buffer")
        items.append(data[offset : offset + length])
        offset += length
    if len(items) != count:
        raise InvalidInputError(
            f"input tensor {name!r}: shape holds {count} BYTES elements, got {len(items)}"
        )
    return np.array(items, dtype=object)


def serialize_bytes(array: Array) -> bytes:
    parts = []
    for item in array.reshape(-1):
        value = item if isinstance(item, bytes) else str(item).encode()
        parts.append(_LEN.pack(len(value)))
        parts.append(value)
    return b"".join(parts)


# Reads an input tensor held elsewhere (a shared-memory region): the array, or None when the
# tensor's data is in the request.
SharedInput = Callable[
    [pb.ModelInferRequest.InferInputTensor, np.dtype[Any], tuple[int, ...], int], "Array | None"
]


def decode_inputs(
    request: pb.ModelInferRequest, shared: SharedInput | None = None
) -> dict[str, Array]:
    raw = request.raw_input_contents
    if raw and shared is None and len(raw) != len(request.inputs):
        raise InvalidInputError(
            f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} input tensors"
        )
    arrays: dict[str, Array] = {}
    raw_index = 0
    for tensor in request.inputs:
        name = tensor.name
        if name in arrays:
            raise InvalidInputError(f"input tensor {name!r} appears twice")
        dtype = dtype_of(name, tensor.datatype)
        shape = tuple(tensor.shape)
        count = check_shape(name, shape, tensor.datatype)
        if shared is not None:
            array = shared(tensor, dtype, shape, count)
            if array is not None:
                arrays[name] = array
                continue
        if raw:
            # Triton's rule: raw entries belong, in order, to the tensors not in shared memory.
            if raw_index >= len(raw):
                raise InvalidInputError(
                    f"input tensor {name!r}: raw_input_contents has no entry for it"
                )
            if tensor.HasField("contents") and tensor.contents.ListFields():
                raise InvalidInputError(
                    f"input tensor {name!r}: data in both contents and raw_input_contents "
                    "(a request sends its tensors one way or the other)"
                )
            arrays[name] = _from_raw(raw[raw_index], tensor.datatype, dtype, shape, count, name)
            raw_index += 1
        else:
            arrays[name] = _from_contents(tensor, dtype, shape, count)
    if raw_index != len(raw):
        raise InvalidInputError(
            f"raw_input_contents has {len(raw)} entries for {raw_index} input tensors sent "
            "in the request"
        )
    return arrays


def dtype_of(name: str, datatype: str) -> np.dtype[Any]:
    """The numpy dtype of a tensor's declared datatype, or InvalidInputError naming both."""
    dtype = _DTYPES.get(datatype)
    if dtype is None:
        raise InvalidInputError(
            f"input tensor {name!r}: unknown datatype {datatype!r} "
            f"(expected one of {', '.join(DATATYPE_TO_NUMPY)})"
        )
    return dtype


def contents_field(name: str, datatype: str) -> str:
    """The InferTensorContents field that carries ``datatype``, or InvalidInputError."""
    field = _CONTENTS_FIELD.get(datatype)
    if field is None:
        raise InvalidInputError(
            f"input tensor {name!r}: {datatype} data must be sent in raw_input_contents"
        )
    return field


def wrong_contents(name: str, datatype: str, sent: str) -> InvalidInputError:
    return InvalidInputError(
        f"input tensor {name!r}: {datatype} data goes in contents.{_CONTENTS_FIELD[datatype]} "
        f"(or raw_input_contents), the request has contents.{sent}"
    )


def check_shape(name: str, shape: tuple[int, ...], datatype: str) -> int:
    """The element count of a tensor's declared shape, or InvalidInputError naming the tensor."""
    if len(shape) > MAX_DIMS:
        raise InvalidInputError(
            f"input tensor {name!r}: {len(shape)} dimensions, at most {MAX_DIMS} are accepted"
        )
    if shape and min(shape) < 0:
        raise InvalidInputError(
            f"input tensor {name!r}: negative dimension in {short_shape(shape)}"
        )
    if any(d > MAX_ELEMENTS for d in shape) or math.prod(d for d in shape if d) > MAX_ELEMENTS:
        raise InvalidInputError(
            f"input tensor {name!r}: shape {short_shape(shape)} is larger than any request can hold"
        )
    count = math.prod(shape)
    if datatype == "BYTES" and count > MAX_BYTES_ELEMENTS:
        raise InvalidInputError(
            f"input tensor {name!r}: {count} BYTES elements, at most {MAX_BYTES_ELEMENTS} are "
            "accepted per tensor"
        )
    return count


def _from_raw(
    data: bytes, datatype: str, dtype: np.dtype[Any], shape: tuple[int, ...], count: int, name: str
) -> Array:
    if datatype == "BYTES":
        return deserialize_bytes(data, count, name).reshape(shape)
    itemsize = dtype.itemsize
    if len(data) != count * itemsize:
        raise InvalidInputError(
            f"input tensor {name!r}: shape {list(shape)} of {datatype} holds {count} elements "
            f"({count * itemsize} bytes), got {len(data)} bytes"
        )
    # A read-only view of the request's bytes: no copy.
    return np.ndarray(shape, dtype, buffer=data)


def _from_contents(
    tensor: pb.ModelInferRequest.InferInputTensor, dtype: Any, shape: tuple[int, ...], count: int
) -> Array:
    field = contents_field(tensor.name, tensor.datatype)
    # Contents hold the datatype's field only (screen.py refuses others before parsing).
    for descriptor, _ in tensor.contents.ListFields():
        if descriptor.name != field:
            raise wrong_contents(tensor.name, tensor.datatype, descriptor.name)
    values = getattr(tensor.contents, field)
    if len(values) != count:
        raise InvalidInputError(
            f"input tensor {tensor.name!r}: shape {short_shape(shape)} holds {count} elements, "
            f"got {len(values)} in contents.{field}"
        )
    if tensor.datatype == "BYTES":
        return np.array(list(values), dtype=object).reshape(shape)
    return np.array(values, dtype=dtype).reshape(shape)


def parameter_value(param: pb.InferParameter) -> Any:
    kind = param.WhichOneof("parameter_choice")
    return getattr(param, kind) if kind else None


def generation_params(parameters: Mapping[str, pb.InferParameter]) -> tuple[GenerationParams, bool]:
    """(sampling settings, whether to stream) from request parameters, checked."""
    if not parameters:
        return _DEFAULT_PARAMS, False
    max_tokens, temperature, stream = GenerationParams.max_tokens, 0.0, False
    if "max_tokens" in parameters:
        value = parameter_value(parameters["max_tokens"])
        if (
            isinstance(value, bool)
            or not isinstance(value, int)
            or not (0 < value <= MAX_TOKENS_LIMIT)
        ):
            raise InvalidInputError(
                f"parameter 'max_tokens': expected an integer in 1..{MAX_TOKENS_LIMIT}, "
                f"got {value!r}"
            )
        max_tokens = value
    if "temperature" in parameters:
        # Some clients (tritonclient 2.41) cannot send doubles: accept "0.7" as well.
        value = parameter_value(parameters["temperature"])
        number = _number(value)
        if number is None or not 0.0 <= number <= 10.0:
            raise InvalidInputError(
                f"parameter 'temperature': expected a number in 0..10, got {value!r}"
            )
        temperature = number
    if "stream" in parameters:
        value = parameter_value(parameters["stream"])
        if not isinstance(value, bool):
            raise InvalidInputError(f"parameter 'stream': expected true or false, got {value!r}")
        stream = value
    return GenerationParams(max_tokens=max_tokens, temperature=temperature), stream


_DEFAULT_PARAMS = GenerationParams(max_tokens=GenerationParams.max_tokens, temperature=0.0)


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return None
        return number if math.isfinite(number) else None
    return None


def add_inputs(request: pb.ModelInferRequest, arrays: Mapping[str, Array]) -> None:
    """Put arrays into a request as raw input contents (the client side: CLI, trace replay)."""
    for name, array in arrays.items():
        datatype = "BYTES" if array.dtype == object else NUMPY_TO_DATATYPE[array.dtype]
        request.inputs.add(name=name, datatype=datatype, shape=array.shape)
        request.raw_input_contents.append(
            serialize_bytes(array) if datatype == "BYTES" else array.tobytes()
        )


def requested_outputs(request: pb.ModelInferRequest) -> list[str]:
    return [o.name for o in request.outputs]


def infer_response(
    request: pb.ModelInferRequest,
    version: str,
    variant: str,
    outputs: Iterable[tuple[str, Array]],
    cold: bool = False,
    escalated: bool | None = None,
) -> pb.ModelInferResponse:
    response = pb.ModelInferResponse()
    response.CopyFrom(response_head(request.model_name, version, variant, cold, escalated))
    response.id = request.id
    for name, array in outputs:
        datatype, payload, _ = encode_output(array)
        response.outputs.add(name=name, datatype=datatype, shape=array.shape)
        response.raw_output_contents.append(bytes(payload))
    return response


def datatype_of(array: Array) -> str:
    """The protocol's datatype of an output array (text and objects are BYTES)."""
    if array.dtype == object or array.dtype.kind in "SU":
        return "BYTES"
    return NUMPY_TO_DATATYPE[array.dtype]


def encode_output(array: Array) -> tuple[str, Any, int]:
    """An output's (datatype, raw contents, their size): BYTES elements length-prefixed, any
    other array its memory in C order whatever its layout (a contiguous array, not yet copied)."""
    datatype = datatype_of(array)
    if datatype == "BYTES":
        payload = serialize_bytes(array)
        return "BYTES", payload, len(payload)
    contiguous = np.ascontiguousarray(array)
    return datatype, contiguous, contiguous.nbytes


@functools.lru_cache(maxsize=1024)
def response_head(
    model: str, version: str, variant: str, cold: bool, escalated: bool | None = None
) -> pb.ModelInferResponse:
    """What every response of one served variant starts with, built once: copying it is cheaper
    than filling the parameters per request. Never mutated (callers copy it)."""
    head = pb.ModelInferResponse(model_name=model, model_version=version)
    head.parameters["edged_variant"].string_param = variant
    # True when this request waited for a load: what preloading is meant to avoid.
    head.parameters["edged_cold"].bool_param = cold
    if escalated is not None:  # a cascade: whether its first stage was unsure
        head.parameters["edged_escalated"].bool_param = escalated
    return head


def text_response(
    request: pb.ModelInferRequest, version: str, variant: str, text: str, output: str
) -> pb.ModelInferResponse:
    return infer_response(
        request, version, variant, [(output, np.array([text.encode()], dtype=object))]
    )
