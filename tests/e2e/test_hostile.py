"""Hostile and careless requests (issue 17): every shape, datatype and prompt problem is
INVALID_ARGUMENT with a bounded message, a stream keeps going after a failed request, and a
burst of large refused requests leaves the daemon's memory where it was."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import psutil
import pytest
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from tests.conftest import import_demo
from tests.daemon import DaemonProcess

pytestmark = pytest.mark.e2e


def _tensor_request(model: str, name: str, datatype: str, shape: list[int], raw: bytes) -> Any:
    request = pb.ModelInferRequest(model_name=model)
    request.inputs.add(name=name, datatype=datatype, shape=shape)
    request.raw_input_contents.append(raw)
    return request


def _prompt(text: bytes) -> Any:
    request = pb.ModelInferRequest(model_name="tinyllama")
    request.inputs.add(name="text_input", datatype="BYTES", shape=[1])
    request.inputs[0].contents.bytes_contents.append(text)
    return request


BAD = {
    "a zero and a huge dimension": (
        _tensor_request("mlp", "input", "FP32", [0, 2**62], b""),
        "larger than any request",
    ),
    "65 dimensions": (
        _tensor_request("mlp", "input", "FP32", [1] * 65, b"\0" * 4),
        "65 dimensions",
    ),
    "a prompt longer than the context": (_prompt(b"word " * 2000), "at most"),
    "two million BYTES elements": (
        # Refused from its shape alone, before its elements are split (15M of them once held
        # the event loop for 7 s).
        _tensor_request("tinyllama", "text_input", "BYTES", [2_000_000], b"\0" * 16),
        "at most 1048576 are accepted",
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_shape_and_prompt_problems_are_invalid_argument(
    module_daemon: DaemonProcess, case: str
) -> None:
    request, words = BAD[case]
    with grpc.insecure_channel(module_daemon.unix_url) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            stub.ModelInfer(request, timeout=60)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    assert words in (err.value.details() or "")


def test_a_stream_keeps_going_after_failed_requests(module_daemon: DaemonProcess) -> None:
    good = _prompt(b"hello")
    good.parameters["max_tokens"].int64_param = 4
    requests = [request for request, _ in BAD.values()] + [good]
    with grpc.insecure_channel(module_daemon.unix_url) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        responses = list(stub.ModelStreamInfer(iter(requests), timeout=120))
    errors = [r.error_message for r in responses if r.error_message]
    assert len(errors) == len(BAD)
    for (_, words), message in zip(BAD.values(), errors, strict=True):
        assert words in message
    answered = [r for r in responses if not r.error_message]
    assert answered and answered[-1].infer_response.model_name == "tinyllama"


def test_a_stream_survives_bytes_that_are_no_request_and_a_large_hostile_one(
    module_daemon: DaemonProcess,
) -> None:
    """Stream requests arrive as bytes: one that is not a ModelInferRequest at all (grpc's own
    deserializer once ended the whole stream with an error) and one of 400,000 entries in the
    wrong field (screened and refused before it is parsed) are answered in-band, and the next
    request in the stream is served."""
    big = pb.ModelInferRequest(model_name="mlp")
    tensor = big.inputs.add(name="input", datatype="FP32", shape=[400_000])
    tensor.contents.bytes_contents.extend([b""] * 400_000)  # 0.8 MB: under the 1 MiB limit
    good = _prompt(b"hello")
    good.parameters["max_tokens"].int64_param = 4
    bodies = [b"\xff\xff\xff not protobuf", big.SerializeToString(), good.SerializeToString()]
    with grpc.insecure_channel(module_daemon.unix_url) as channel:
        call = channel.stream_stream(
            "/inference.GRPCInferenceService/ModelStreamInfer",
            request_serializer=None,  # bytes as they are
            response_deserializer=pb.ModelStreamInferResponse.FromString,
        )
        responses = list(call(iter(bodies), timeout=120))
    errors = [r.error_message for r in responses if r.error_message]
    assert len(errors) == 2, errors
    assert "not a valid ModelInferRequest" in errors[0]
    assert "contents.bytes_contents" in errors[1]
    assert responses[1].infer_response.model_name == "mlp"
    answered = [r for r in responses if not r.error_message]
    assert answered and answered[-1].infer_response.model_name == "tinyllama"


def test_an_error_message_stays_small_enough_for_any_client(module_daemon: DaemonProcess) -> None:
    """4,000 wrongly named tensors (a request may have 4,096 fields): the message naming them
    would be 35 KB, past the 8 KiB of metadata clients accept; it is cut to a couple of KB, and
    the client reads it."""
    request = pb.ModelInferRequest(model_name="mlp")
    for i in range(4_000):
        request.inputs.add(name=f"input_{i:05d}", datatype="FP32", shape=[1])
        request.inputs[-1].contents.fp32_contents.append(1.0)
    with grpc.insecure_channel(module_daemon.unix_url) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            stub.ModelInfer(request, timeout=60)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = err.value.details() or ""
    assert "missing input tensor 'input'" in details
    assert 1000 < len(details) < 2200 and "more characters" in details


def test_memory_returns_after_a_burst_of_large_refused_requests(
    tmp_path: Path, demo_src: Path
) -> None:
    """Twenty 5.7 MiB requests whose 3M elements are in the wrong field for an FP32 model: each
    once left ~115 MB behind (its parsed message kept alive by the abort's traceback, and freed
    heap pages never returned), 3.6 GB after twenty. Now the RSS stays within a bound."""
    daemon = DaemonProcess(import_demo(tmp_path / "store", demo_src)).start()
    try:
        assert daemon.proc is not None
        process = psutil.Process(daemon.proc.pid)
        request = pb.ModelInferRequest(model_name="mlp")
        tensor = request.inputs.add(name="input", datatype="FP32", shape=[3_000_000])
        tensor.contents.bytes_contents.extend([b""] * 3_000_000)
        with grpc.insecure_channel(daemon.unix_url) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)

            def refused() -> str:
                with pytest.raises(grpc.RpcError) as err:
                    stub.ModelInfer(request, timeout=60)
                assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                return err.value.details() or ""

            assert "contents.bytes_contents" in refused()  # says where the data came
            before = process.memory_info().rss
            for _ in range(20):
                refused()
            grown = (process.memory_info().rss - before) / 2**20
        assert grown < 100, f"RSS grew {grown:.0f} MB over 20 refused requests"
        assert daemon.proc.poll() is None
    finally:
        daemon.stop()
