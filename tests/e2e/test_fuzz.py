"""A short fuzz campaign against the running daemon (issue 17; bench/faults.py runs the long
one): requests built from the protocol's structure with hostile values, unary and streamed,
and pushes with malformed headers. Every answer is a status the protocol defines for bad input
— never INTERNAL or UNKNOWN, never a dead daemon or a closed stream."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from tests.daemon import DaemonProcess

pytestmark = pytest.mark.e2e

DATATYPES = ["FP32", "FP16", "INT64", "INT8", "UINT8", "BOOL", "BYTES", "FP64", "BF16", "??"]
ACCEPTED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.OUT_OF_RANGE,
}
dims = st.one_of(
    st.integers(0, 4), st.integers(-3, 70), st.sampled_from([2**31, 2**62, -(2**63), 2**63 - 1])
)
names = st.one_of(
    st.sampled_from(["input", "image", "text_input", "logits", ""]),
    st.text(max_size=40),
)


@st.composite
def tensors(draw: Any) -> dict[str, Any]:
    return {
        "name": draw(names),
        "datatype": draw(st.sampled_from(DATATYPES)),
        "shape": draw(st.lists(dims, max_size=draw(st.sampled_from([3, 5, 70])))),
        "raw": draw(st.one_of(st.none(), st.binary(max_size=600))),
        "fp32": draw(st.lists(st.floats(allow_nan=True), max_size=20)),
        "bytes": draw(st.lists(st.binary(max_size=40), max_size=8)),
        "shm": draw(st.booleans()),
    }


@st.composite
def requests(draw: Any) -> Any:
    request = pb.ModelInferRequest(
        model_name=draw(st.sampled_from(["mlp", "cnn", "tinyllama", "nope", "", "../x"])),
        model_version=draw(st.sampled_from(["", "", "1", "7", "-1", "x" * 300])),
        id=draw(st.sampled_from(["", "r1"])),
    )
    for tensor in draw(st.lists(tensors(), max_size=3)):
        given = request.inputs.add(
            name=tensor["name"], datatype=tensor["datatype"], shape=tensor["shape"]
        )
        if tensor["raw"] is not None:
            request.raw_input_contents.append(tensor["raw"])
        given.contents.fp32_contents.extend(tensor["fp32"])
        given.contents.bytes_contents.extend(tensor["bytes"])
        if tensor["shm"]:
            given.parameters["shared_memory_region"].string_param = draw(names)
            given.parameters["shared_memory_byte_size"].int64_param = draw(dims)
    if draw(st.booleans()):
        request.outputs.add(name=draw(names))
    for key in draw(st.lists(st.sampled_from(["max_tokens", "temperature", "stream", "x"]))):
        param = request.parameters[key]
        choice = draw(st.integers(0, 3))
        if choice == 0:
            param.int64_param = draw(st.integers(-(2**63), 2**63 - 1))
        elif choice == 1:
            param.double_param = draw(st.floats(allow_nan=True))
        elif choice == 2:
            param.string_param = draw(st.text(max_size=10))
        else:
            param.bool_param = draw(st.booleans())
    return request


@pytest.fixture(scope="module")
def stub(module_daemon: DaemonProcess) -> Any:
    channel = grpc.insecure_channel(module_daemon.unix_url)
    yield pb_grpc.GRPCInferenceServiceStub(channel)
    channel.close()


@settings(
    max_examples=1500,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(request=requests())
def test_fuzzed_infer_requests_get_a_defined_status(stub: Any, request: Any) -> None:
    if request.parameters["max_tokens"].WhichOneof("parameter_choice") is None:
        request.parameters.pop("max_tokens", None)
    try:
        stub.ModelInfer(request, timeout=60)
    except grpc.RpcError as e:
        assert e.code() in ACCEPTED, (e.code(), e.details())
        assert len(e.details() or "") <= 2100


@settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(batch=st.lists(requests(), min_size=1, max_size=4))
def test_fuzzed_streams_answer_every_request_and_stay_open(stub: Any, batch: list[Any]) -> None:
    for request in batch:  # short generations: the stream's turn-around, not the model's
        request.parameters["max_tokens"].int64_param = 2
    responses = list(stub.ModelStreamInfer(iter(batch), timeout=120))
    finals = [
        r
        for r in responses
        if r.error_message
        or r.infer_response.parameters["triton_final_response"].bool_param
        or "triton_final_response" not in r.infer_response.parameters
    ]
    assert len(finals) >= len(batch)
    for r in responses:
        assert "internal error" not in r.error_message, r.error_message


@settings(max_examples=300, deadline=None, derandomize=True)
@given(manifest=st.binary(max_size=400), signature=st.binary(max_size=200))
def test_fuzzed_push_headers_are_refused_cleanly(
    module_daemon: DaemonProcess, manifest: bytes, signature: bytes
) -> None:
    from edged.api import updates_pb2 as upb  # only the Updates package: no clash with Triton's
    from edged.api import updates_pb2_grpc as upb_grpc

    with grpc.insecure_channel(module_daemon.admin_url) as channel:
        request = upb.PushRequest()
        request.header.manifest = manifest
        request.header.signature = signature
        with pytest.raises(grpc.RpcError) as err:
            upb_grpc.UpdatesStub(channel).Push(iter([request]), timeout=30)
    assert err.value.code() in {
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.FAILED_PRECONDITION,
    }, (err.value.code(), err.value.details())


def test_the_daemon_is_alive_after_the_campaign(module_daemon: DaemonProcess, stub: Any) -> None:
    assert module_daemon.proc is not None and module_daemon.proc.poll() is None
    assert stub.ServerLive(pb.ServerLiveRequest(), timeout=10).live
