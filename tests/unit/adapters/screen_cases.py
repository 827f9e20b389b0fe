"""The request screen (edged/adapters/grpc/screen.py) refuses only what the parsed path refuses,
and refuses the large hostile requests before the parser sees them.

Run by tests/unit/adapters/test_wire.py in an interpreter of its own (edged's inference_pb2 and
tritonclient's service_pb2 cannot share a process)."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edged.adapters.grpc import convert, screen, wire
from edged.api import inference_pb2 as pb
from edged.errors import InvalidInputError
from edged.runtime.base import DATATYPE_TO_NUMPY
from edged.serving.inference import check_declared
from edged.tensors import TensorSpec

# Derandomized: the same 1,000 cases in every run (30,000 random ones passed when written).
FAST = settings(
    max_examples=1000,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
DATATYPES = [*DATATYPE_TO_NUMPY, "FP16", "BF16", "NOPE", ""]
FIELDS = ["bool", "int", "int64", "uint", "uint64", "fp32", "fp64", "bytes"]


def varint(value: int) -> bytes:
    return wire.varint(value & (2**64 - 1))


def field(number: int, payload: bytes) -> bytes:
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def unpacked(number: int, values: Sequence[int]) -> bytes:
    """Entries of a repeated varint field one by one (legal protobuf; protobuf-python packs)."""
    return b"".join(varint(number << 3) + varint(v) for v in values)


def parsed_path(body: bytes, specs: Sequence[TensorSpec] | None) -> None:
    """What ModelInfer does with a request after the screen: parse, decode, check the
    signature (as check_inputs does, from the declared datatypes and shapes)."""
    request = wire.parse_request(body)
    convert.decode_inputs(request)
    if specs is not None:
        declared = {t.name: (t.datatype, tuple(t.shape)) for t in request.inputs}
        check_declared(request.model_name, specs, declared)


@st.composite
def hostile(draw: Any) -> tuple[bytes, list[TensorSpec] | None]:
    """Requests near the edges: wrong datatypes, shapes and contents fields, element counts off
    by a little or a lot, unpacked and split contents, extra fields, and a signature that fits
    the request or nearly does."""
    request = pb.ModelInferRequest(model_name="m")
    for key in draw(st.lists(st.sampled_from(["a", "b", "max_tokens"]), unique=True)):
        request.parameters[key].int64_param = 3
    extra = b""
    specs: list[TensorSpec] = []
    for name in draw(st.lists(st.sampled_from(["x", "y", "z"]), min_size=1, max_size=3)):
        datatype = draw(st.sampled_from(DATATYPES))
        shape = draw(st.lists(st.integers(-1, 6), max_size=3))
        count = math.prod(shape) if shape and min(shape) >= 0 else 0
        tensor = pb.ModelInferRequest.InferInputTensor(name=name, datatype=datatype, shape=shape)
        kind = draw(st.sampled_from(["raw", "contents", "unpacked", "split", "none", "both"]))
        n = (
            max(count + draw(st.integers(-2, 2)), 0)
            if draw(st.booleans())
            else draw(st.integers(0, 40))
        )
        which = draw(st.sampled_from(FIELDS))
        if kind == "raw":
            item = np.dtype(DATATYPE_TO_NUMPY.get(datatype, "u1")).itemsize
            request.raw_input_contents.append(b"\x00" * (n * (1 if datatype == "BYTES" else item)))
        if kind == "both":  # raw bytes and contents too (a parse reads only the raw)
            request.raw_input_contents.append(b"\x00" * n * 4)
        if kind in ("contents", "both"):
            values = getattr(tensor.contents, f"{which}_contents")
            values.extend([b"ab"] * n if which == "bytes" else [1] * n)
        if kind in ("unpacked", "split") and which not in ("fp32", "fp64", "bytes"):
            number = FIELDS.index(which) + 1
            contents = unpacked(number, [1] * n)
            if kind == "split":  # the contents message sent twice: the parser merges them
                contents = field(5, contents[: len(contents) // 2 // 2 * 2]) + field(
                    5, contents[len(contents) // 2 // 2 * 2 :]
                )
                extra += field(5, tensor.SerializeToString() + contents)
            else:
                extra += field(5, tensor.SerializeToString() + field(5, contents))
        else:
            request.inputs.append(tensor)
        spec_shape = tuple(draw(st.sampled_from([d, -1])) for d in shape)
        if draw(st.integers(0, 4)) == 0 and spec_shape:
            spec_shape = spec_shape[:-1]
        spec_type = datatype if draw(st.integers(0, 4)) else draw(st.sampled_from(DATATYPES))
        specs.append(TensorSpec(name, spec_type, spec_shape))
    if draw(st.booleans()):
        specs = specs[: draw(st.integers(0, len(specs)))]
    body = request.SerializeToString() + extra
    return body, specs if draw(st.booleans()) else None


@FAST
@given(hostile())
def test_the_screen_refuses_only_what_the_parsed_path_refuses(
    case: tuple[bytes, list[TensorSpec] | None],
) -> None:
    body, specs = case
    try:
        screen.screen(body, lambda model, version: specs)
    except InvalidInputError as refused:
        with pytest.raises(InvalidInputError):
            parsed_path(body, specs)
        assert len(str(refused)) < 2000
        return
    # Passed: whatever the parsed path says then is its own business (it is the reference).
    with contextlib.suppress(InvalidInputError):
        parsed_path(body, specs)


def _bench_request() -> pb.ModelInferRequest:
    """bench/faults.py's: 3M empty bytes_contents entries for an FP32 tensor (5.7 MiB)."""
    request = pb.ModelInferRequest(model_name="mlp")
    tensor = request.inputs.add(name="input", datatype="FP32", shape=[3_000_000])
    tensor.contents.bytes_contents.extend([b""] * 3_000_000)
    return request


