"""The ModelInfer wire fast path agrees with a full parse, and never misreads a request.

Run by tests/test_wire.py in an interpreter of its own: edged's inference_pb2 and tritonclient's
service_pb2 define the same protobuf symbols and cannot share a process."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edged.adapters.grpc import convert, wire
from edged.api import inference_pb2 as pb
from edged.errors import InvalidInputError
from edged.runtime.base import DATATYPE_TO_NUMPY

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
NUMERIC = sorted(set(DATATYPE_TO_NUMPY) - {"BYTES"})
names = st.text("abcxyz_.-0123456789", min_size=1, max_size=12)


@st.composite
def requests(draw: Any, with_id: bool = False) -> tuple[pb.ModelInferRequest, list[Any]]:
    """A valid request and its tensors (datatype, shape), raw contents filled with random bytes."""
    request = pb.ModelInferRequest(
        model_name=draw(st.text("abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=140)),
        model_version=draw(st.sampled_from(["", "1", "12"])),
        id=draw(st.text(min_size=1, max_size=8)) if with_id else "",
    )
    for key in draw(st.lists(st.sampled_from(["max_tokens", "temperature", "x"]), unique=True)):
        if key == "max_tokens":
            request.parameters[key].int64_param = draw(st.integers(1, 100))
        elif key == "temperature":
            request.parameters[key].double_param = draw(st.floats(0, 2))
        else:
            request.parameters[key].string_param = draw(st.text(max_size=5))
    tensors = []
    for name in draw(st.lists(names, min_size=1, max_size=3, unique=True)):
        datatype = draw(st.sampled_from(NUMERIC))
        shape = draw(st.lists(st.integers(0, 40), min_size=0, max_size=3))
        request.inputs.add(name=name, datatype=datatype, shape=shape)
        size = math.prod(shape) * np.dtype(DATATYPE_TO_NUMPY[datatype]).itemsize
        request.raw_input_contents.append(draw(st.binary(min_size=size, max_size=size)))
        tensors.append((datatype, shape))
    for name in draw(st.lists(names, max_size=2, unique=True)):
        request.outputs.add(name=name)
    return request, tensors


def full_parse(body: bytes) -> tuple[pb.ModelInferRequest, dict[str, Any], Any, list[str]]:
    request = wire.parse_request(body)
    inputs = convert.decode_inputs(request)
    params, _ = convert.generation_params(request.parameters)
    return request, inputs, params, convert.requested_outputs(request)


def learned(body: bytes) -> wire.RequestTemplates:
    templates = wire.RequestTemplates()
    request, inputs, params, requested = full_parse(body)
    templates.learn(body, request, inputs, requested, params)
    return templates


def same_arrays(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return list(a) == list(b) and all(
        a[k].dtype == b[k].dtype and a[k].shape == b[k].shape and a[k].tobytes() == b[k].tobytes()
        for k in a
    )


def with_new_data(request: pb.ModelInferRequest, seed: int) -> bytes:
    other = pb.ModelInferRequest()
    other.CopyFrom(request)
    rng = np.random.default_rng(seed)
    for i, data in enumerate(request.raw_input_contents):
        other.raw_input_contents[i] = rng.integers(0, 256, len(data), dtype=np.uint8).tobytes()
    return other.SerializeToString(deterministic=True)


@FAST
@given(requests(), st.integers(0, 2**32 - 1))
def test_a_request_like_a_learned_one_reads_as_a_full_parse_does(
    drawn: tuple[pb.ModelInferRequest, Any], seed: int
) -> None:
    request, _ = drawn
    # Deterministic: map fields (parameters) serialize in key order, so the copy differs from
    # the original only inside its tensors, as a client sending the same request shape does.
    templates = learned(request.SerializeToString(deterministic=True))
    body = with_new_data(request, seed)
    known = templates.match(body)
    if len(request.model_name) > 0x7F:
        assert known is None  # names of more than 127 bytes take the full path
        return
    assert known is not None
    template, inputs = known
    parsed, expected_inputs, params, requested = full_parse(body)
    assert same_arrays(inputs, expected_inputs)
    assert (template.model, template.version) == (parsed.model_name, parsed.model_version)
    assert template.params == params and template.requested == requested
    assert all(not a.flags.writeable for a in inputs.values())  # views of the request


@FAST
@given(requests(), st.data())
def test_no_mutated_request_is_misread(drawn: tuple[pb.ModelInferRequest, Any], data: Any) -> None:
    request, _ = drawn
    body = request.SerializeToString()
    templates = learned(body)
    kind = data.draw(st.sampled_from(["flip", "truncate", "append", "insert"]))
    mutated = bytearray(body)
    if kind == "flip":
        at = data.draw(st.integers(0, len(body) - 1))
        mutated[at] ^= 1 << data.draw(st.integers(0, 7))
    elif kind == "truncate":
        del mutated[data.draw(st.integers(0, len(body) - 1)) :]
    elif kind == "append":  # a field after the tensors: the id
        mutated += pb.ModelInferRequest(id="late").SerializeToString()
    else:
        at = data.draw(st.integers(0, len(body)))
        mutated[at:at] = data.draw(st.binary(min_size=1, max_size=3))
    mutated_body = bytes(mutated)
    known = templates.match(mutated_body)
    if known is None:
        return  # the full path decides
    template, inputs = known
    parsed, expected_inputs, params, requested = full_parse(mutated_body)
    assert parsed.id == "" and parsed.model_name == template.model
    assert parsed.model_version == template.version
    assert same_arrays(inputs, expected_inputs)
    assert params == template.params and requested == template.requested


@FAST
@given(requests(with_id=True))
def test_requests_with_an_id_are_not_remembered(drawn: tuple[pb.ModelInferRequest, Any]) -> None:
    request, _ = drawn
    body = request.SerializeToString()
    assert learned(body).match(body) is None


def test_bytes_tensors_and_contents_are_not_remembered() -> None:
    text = pb.ModelInferRequest(model_name="m")
    text.inputs.add(name="t", datatype="BYTES", shape=[1])
    text.raw_input_contents.append(convert.serialize_bytes(np.array([b"hi"], dtype=object)))
    contents = pb.ModelInferRequest(model_name="m")
    contents.inputs.add(name="x", datatype="FP32", shape=[2]).contents.fp32_contents.extend([1, 2])
    for request in (text, contents):
        body = request.SerializeToString()
        assert learned(body).match(body) is None


def test_tensors_before_other_fields_are_not_remembered() -> None:
    request = pb.ModelInferRequest(model_name="m")
    request.inputs.add(name="x", datatype="FP32", shape=[2])
    request.raw_input_contents.append(np.ones(2, np.float32).tobytes())
    # A legal but unusual encoding: the tensor bytes first, the other fields after them.
    body = (
        pb.ModelInferRequest(raw_input_contents=request.raw_input_contents).SerializeToString()
        + pb.ModelInferRequest(model_name="m", inputs=request.inputs).SerializeToString()
    )
    assert wire.parse_request(body) == request
    assert learned(body).match(body) is None


def test_a_model_keeps_its_latest_shapes() -> None:
    templates = wire.RequestTemplates()
    bodies = []
    for n in range(wire.TEMPLATES_PER_MODEL + 1):
        request = pb.ModelInferRequest(model_name="m")
        request.inputs.add(name="x", datatype="FP32", shape=[n + 1])
        request.raw_input_contents.append(np.zeros(n + 1, np.float32).tobytes())
        body = request.SerializeToString()
        request_, inputs, params, requested = full_parse(body)
        templates.learn(body, request_, inputs, requested, params)
        bodies.append(body)
    assert templates.match(bodies[0]) is None  # the oldest shape was dropped
    assert all(templates.match(b) is not None for b in bodies[1:])


def test_a_body_that_is_not_a_request_is_invalid_input() -> None:
    with pytest.raises(InvalidInputError, match="not a valid ModelInferRequest"):
        wire.parse_request(b"\x0a\xff\xff\xff")


output_arrays = st.sampled_from([*NUMERIC, "BYTES"]).flatmap(
    lambda datatype: st.lists(st.integers(0, 5), min_size=0, max_size=3).map(
        lambda shape: (
            np.array([f"t{i}".encode() for i in range(math.prod(shape))], dtype=object).reshape(
                shape
            )
            if datatype == "BYTES"
            else np.arange(math.prod(shape)).astype(DATATYPE_TO_NUMPY[datatype]).reshape(shape)
        )
    )
)


@FAST
@given(
    st.lists(st.tuples(names, output_arrays), max_size=3, unique_by=lambda t: t[0]),
    st.text(max_size=6),
    st.booleans(),
    st.booleans(),
)
def test_responses_equal_the_message_built_field_by_field(
    outputs: list[tuple[str, Any]], request_id: str, cold: bool, transpose: bool
) -> None:
    if transpose:  # a non-contiguous output must still go out in C order
        outputs = [(name, array.T) for name, array in outputs]
    reply = wire.infer_response("model", "3", "int8", request_id, outputs, cold)
    request = pb.ModelInferRequest(model_name="model", id=request_id)
    expected = convert.infer_response(request, "3", "int8", outputs, cold)
    assert pb.ModelInferResponse.FromString(reply) == expected
