"""Large valid requests pass the wire screen (edged/adapters/grpc/screen.py) and are served as
small ones are: under 1 MiB screened on the event loop, over it screened and parsed on a worker
thread; tensors in raw_input_contents (tritonclient) and in typed contents (KServe clients),
unary and streamed. Each answer equals the same variant run in-process on the same rows."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from tests.conftest import import_demo
from tests.daemon import DaemonProcess
from tests.e2e.test_serving import direct_run

pytestmark = pytest.mark.e2e
ROWS = (1500, 6000)  # 384 KB and 1.5 MB of FP32


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, demo_src: Path) -> Iterator[DaemonProcess]:
    root = import_demo(tmp_path_factory.mktemp("large") / "store", demo_src)
    daemon = DaemonProcess(root).start()
    yield daemon
    daemon.stop()


def _in_contents(data: Any) -> Any:
    request = pb.ModelInferRequest(model_name="mlp")
    tensor = request.inputs.add(name="input", datatype="FP32", shape=list(data.shape))
    tensor.contents.fp32_contents.extend(data.ravel().tolist())
    return request


def _logits(response: Any) -> Any:
    (output,) = response.outputs
    return np.frombuffer(response.raw_output_contents[0], np.float32).reshape(output.shape)


@pytest.mark.parametrize("rows", ROWS)
def test_large_requests_are_served(daemon: DaemonProcess, rows: int) -> None:
    data = np.random.default_rng(rows).standard_normal((rows, 64)).astype(np.float32)
    client = triton.InferenceServerClient(daemon.tcp_url)
    try:
        inp = triton.InferInput("input", [rows, 64], "FP32")
        inp.set_data_from_numpy(data)
        raw = client.infer("mlp", [inp])
    finally:
        client.close()
    variant = raw.get_response().parameters["edged_variant"].string_param
    expected = direct_run(daemon.store, "mlp", variant, {"input": data})
    np.testing.assert_array_equal(raw.as_numpy("logits"), expected)
    with grpc.insecure_channel(daemon.unix_url) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        typed = stub.ModelInfer(_in_contents(data), timeout=60)
        streamed = list(stub.ModelStreamInfer(iter([_in_contents(data)]), timeout=60))
    np.testing.assert_array_equal(_logits(typed), expected)
    assert len(streamed) == 1 and not streamed[0].error_message
    np.testing.assert_array_equal(_logits(streamed[0].infer_response), expected)
