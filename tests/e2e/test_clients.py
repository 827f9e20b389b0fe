"""The clients users already have: the newest tritonclient in edged's own environment (with the
protobuf it pulls in), and gRPC health and reflection as any tool speaks them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pb2

from edged.api import health_pb2, health_pb2_grpc
from edged.api import reflection_v1_pb2 as rpb
from edged.api import reflection_v1_pb2_grpc as rpb_grpc
from edged.api import reflection_v1alpha_pb2 as rpb_alpha
from edged.api import reflection_v1alpha_pb2_grpc as rpb_alpha_grpc
from tests.daemon import DaemonProcess

ROOT = Path(__file__).resolve().parents[2]
OVERLAY = ROOT / ".venv" / "tritonclient-newest"

# Run with the overlay first on the path: tritonclient and protobuf come from there.
CLIENT = r"""
import json, queue, sys
import numpy as np
import google.protobuf, tritonclient.grpc as triton
from importlib.metadata import version
url = sys.argv[1]
client = triton.InferenceServerClient(url=url)
out = {"tritonclient": version("tritonclient"), "protobuf": google.protobuf.__version__}
data = triton.InferInput("input", [2, 64], "FP32")
data.set_data_from_numpy(np.ones((2, 64), np.float32))
wire = client.infer("mlp", [data]).as_numpy("logits")
out["logits"] = list(wire.shape)
# The same request through the release's own shared-memory utilities (multiprocessing-based).
import os, tritonclient.utils.shared_memory as shm
key = f"/edged-newest-{os.getpid()}"
region = shm.create_shared_memory_region("in_out", key, 2 * 64 * 4 + wire.nbytes)
try:
    shm.set_shared_memory_region(region, [np.ones((2, 64), np.float32)])
    client.register_system_shared_memory("in_out", key, 2 * 64 * 4 + wire.nbytes)
    data.set_shared_memory("in_out", 2 * 64 * 4)
    wanted = triton.InferRequestedOutput("logits")
    wanted.set_shared_memory("in_out", wire.nbytes, offset=2 * 64 * 4)
    client.infer("mlp", [data], outputs=[wanted])
    got = shm.get_contents_as_numpy(region, np.float32, [2, 10], offset=2 * 64 * 4)
    out["shm_equal"] = bool((got == wire).all())
    client.unregister_system_shared_memory()
finally:
    shm.destroy_shared_memory_region(region)
out["index"] = sorted({m.name for m in client.get_model_repository_index().models})
out["ready"] = client.is_model_ready("mlp")
chunks = queue.Queue()
client.start_stream(callback=lambda result, error: chunks.put((result, error)))
prompt = triton.InferInput("text_input", [1], "BYTES")
prompt.set_data_from_numpy(np.array([b"The quick brown fox"], dtype=object))
params = {"max_tokens": 8, "stream": True, "temperature": "0"}
client.async_stream_infer("tinyllama", [prompt], parameters=params)
texts = []
while True:
    result, error = chunks.get(timeout=60)
    assert error is None, error
    texts.append(result.as_numpy("text_output"))
    if result.get_response().parameters["triton_final_response"].bool_param:
        break
client.stop_stream()
out["chunks"] = len(texts)
print(json.dumps(out))
"""


def _overlay_env() -> dict[str, str]:
    if not (OVERLAY / ".installed").exists():
        pytest.skip(f"{OVERLAY} is missing: `make install` builds it (the newest tritonclient)")
    return {"PYTHONPATH": str(OVERLAY)}


def test_the_newest_tritonclient_and_its_protobuf_drive_the_daemon(demo_store: Path) -> None:
    """`pip install -U tritonclient[grpc]` next to edged downgrades protobuf to 6.x: the daemon
    still starts (its stubs were generated for 6.31+) and the newest client infers, streams and
    reads the repository, in the same environment."""
    env = _overlay_env()
    daemon = DaemonProcess(demo_store, env=env).start()
    try:
        done = subprocess.run(
            [sys.executable, "-c", CLIENT, daemon.unix_url],
            capture_output=True,
            text=True,
            env={**os.environ, **env},
            timeout=300,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        out = json.loads(done.stdout.strip().splitlines()[-1])
        assert out["protobuf"].startswith("6."), out  # the overlay's runtime, not the venv's
        major, minor = map(int, out["tritonclient"].split(".")[:2])
        assert (major, minor) > (2, 41), out  # newer than what pip picks beside protobuf 7
        assert out["logits"] == [2, 10] and out["ready"] is True
        assert out["shm_equal"] is True
        assert {"mlp", "tinyllama"} <= set(out["index"])
        assert out["chunks"] >= 2
        # The daemon itself ran on the overlay's protobuf.
        probe = subprocess.run(
            [sys.executable, "-c", "import google.protobuf as p; print(p.__version__)"],
            capture_output=True, text=True, env={**os.environ, **env}, check=True,
        )  # fmt: skip
        assert probe.stdout.startswith("6.")
    finally:
        daemon.stop()


def _reflect(stub: Any, pb: Any, **request: Any) -> Any:
    (reply,) = list(
        stub.ServerReflectionInfo(iter([pb.ServerReflectionRequest(**request)]), timeout=10)
    )
    return reply


def test_health_and_reflection_speak_the_standard_protocols(demo_store: Path) -> None:
    daemon = DaemonProcess(demo_store).start()
    try:
        with grpc.insecure_channel(daemon.unix_url) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            serving = health_pb2.HealthCheckResponse.SERVING
            assert health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == serving
            name = "inference.GRPCInferenceService"
            assert (
                health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5).status
                == serving
            )
            with pytest.raises(grpc.RpcError) as err:
                health.Check(health_pb2.HealthCheckRequest(service="nope"), timeout=5)
            assert err.value.code() == grpc.StatusCode.NOT_FOUND
            watch = health.Watch(health_pb2.HealthCheckRequest(service="nope"), timeout=5)
            assert next(watch).status == health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
            watch.cancel()
            listed = health.List(health_pb2.HealthListRequest(), timeout=5).statuses
            assert listed[""].status == serving and name in listed

            for pb, stub in (
                (rpb, rpb_grpc.ServerReflectionStub(channel)),
                (rpb_alpha, rpb_alpha_grpc.ServerReflectionStub(channel)),
            ):
                services = {
                    s.name
                    for s in _reflect(stub, pb, list_services="").list_services_response.service
                }
                assert {name, "grpc.health.v1.Health", "edged.v1.Portfolio"} <= services
                reply = _reflect(stub, pb, file_containing_symbol=name)
                files = [
                    descriptor_pb2.FileDescriptorProto.FromString(raw)
                    for raw in reply.file_descriptor_response.file_descriptor_proto
                ]
                methods = {
                    m.name
                    for f in files
                    for s in f.service
                    if s.name == "GRPCInferenceService"
                    for m in s.method
                }
                assert {"ModelInfer", "ModelStreamInfer", "RepositoryIndex"} <= methods
                missing = _reflect(stub, pb, file_containing_symbol="no.such.Symbol")
                assert missing.error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]
    finally:
        daemon.stop()
