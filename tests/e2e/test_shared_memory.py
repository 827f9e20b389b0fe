"""Triton's system shared-memory extension, driven by tritonclient's own utilities (2.41's C
library here; the newest release's multiprocessing-based one in test_clients.py)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as triton
import tritonclient.utils.shared_memory as shm
from tritonclient.utils import InferenceServerException, triton_to_np_dtype

from tests.daemon import DaemonProcess, wait_for

pytestmark = pytest.mark.e2e

SHAPE = (3, 64)
INPUT_BYTES = 3 * 64 * 4


def _status(error: InferenceServerException) -> str:
    return str(error.status())


@pytest.fixture(params=["unix", "tcp"])
def client(request: pytest.FixtureRequest, module_daemon: DaemonProcess) -> Iterator[Any]:
    url = module_daemon.unix_url if request.param == "unix" else module_daemon.tcp_url
    c = triton.InferenceServerClient(url=url)
    yield c
    c.unregister_system_shared_memory()
    c.close()


@pytest.fixture
def regions() -> Iterator[list[Any]]:
    handles: list[Any] = []
    yield handles
    for handle in handles:
        shm.destroy_shared_memory_region(handle)


def _region(handles: list[Any], size: int) -> tuple[Any, str, str]:
    name = f"r{uuid.uuid4().hex[:10]}"
    key = f"/edged-test-{name}"
    handle = shm.create_shared_memory_region(name, key, size)
    handles.append(handle)
    return handle, name, key


def _wire(client: Any, data: np.ndarray) -> np.ndarray:  # type: ignore[type-arg]
    tensor = triton.InferInput("input", list(data.shape), "FP32")
    tensor.set_data_from_numpy(data)
    return client.infer("mlp", [tensor]).as_numpy("logits")  # type: ignore[no-any-return]


def test_shared_memory_infer_returns_what_the_wire_returns(client: Any, regions: list[Any]) -> None:
    data = np.random.default_rng(7).standard_normal(SHAPE).astype(np.float32)
    expected = _wire(client, data)
    out_bytes = expected.nbytes
    # One region holds the input and, further on, the output: offsets are honoured both ways.
    handle, name, key = _region(regions, 4096 + INPUT_BYTES + out_bytes)
    shm.set_shared_memory_region(handle, [data], offset=4096)
    client.register_system_shared_memory(name, key, 4096 + INPUT_BYTES + out_bytes)

    tensor = triton.InferInput("input", list(SHAPE), "FP32")
    tensor.set_shared_memory(name, INPUT_BYTES, offset=4096)
    output = triton.InferRequestedOutput("logits")
    output.set_shared_memory(name, out_bytes, offset=4096 + INPUT_BYTES)
    result = client.infer("mlp", [tensor], outputs=[output])
    meta = result.get_output("logits")
    got = shm.get_contents_as_numpy(
        handle, triton_to_np_dtype(meta.datatype), list(meta.shape), offset=4096 + INPUT_BYTES
    )
    np.testing.assert_array_equal(got, expected)
    # Input in the region, output on the wire: the same again.
    wire_out = client.infer("mlp", [tensor]).as_numpy("logits")
    np.testing.assert_array_equal(wire_out, expected)

    status = client.get_system_shared_memory_status(as_json=True)
    assert status["regions"][name]["key"] == key
    assert int(status["regions"][name]["byte_size"]) == 4096 + INPUT_BYTES + out_bytes
    client.unregister_system_shared_memory(name)
    assert name not in client.get_system_shared_memory_status(as_json=True).get("regions", {})


def test_every_bad_region_reference_is_refused_with_a_clear_error(
    client: Any, regions: list[Any], module_daemon: DaemonProcess
) -> None:
    handle, name, key = _region(regions, INPUT_BYTES)
    shm.set_shared_memory_region(handle, [np.ones(SHAPE, np.float32)])
    client.register_system_shared_memory(name, key, INPUT_BYTES)

    def refused(
        region: str, size: int, offset: int = 0, out: tuple[str, int, int] | None = None
    ) -> InferenceServerException:
        tensor = triton.InferInput("input", list(SHAPE), "FP32")
        tensor.set_shared_memory(region, size, offset=offset)
        outputs = None
        if out is not None:
            requested = triton.InferRequestedOutput("logits")
            requested.set_shared_memory(out[0], out[1], offset=out[2])
            outputs = [requested]
        with pytest.raises(InferenceServerException) as caught:
            client.infer("mlp", [tensor], outputs=outputs)
        return caught.value

    unknown = refused("no-such-region", INPUT_BYTES)
    assert _status(unknown) == "StatusCode.NOT_FOUND" and "no-such-region" in unknown.message()
    past = refused(name, INPUT_BYTES, offset=64)
    assert _status(past) == "StatusCode.INVALID_ARGUMENT" and "past the end" in past.message()
    wrong = refused(name, INPUT_BYTES - 4)
    assert _status(wrong) == "StatusCode.INVALID_ARGUMENT" and "bytes" in wrong.message()
    small = refused(name, INPUT_BYTES, out=(name, 8, 0))
    assert _status(small) == "StatusCode.INVALID_ARGUMENT" and "too small" in small.message()
    bad_out = refused(name, INPUT_BYTES, out=("nowhere", 8, 0))
    assert _status(bad_out) == "StatusCode.NOT_FOUND"

    def register_refused(region: str, region_key: str, size: int, offset: int = 0) -> Any:
        with pytest.raises(InferenceServerException) as caught:
            client.register_system_shared_memory(region, region_key, size, offset=offset)
        return caught.value

    assert _status(register_refused(name, key, INPUT_BYTES)) == "StatusCode.ALREADY_EXISTS"
    assert _status(register_refused("x", "/edged-absent-object", 8)) == "StatusCode.NOT_FOUND"
    climb = register_refused("x", "/../etc/passwd", 8)
    assert _status(climb) == "StatusCode.INVALID_ARGUMENT" and "key" in climb.message()
    long = register_refused("x", key, INPUT_BYTES, offset=8)
    assert _status(long) == "StatusCode.INVALID_ARGUMENT" and "past the end" in long.message()
    assert _status(register_refused("x", key, 0)) == "StatusCode.INVALID_ARGUMENT"
    with pytest.raises(InferenceServerException) as cuda:
        client.get_cuda_shared_memory_status()
    assert _status(cuda.value) == "StatusCode.UNAVAILABLE" and "CPU" in cuda.value.message()

    # The client truncates its object under a registered region: that request fails, the
    # daemon does not (a mapped read there would be SIGBUS).
    os.truncate(Path("/dev/shm") / key.lstrip("/"), 16)
    cut = refused(name, INPUT_BYTES)
    assert _status(cut) == "StatusCode.INVALID_ARGUMENT" and "truncated" in cut.message()
    assert client.is_server_live()
    # A closed region is gone for good.
    client.unregister_system_shared_memory(name)
    assert _status(refused(name, INPUT_BYTES)) == "StatusCode.NOT_FOUND"


def _pid(daemon: DaemonProcess) -> int:
    assert daemon.proc is not None
    return daemon.proc.pid


def _held_descriptors(pid: int, key: str) -> int:
    target = f"/dev/shm/{key.lstrip('/')}"
    count = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            link = os.readlink(fd)
        except OSError:
            continue
        count += link.startswith(target)
    return count


def test_regions_belong_to_their_client_and_go_with_it(
    module_daemon: DaemonProcess, regions: list[Any]
) -> None:
    handle, name, key = _region(regions, INPUT_BYTES)
    shm.set_shared_memory_region(handle, [np.ones(SHAPE, np.float32)])
    owner = triton.InferenceServerClient(url=module_daemon.tcp_url)
    # Its own connection, as another process would have (channels in one process share one).
    other = triton.InferenceServerClient(
        url=module_daemon.tcp_url, channel_args=[("grpc.use_local_subchannel_pool", 1)]
    )
    try:
        owner.register_system_shared_memory(name, key, INPUT_BYTES)
        assert _held_descriptors(_pid(module_daemon), key) == 1
        # Another connection neither sees nor uses it.
        assert name not in other.get_system_shared_memory_status(as_json=True).get("regions", {})
        tensor = triton.InferInput("input", list(SHAPE), "FP32")
        tensor.set_shared_memory(name, INPUT_BYTES)
        with pytest.raises(InferenceServerException) as caught:
            other.infer("mlp", [tensor])
        assert _status(caught.value) == "StatusCode.NOT_FOUND"
        assert owner.infer("mlp", [tensor]).as_numpy("logits").shape == (3, 10)
    finally:
        owner.close()
    # The owner's connection is gone: the next sweep (any region call) lets go of the object.
    wait_for(
        lambda: (
            other.get_system_shared_memory_status() is not None
            and _held_descriptors(_pid(module_daemon), key) == 0
        ),
        timeout=30,
        what="the region of a closed connection released",
    )
    other.close()


def test_an_unlinked_object_is_unregistered(
    module_daemon: DaemonProcess, regions: list[Any]
) -> None:
    client = triton.InferenceServerClient(url=module_daemon.unix_url)
    _, name, key = _region(regions, 64)
    client.register_system_shared_memory(name, key, 64)
    assert name in client.get_system_shared_memory_status(as_json=True)["regions"]
    shm.destroy_shared_memory_region(regions.pop())  # what a client does on its way out
    assert name not in client.get_system_shared_memory_status(as_json=True).get("regions", {})
    assert _held_descriptors(_pid(module_daemon), key) == 0
    client.close()