MLP = [TensorSpec("input", "FP32", (-1, 64))]


def test_bytes_contents_for_a_number_tensor_are_refused_unparsed() -> None:
    body = _bench_request().SerializeToString()
    with pytest.raises(
        InvalidInputError,
        match=r"FP32 data goes in contents\.fp32_contents.*"
        r"contents\.bytes_contents",
    ):
        screen.screen(body, lambda model, version: None)
    with pytest.raises(screen.ScreenedOutError) as refused:
        screen.screen(body, lambda model, version: None)
    assert refused.value.model == "mlp"  # named for its statistics and stream errors
    with pytest.raises(InvalidInputError, match=r"contents\.bytes_contents"):
        parsed_path(body, None)  # the parsed path refuses it too, with the same words


def test_a_shape_the_resident_model_does_not_take_is_refused_unparsed() -> None:
    request = pb.ModelInferRequest(model_name="mlp")
    request.inputs.add(name="input", datatype="FP32", shape=[3_000_000])
    request.raw_input_contents.append(b"\x00" * 12_000_000)
    body = request.SerializeToString()
    with pytest.raises(InvalidInputError, match=r"shape \[3000000\] does not match the model's"):
        screen.screen(body, lambda model, version: MLP if model == "mlp" else None)
    screen.screen(body, lambda model, version: None)  # not resident: left to the full path
    request.model_version = "7"  # another version's signature is not judged
    screen.screen(request.SerializeToString(), lambda m, v: MLP if not v else None)


def test_more_bytes_entries_than_elements_are_counted_and_refused() -> None:
    request = pb.ModelInferRequest(model_name="llm")
    tensor = request.inputs.add(name="text_input", datatype="BYTES", shape=[1])
    tensor.contents.bytes_contents.extend([b""] * 600_000)  # 1.2 MB of entries for 1 element
    with pytest.raises(InvalidInputError, match=r"holds 1 elements, contents.bytes_contents has"):
        screen.screen(request.SerializeToString(), lambda model, version: None)
    # One large element is what the shape says: passed.
    del tensor.contents.bytes_contents[:]
    tensor.contents.bytes_contents.append(b"x" * 3_000_000)
    screen.screen(request.SerializeToString(), lambda model, version: None)
    # As many as the shape's: passed, and the parsed path reads them all.
    tensor.ClearField("shape")
    tensor.shape.append(2000)
    del tensor.contents.bytes_contents[:]
    tensor.contents.bytes_contents.extend([b"y" * 800] * 2000)
    body = request.SerializeToString()
    screen.screen(body, lambda model, version: None)
    parsed_path(body, None)


def test_numbers_longer_than_their_shape_allows_are_refused() -> None:
    request = pb.ModelInferRequest(model_name="mlp")
    tensor = request.inputs.add(name="input", datatype="INT64", shape=[1, 64])
    body = request.SerializeToString()
    contents = unpacked(3, [2**62] * 100_000)  # 1.1 MB of unpacked varints for 64 elements
    body += field(5, tensor.SerializeToString() + field(5, contents))
    request.ClearField("inputs")
    with pytest.raises(InvalidInputError, match=r"holds 64 elements, contents.int64_contents has"):
        screen.screen(
            request.SerializeToString() + field(5, tensor.SerializeToString() + field(5, contents)),
            lambda model, version: None,
        )
    with pytest.raises(InvalidInputError):
        parsed_path(body, None)


def test_a_request_of_too_many_fields_is_refused() -> None:
    request = pb.ModelInferRequest(model_name="mlp")
    request.inputs.add(name="input", datatype="FP32", shape=[1, 64])
    request.raw_input_contents.extend([b""] * (screen.MAX_FIELDS + 1))
    with pytest.raises(InvalidInputError, match=f"more than {screen.MAX_FIELDS} fields"):
        screen.screen(request.SerializeToString(), lambda model, version: None)


def test_a_valid_large_request_passes() -> None:
    request = pb.ModelInferRequest(model_name="mlp", id="r1")
    request.parameters["max_tokens"].int64_param = 4
    request.inputs.add(name="input", datatype="FP32", shape=[5000, 64])
    request.outputs.add(name="logits")
    request.raw_input_contents.append(np.ones((5000, 64), np.float32).tobytes())
    screen.screen(request.SerializeToString(), lambda model, version: MLP)
    tensor = request.inputs.add(name="mask", datatype="INT64", shape=[3, 1000])
    tensor.contents.int64_contents.extend(range(-1500, 1500))
    del request.raw_input_contents[:]
    request.inputs[0].contents.fp32_contents.extend([0.5] * 5000 * 64)
    screen.screen(
        request.SerializeToString(), lambda m, v: [*MLP, TensorSpec("mask", "INT64", (3, -1))]
    )


def test_a_malformed_request_is_left_to_the_parser() -> None:
    body = _bench_request().SerializeToString()
    tensor = pb.ModelInferRequest.InferInputTensor(name="input", datatype="FP32", shape=[2])
    garbled = field(5, tensor.SerializeToString() + field(5, b"\x35\x00"))  # a cut fixed32
    for broken in (
        body[:-1],
        b"\x0a\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01",
        b"\x00\x00",
        b"\x0a\x03mlp" + garbled,
        b"\x0a\x02\xff\xfe",  # a model name that is not UTF-8
    ):
        screen.screen(broken, lambda model, version: None)  # no verdict here ...
        with pytest.raises(InvalidInputError, match="not a valid ModelInferRequest"):
            wire.parse_request(broken)  # ... the parser gives it
