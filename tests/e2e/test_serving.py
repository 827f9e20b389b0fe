"""The real daemon, a subprocess on a store holding the demo portfolio, driven by tritonclient."""

from __future__ import annotations

import queue
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as triton
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from edged.store.store import ModelStore
from tests.daemon import DaemonProcess

pytestmark = pytest.mark.e2e

ONNX_MODELS = {"mlp": ("input", (3, 64)), "cnn": ("image", (2, 1, 28, 28))}


@pytest.fixture(params=["unix", "tcp"])
def client(request: pytest.FixtureRequest, module_daemon: DaemonProcess) -> Any:
    url = module_daemon.unix_url if request.param == "unix" else module_daemon.tcp_url
    c = triton.InferenceServerClient(url=url)
    yield c
    c.close()


@pytest.fixture
def unix_client(module_daemon: DaemonProcess) -> Any:
    c = triton.InferenceServerClient(url=module_daemon.unix_url)
    yield c
    c.close()


def direct_run(store_root: Path, model: str, variant_id: str, feed: dict[str, Any]) -> Any:
    """The same variant file run in-process with onnxruntime, the way the daemon runs it."""
    store = ModelStore(store_root)
    manifest = store.manifest(model, store.active(model) or "")
    variant = manifest.variant(variant_id)
    so = ort.SessionOptions()
    so.intra_op_num_threads = variant.options.get("threads", 1)
    session = ort.InferenceSession(
        str(store.variant_path(variant)), so, providers=["CPUExecutionProvider"]
    )
    return session.run(None, feed)[0]


def test_live_ready_and_server_metadata(client: Any) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    meta = client.get_server_metadata()
    assert meta.name == "edged"
    assert "model_repository" in meta.extensions


def test_repository_index_lists_the_portfolio(client: Any) -> None:
    index = client.get_model_repository_index()
    by_name = {m.name: m for m in index.models}
    assert set(by_name) == {"mlp", "cnn", "tinyllama", "digits"}
    assert all(m.version == "1" and m.state == "READY" for m in by_name.values())


def test_model_metadata_describes_the_model(client: Any) -> None:
    meta = client.get_model_metadata("mlp")
    assert meta.versions == ["1"]
    assert meta.platform == "onnxruntime_onnx"
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [
        ("input", "FP32", [-1, 64])
    ]
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.outputs] == [
        ("logits", "FP32", [-1, 10])
    ]
    llm = client.get_model_metadata("tinyllama")
    assert [(t.name, t.datatype) for t in llm.inputs] == [("text_input", "BYTES")]


@pytest.mark.parametrize("model", sorted(ONNX_MODELS))
def test_infer_equals_direct_onnxruntime(
    client: Any, module_daemon: DaemonProcess, model: str
) -> None:
    name, shape = ONNX_MODELS[model]
    data = np.random.default_rng(7).standard_normal(shape).astype(np.float32)
    inp = triton.InferInput(name, list(shape), "FP32")
    inp.set_data_from_numpy(data)
    result = client.infer(model, [inp])
    response = result.get_response()
    variant = response.parameters["edged_variant"].string_param
    assert response.model_version == "1"
    assert variant in {"fp32", "int8"}
    expected = direct_run(module_daemon.store, model, variant, {name: data})
    np.testing.assert_array_equal(result.as_numpy("logits"), expected)


def test_repeated_requests_read_their_own_tensors(
    client: Any, module_daemon: DaemonProcess
) -> None:
    """The second request of a shape takes the wire fast path (edged/grpc/wire.py): each reply
    must still be computed from its own request's values, across shapes and back."""
    rng = np.random.default_rng(11)
    for batch in (2, 2, 2, 5, 2, 5):
        data = rng.standard_normal((batch, 64)).astype(np.float32)
        inp = triton.InferInput("input", [batch, 64], "FP32")
        inp.set_data_from_numpy(data)
        result = client.infer("mlp", [inp])
        variant = result.get_response().parameters["edged_variant"].string_param
        expected = direct_run(module_daemon.store, "mlp", variant, {"input": data})
        np.testing.assert_array_equal(result.as_numpy("logits"), expected)


