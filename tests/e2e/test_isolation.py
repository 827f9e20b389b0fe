"""Isolation between models and clients (issue 17): abandoned generations and a huge prompt do
not stall the other models, and a client that stops reading its stream does not wedge an
evict or the models around it."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from tests.conftest import import_demo
from tests.daemon import DaemonProcess

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, demo_src: Path) -> Iterator[DaemonProcess]:
    root = import_demo(tmp_path_factory.mktemp("isolation") / "store", demo_src)
    daemon = DaemonProcess(root, server__workers=2, server__generation_nice=7).start()
    yield daemon
    daemon.stop()


def _generate(prompt: bytes, max_tokens: int, stream: bool = False) -> Any:
    request = pb.ModelInferRequest(model_name="tinyllama")
    request.inputs.add(name="text_input", datatype="BYTES", shape=[1])
    request.inputs[0].contents.bytes_contents.append(prompt)
    request.parameters["max_tokens"].int64_param = max_tokens
    if stream:
        request.parameters["stream"].bool_param = True
    return request


def _cnn() -> Any:
    request = pb.ModelInferRequest(model_name="cnn")
    request.inputs.add(name="image", datatype="FP32", shape=[1, 1, 28, 28])
    request.raw_input_contents.append(np.zeros((1, 1, 28, 28), np.float32).tobytes())
    return request


def test_abandoned_generations_and_a_huge_prompt_do_not_stall_other_models(
    daemon: DaemonProcess,
) -> None:
    """Two workers. A 512 KiB prompt and eight long generations, all abandoned by their
    clients after a second: the prompt is refused before it is tokenized, the generations
    waiting for a context never hold a worker and are dropped at their deadline, the running
    ones stop. Requests to an ONNX model that needs a worker are all served meanwhile (they
    once timed out for 75-90 s)."""
    with grpc.insecure_channel(daemon.unix_url) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        assert stub.ModelInfer(_cnn(), timeout=60).outputs  # loaded and warm
        abandoned = [stub.ModelInfer.future(_generate(b"x" * 512 * 1024, 16), timeout=1.0)]
        abandoned += [
            stub.ModelInfer.future(_generate(b"once upon a time", 8192), timeout=1.0)
            for _ in range(8)
        ]
        time.sleep(0.2)
        started = time.monotonic()
        served = [stub.ModelInfer(_cnn(), timeout=10) for _ in range(20)]
        elapsed = time.monotonic() - started
        codes = []
        for future in abandoned:
            try:
                future.result()
                codes.append(grpc.StatusCode.OK)
            except grpc.RpcError as e:
                codes.append(e.code())
    assert all(r.outputs for r in served)
    assert elapsed < 8, f"20 cnn requests took {elapsed:.1f}s behind the abandoned ones"
    assert codes[0] == grpc.StatusCode.INVALID_ARGUMENT  # the huge prompt, refused at once
    assert set(codes[1:]) <= {grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.OK}


def test_a_paused_stream_does_not_wedge_an_evict(daemon: DaemonProcess) -> None:
    """A client opens a long generation stream and stops reading after the first response.
    Evict of that model completes (the lease ends when generation does, and the evict waits
    for it outside the memory lock), and a load of another model meanwhile is not held up."""
    with grpc.insecure_channel(daemon.unix_url) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        paused = stub.ModelStreamInfer(
            iter([_generate(b"the paused client", 8000, stream=True)]), timeout=120
        )
        first = next(paused)  # and then it reads nothing more
        assert first.infer_response.model_name == "tinyllama"
        with grpc.insecure_channel(daemon.admin_url) as admin_channel:
            admin = pb_grpc.GRPCInferenceServiceStub(admin_channel)
            times: dict[str, float] = {}

            def timed(name: str, request: Any) -> None:
                start = time.monotonic()
                if name == "unload":
                    admin.RepositoryModelUnload(request, timeout=60)
                else:
                    admin.RepositoryModelLoad(request, timeout=60)
                times[name] = time.monotonic() - start

            admin.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name="mlp"))
            calls = [
                threading.Thread(
                    target=timed,
                    args=("unload", pb.RepositoryModelUnloadRequest(model_name="tinyllama")),
                ),
                threading.Thread(
                    target=timed, args=("load", pb.RepositoryModelLoadRequest(model_name="mlp"))
                ),
            ]
            for call in calls:
                call.start()
            for call in calls:
                call.join(90)
        paused.cancel()
    assert set(times) == {"unload", "load"}, times
    assert times["load"] < 20, times
    assert times["unload"] < 45, times


def _nice_levels(pid: int) -> dict[int, int]:
    """Each thread's nice, from /proc (field 19 of stat, after the command's parentheses)."""
    levels = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            levels[int(task.name)] = int((task / "stat").read_text().rsplit(")", 1)[1].split()[16])
        except (OSError, IndexError, ValueError):
            continue  # the thread ended meanwhile
    return levels


def test_generation_runs_below_the_request_path(daemon: DaemonProcess) -> None:
    """Generation has threads of its own at server.generation_nice (7 here) above the daemon's:
    a generation that keeps a core busy gives it up to short requests. The event loop and the
    inference workers stay at the daemon's nice."""
    assert daemon.proc is not None
    pid = daemon.proc.pid
    with grpc.insecure_channel(daemon.unix_url) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        stub.ModelInfer(_cnn(), timeout=60)
        answer = stub.ModelInfer(_generate(b"nice", 16), timeout=60)
        assert answer.outputs[0].name == "text_output"
    levels = _nice_levels(pid)
    base = levels[pid]  # the event loop's thread: the daemon's own (the suite may run niced)
    assert min(base + 7, 19) in levels.values()  # a generation thread
    assert sum(1 for nice in levels.values() if nice == base) >= 3  # the loop, gRPC, inference