def test_a_body_that_is_not_a_request_is_invalid(module_daemon: DaemonProcess) -> None:
    with grpc.insecure_channel(module_daemon.unix_url) as channel:
        call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        with pytest.raises(grpc.RpcError) as err:
            call(b"\x0a\xff\xff\xff", timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid ModelInferRequest" in err.value.details()


def test_explicit_version_and_requested_output(client: Any) -> None:
    inp = triton.InferInput("input", [1, 64], "FP32")
    inp.set_data_from_numpy(np.ones((1, 64), np.float32))
    result = client.infer(
        "mlp", [inp], model_version="1", outputs=[triton.InferRequestedOutput("logits")]
    )
    assert result.as_numpy("logits").shape == (1, 10)


def test_gguf_infer_returns_whole_text(client: Any) -> None:
    inp = triton.InferInput("text_input", [1], "BYTES")
    inp.set_data_from_numpy(np.array([b"hello"], dtype=object))
    result = client.infer("tinyllama", [inp], parameters={"max_tokens": 8, "temperature": "0"})
    text = result.as_numpy("text_output")[0]
    assert isinstance(text, bytes) and len(text) > 0
    assert result.get_response().parameters["edged_variant"].string_param in {"f16", "q8_0"}


def _stream(client: Any, params: dict[str, Any], **kwargs: Any) -> list[Any]:
    responses: queue.Queue[Any] = queue.Queue()
    client.start_stream(callback=lambda result, error: responses.put((result, error)))
    inp = triton.InferInput("text_input", [1], "BYTES")
    inp.set_data_from_numpy(np.array([b"The quick brown fox"], dtype=object))
    client.async_stream_infer("tinyllama", [inp], parameters=params, **kwargs)
    got = []
    while True:
        result, error = responses.get(timeout=60)
        assert error is None, error
        got.append(result)
        if result.get_response().parameters["triton_final_response"].bool_param:
            break
    client.stop_stream()
    return got


def test_streamed_generation_yields_several_responses(client: Any) -> None:
    got = _stream(client, {"max_tokens": 16, "temperature": "0.0", "stream": True})
    assert len(got) > 1
    finals = [r.get_response().parameters["triton_final_response"].bool_param for r in got]
    assert finals == [False] * (len(got) - 1) + [True]
    chunks = [r.as_numpy("text_output")[0] for r in got]
    assert all(isinstance(c, bytes) for c in chunks)
    for r in got:
        assert r.get_response().model_version == "1"
    # Streaming and non-streaming give the same greedy text.
    whole = _stream(client, {"max_tokens": 16, "temperature": "0.0", "stream": False})
    assert len(whole) == 1
    assert b"".join(chunks) == whole[0].as_numpy("text_output")[0]


def test_stream_with_empty_final_response(client: Any) -> None:
    got = _stream(client, {"max_tokens": 6, "stream": True}, enable_empty_final_response=True)
    assert len(got) > 2
    assert got[-1].as_numpy("text_output") is None
    assert all(r.as_numpy("text_output") is not None for r in got[:-1])


@pytest.fixture
def admin_client(module_daemon: DaemonProcess) -> Any:
    c = triton.InferenceServerClient(url=module_daemon.admin_url)
    yield c
    c.close()


def test_load_and_unload(admin_client: Any) -> None:
    admin_client.unload_model("cnn")
    assert not admin_client.is_model_ready("cnn")
    index = {m.name: m.state for m in admin_client.get_model_repository_index().models}
    assert index["cnn"] == "UNAVAILABLE"
    admin_client.load_model("cnn")
    assert admin_client.is_model_ready("cnn")
    assert admin_client.is_model_ready("cnn", "1")
    assert not admin_client.is_model_ready("cnn", "7")


def test_unloaded_model_cold_loads_on_demand(unix_client: Any, admin_client: Any) -> None:
    admin_client.unload_model("mlp")
    inp = triton.InferInput("input", [1, 64], "FP32")
    inp.set_data_from_numpy(np.zeros((1, 64), np.float32))
    assert unix_client.infer("mlp", [inp]).as_numpy("logits").shape == (1, 10)
    assert unix_client.is_model_ready("mlp")


def test_statistics_count_requests(unix_client: Any) -> None:
    before = unix_client.get_inference_statistics("mlp").model_stats[0].inference_count
    inp = triton.InferInput("input", [1, 64], "FP32")
    inp.set_data_from_numpy(np.zeros((1, 64), np.float32))
    unix_client.infer("mlp", [inp])
    stats = unix_client.get_inference_statistics("mlp").model_stats[0]
    assert stats.inference_count == before + 1
    assert stats.inference_stats.success.ns > 0


def test_cli_lists_models_and_infers(module_daemon: DaemonProcess) -> None:
    models = module_daemon.edged("models")
    assert models.returncode == 0, models.stderr
    assert "tinyllama" in models.stdout and "READY" in models.stdout
    out = module_daemon.edged("infer", "mlp")
    assert out.returncode == 0, out.stderr
    assert "logits FP32 [1, 10]" in out.stdout
    missing = module_daemon.edged("infer", "nope")
    assert missing.returncode == 1
    assert "NOT_FOUND" in missing.stderr


# -- bad input: the right status and a message naming what was wrong ---------------------------


def _expect(
    client: Any, status: str, fragment: str, model: str, inputs: list[Any], **kwargs: Any
) -> None:
    with pytest.raises(InferenceServerException) as err:
        client.infer(model, inputs, **kwargs)
    assert err.value.status() == f"StatusCode.{status}"
    assert fragment in err.value.message()


def _input(name: str, array: Any, datatype: str) -> Any:
    inp = triton.InferInput(name, list(array.shape), datatype)
    inp.set_data_from_numpy(array)
    return inp


def test_unknown_model_is_not_found(client: Any) -> None:
    _expect(
        client,
        "NOT_FOUND",
        "'nope'",
        "nope",
        [_input("input", np.zeros((1, 64), np.float32), "FP32")],
    )
    with pytest.raises(InferenceServerException) as err:
        client.get_model_metadata("nope")
    assert err.value.status() == "StatusCode.NOT_FOUND"


def test_unknown_version_is_not_found(client: Any) -> None:
    _expect(
        client,
        "NOT_FOUND",
        "version '9'",
        "mlp",
        [_input("input", np.zeros((1, 64), np.float32), "FP32")],
        model_version="9",
    )


def test_wrong_datatype(client: Any) -> None:
    _expect(
        client,
        "INVALID_ARGUMENT",
        "'input'",
        "mlp",
        [_input("input", np.zeros((1, 64), np.float64), "FP64")],
    )


def test_wrong_shape(client: Any) -> None:
    _expect(
        client,
        "INVALID_ARGUMENT",
        "input tensor 'input': shape [1, 63]",
        "mlp",
        [_input("input", np.zeros((1, 63), np.float32), "FP32")],
    )
    _expect(
        client,
        "INVALID_ARGUMENT",
        "input tensor 'input': shape [64]",
        "mlp",
        [_input("input", np.zeros(64, np.float32), "FP32")],
    )


def test_missing_and_extra_inputs(client: Any) -> None:
    good = _input("input", np.zeros((1, 64), np.float32), "FP32")
    _expect(
        client,
        "INVALID_ARGUMENT",
        "unexpected input tensor 'extra'",
        "mlp",
        [good, _input("extra", np.zeros(1, np.float32), "FP32")],
    )
    _expect(
        client,
        "INVALID_ARGUMENT",
        "missing input tensor 'text_input'",
        "tinyllama",
        [_input("prompt", np.array([b"x"], dtype=object), "BYTES")],
    )


def test_unknown_requested_output(client: Any) -> None:
    _expect(
        client,
        "INVALID_ARGUMENT",
        "requested output 'probs'",
        "mlp",
        [_input("input", np.zeros((1, 64), np.float32), "FP32")],
        outputs=[triton.InferRequestedOutput("probs")],
    )


def test_bad_generation_parameters(client: Any) -> None:
    prompt = _input("text_input", np.array([b"hi"], dtype=object), "BYTES")
    _expect(
        client,
        "INVALID_ARGUMENT",
        "max_tokens",
        "tinyllama",
        [prompt],
        parameters={"max_tokens": -3},
    )
    _expect(
        client,
        "INVALID_ARGUMENT",
        "temperature",
        "tinyllama",
        [prompt],
        parameters={"temperature": "hot"},
    )


def _raw_stub(daemon: DaemonProcess) -> Any:
    channel = grpc.insecure_channel(daemon.unix_url)
    return channel, service_pb2_grpc.GRPCInferenceServiceStub(channel)


def _raw_infer(daemon: DaemonProcess, request: Any) -> grpc.RpcError:
    channel, stub = _raw_stub(daemon)
    with channel, pytest.raises(grpc.RpcError) as err:
        stub.ModelInfer(request, timeout=30)
    return err.value


def test_element_count_mismatch_names_the_tensor(module_daemon: DaemonProcess) -> None:
    """A malformed request that tritonclient would refuse to build, sent with raw stubs."""
    request = service_pb2.ModelInferRequest(model_name="mlp")
    request.inputs.add(name="input", datatype="FP32", shape=[1, 64])
    request.raw_input_contents.append(b"\0" * (4 * 63))
    err = _raw_infer(module_daemon, request)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "input tensor 'input'" in err.details() and "252 bytes" in err.details()


def test_unknown_datatype_and_truncated_bytes(module_daemon: DaemonProcess) -> None:
    request = service_pb2.ModelInferRequest(model_name="mlp")
    request.inputs.add(name="input", datatype="FP8", shape=[1, 64])
    request.raw_input_contents.append(b"\0" * 64)
    err = _raw_infer(module_daemon, request)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "'FP8'" in err.details()
    request = service_pb2.ModelInferRequest(model_name="tinyllama")
    request.inputs.add(name="text_input", datatype="BYTES", shape=[1])
    request.raw_input_contents.append(b"\xff\x00\x00\x00abc")
    err = _raw_infer(module_daemon, request)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "text_input" in err.details() and "overruns" in err.details()


def test_typed_contents_are_accepted(module_daemon: DaemonProcess) -> None:
    request = service_pb2.ModelInferRequest(model_name="mlp")
    tensor = request.inputs.add(name="input", datatype="FP32", shape=[1, 64])
    tensor.contents.fp32_contents.extend([0.5] * 64)
    channel, stub = _raw_stub(module_daemon)
    with channel:
        response = stub.ModelInfer(request, timeout=30)
    assert list(response.outputs[0].shape) == [1, 10]
    assert len(response.raw_output_contents[0]) == 40


def test_message_over_the_limit_is_resource_exhausted(client: Any) -> None:
    big = np.zeros((5000, 64), np.float32)  # 1.28 MB, over the 1 MiB limit of this daemon
    _expect(client, "RESOURCE_EXHAUSTED", "", "mlp", [_input("input", big, "FP32")])
    # ... and the daemon is fine afterwards.
    ok = client.infer("mlp", [_input("input", np.zeros((2, 64), np.float32), "FP32")])
    assert ok.as_numpy("logits").shape == (2, 10)


def test_stream_reports_errors_in_band_and_stays_open(client: Any) -> None:
    responses: queue.Queue[Any] = queue.Queue()
    client.start_stream(callback=lambda result, error: responses.put((result, error)))
    client.async_stream_infer("nope", [_input("input", np.zeros((1, 64), np.float32), "FP32")])
    _, error = responses.get(timeout=30)
    assert error is not None and "'nope'" in str(error)
    client.async_stream_infer("mlp", [_input("input", np.zeros((1, 64), np.float32), "FP32")])
    result, error = responses.get(timeout=30)
    client.stop_stream()
    assert error is None and result.as_numpy("logits").shape == (1, 10)


def test_unix_socket_is_group_accessible_only(module_daemon: DaemonProcess) -> None:
    import stat

    mode = stat.S_IMODE(module_daemon.socket.stat().st_mode)
    assert mode == 0o660


def test_two_streams_on_one_gguf_model_progress_together(module_daemon: DaemonProcess) -> None:
    """The demo's GGUF variants hold two llama.cpp contexts: two streamed generations on the same
    model are produced at once, each yielding chunks before the other has finished."""
    import threading
    import time

    arrivals: dict[str, list[float]] = {"a": [], "b": []}
    errors: list[Any] = []

    def run(name: str, started: threading.Barrier) -> None:
        client = triton.InferenceServerClient(url=module_daemon.unix_url)
        done = threading.Event()

        def callback(result: Any, error: Any) -> None:
            if error is not None:
                errors.append(error)
                done.set()
                return
            arrivals[name].append(time.monotonic())
            if result.get_response().parameters["triton_final_response"].bool_param:
                done.set()

        client.start_stream(callback=callback)
        inp = triton.InferInput("text_input", [1], "BYTES")
        inp.set_data_from_numpy(np.array([b"Once upon a time"], dtype=object))
        started.wait(30)
        client.async_stream_infer(
            "tinyllama", [inp], parameters={"max_tokens": 400, "stream": True, "temperature": "0"}
        )
        assert done.wait(120)
        client.stop_stream()
        client.close()

    barrier = threading.Barrier(2)
    threads = [threading.Thread(target=run, args=(n, barrier)) for n in arrivals]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    assert errors == []
    a, b = arrivals["a"], arrivals["b"]
    assert len(a) > 10 and len(b) > 10, (len(a), len(b))
    # Each had produced chunks before the other produced its last: they overlapped.
    assert a[1] < b[-1] and b[1] < a[-1]
    # And not just at the edges: well over a few chunks of each within the other's run.
    assert sum(b[0] < t < b[-1] for t in a) > len(a) // 4
