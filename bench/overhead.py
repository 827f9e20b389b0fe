"""What edged adds on the request path, against the floor of Python gRPC and in-process runs.

In one run, on the same machine, with the same client:

  (a) in-process: ``session.run`` on the same model file with the same options;
  (b) echo: a bare grpc.aio server in its own process that returns the request bytes
      (the floor of Python gRPC itself);
  (c) edged: ModelInfer over the unix socket and over TCP;
  (d) minimal: the least a Python gRPC model server can do, in its own process: a grpc.aio
      handler that reads raw float32 bytes, runs ``session.run`` on a worker thread and returns
      the output bytes (no protocol, no checks) - the floor of edged's architecture.

The client sends the same serialized ModelInferRequest bytes to (b) and (c) through the same
grpc channel code and does not parse the reply, so client costs are identical and the difference
is what the server does: decode, validation, routing, lease, run, encode.

    .venv/bin/python bench/overhead.py [--requests 2000] [--out bench/out/overhead.md]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import onnxruntime as ort

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edged.api import inference_pb2 as pb  # noqa: E402
from edged.demo import mlp_model  # noqa: E402
from edged.store.store import ModelStore  # noqa: E402
from tests.daemon import DaemonProcess  # noqa: E402

ECHO_METHOD = "/bench.Echo/Echo"
INFER_METHOD = "/inference.GRPCInferenceService/ModelInfer"
MINIMAL_METHOD = "/bench.Minimal/Run"

# name -> (layer sizes, batch). tiny: ~0.01 ms compute; mid: >= 5 ms compute on one thread.
MODELS = {
    "tiny": ((64, 256, 256, 10), 1),
    "mid": ((512, 2048, 2048, 2048, 512), 20),
}


def serve_bytes(socket_path: str, method: str, handler: Any, uvloop: bool = False) -> None:
    """A bare grpc.aio server with one unary bytes -> bytes method, until killed."""
    import asyncio

    async def main() -> None:
        server = grpc.aio.server(options=[("grpc.max_receive_message_length", 64 << 20)])
        service, _, name = method.strip("/").partition("/")
        generic = grpc.method_handlers_generic_handler(
            service, {name: grpc.unary_unary_rpc_method_handler(handler)}
        )
        server.add_generic_rpc_handlers((generic,))
        server.add_insecure_port(f"unix:{socket_path}")
        await server.start()
        print("ready", flush=True)
        await server.wait_for_termination()

    if uvloop:
        import uvloop as uv

        with asyncio.Runner(loop_factory=uv.new_event_loop) as runner:
            runner.run(main())
    else:
        asyncio.run(main())


def echo_server(socket_path: str, uvloop: bool = False) -> None:
    """Path (b), the floor: return the request bytes (on asyncio's loop; with ``uvloop``, on the
    loop edged runs on, shown beside it)."""

    async def echo(request: bytes, context: Any) -> bytes:
        return request

    serve_bytes(socket_path, ECHO_METHOD, echo, uvloop)


def minimal_server(socket_path: str, model_path: str, shape: str) -> None:
    """Path (d): run_in_executor(session.run) on raw bytes, nothing else."""
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    dims = tuple(int(d) for d in shape.split(","))
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(model_path, so, providers=["CPUExecutionProvider"])
    pool = ThreadPoolExecutor(4)

    async def run(request: bytes, context: Any) -> bytes:
        x = np.frombuffer(request, np.float32).reshape(dims)
        loop = asyncio.get_running_loop()
        out = await loop.run_in_executor(pool, session.run, None, {"input": x})
        return bytes(out[0].tobytes())

    serve_bytes(socket_path, MINIMAL_METHOD, run)


def build_store(work: Path) -> Path:
    root = work / "store"
    store = ModelStore(root)
    for name, (sizes, _) in MODELS.items():
        src = work / "src" / name
        src.mkdir(parents=True)
        mlp_model(src / "model.onnx", sizes)
        import hashlib

        data = (src / "model.onnx").read_bytes()
        manifest = {
            "schema": 1,
            "name": name,
            "version": "1",
            "variants": [
                {
                    "id": "fp32",
                    "format": "onnx",
                    "file": "model.onnx",
                    "sha256": hashlib.sha256(data).hexdigest(),
                    "size": len(data),
                    "quantization": "fp32",
                    "quality": 1.0,
                    "options": {"threads": 1},
                }
            ],
        }
        (src / "manifest.json").write_text(json.dumps(manifest))
        store.import_dir(src)
    return root


def request_bytes(name: str, x: np.ndarray) -> bytes:
    request = pb.ModelInferRequest(model_name=name)
    request.inputs.add(name="input", datatype="FP32", shape=x.shape)
    request.raw_input_contents.append(x.tobytes())
    return request.SerializeToString()


def run_load(call: Callable[[], Any], concurrency: int, requests: int) -> tuple[list[float], float]:
    """``requests`` calls spread over ``concurrency`` threads: (latencies, requests/s)."""
    for _ in range(min(50, requests // 10)):
        call()
    per_thread = requests // concurrency
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    barrier = threading.Barrier(concurrency + 1)

    def worker(i: int) -> None:
        out = latencies[i]
        barrier.wait()
        for _ in range(per_thread):
            start = time.perf_counter()
            call()
            out.append(time.perf_counter() - start)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(concurrency)]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    return [x for lat in latencies for x in lat], (per_thread * concurrency) / wall


def measure(
    calls: dict[str, Callable[[], Any]], concurrency: int, requests: int, rounds: int
) -> dict[str, dict[str, float]]:
    """Every path in turn, ``rounds`` times over, so drift on a shared machine hits all alike.
    Latency percentiles pool all rounds; throughput is the median of the rounds."""
    latencies: dict[str, list[float]] = {label: [] for label in calls}
    rates: dict[str, list[float]] = {label: [] for label in calls}
    for _ in range(rounds):
        for label, call in calls.items():
            lat, rate = run_load(call, concurrency, requests // rounds)
            latencies[label] += lat
            rates[label].append(rate)
    out = {}
    for label in calls:
        flat = sorted(latencies[label])
        out[label] = {
            "p50_ms": statistics.median(flat) * 1e3,
            "p99_ms": flat[int(len(flat) * 0.99) - 1] * 1e3,
            "rps": statistics.median(rates[label]),
        }
    return out


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--mid-requests", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", default=str(ROOT / "bench" / "out" / "overhead.md"))
    parser.add_argument("--echo-server", help=argparse.SUPPRESS)
    parser.add_argument("--echo-uvloop-server", help=argparse.SUPPRESS)
    parser.add_argument("--minimal-server", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.echo_server:
        echo_server(args.echo_server)
        return 0
    if args.echo_uvloop_server:
        echo_server(args.echo_uvloop_server, uvloop=True)
        return 0
    if args.minimal_server:
        minimal_server(*args.minimal_server)
        return 0

    work = Path(tempfile.mkdtemp(prefix="edged-bench-"))
    root = build_store(work)
    daemon = DaemonProcess(root, server__workers=4).start()
    echo_sock = work / "echo.sock"
    echo = subprocess.Popen(
        [sys.executable, __file__, "--echo-server", str(echo_sock)], stdout=subprocess.PIPE
    )
    assert echo.stdout is not None and echo.stdout.readline().strip() == b"ready"
    echo_uv_sock = work / "echo-uvloop.sock"
    echo_uv = subprocess.Popen(
        [sys.executable, __file__, "--echo-uvloop-server", str(echo_uv_sock)],
        stdout=subprocess.PIPE,
    )
    assert echo_uv.stdout is not None and echo_uv.stdout.readline().strip() == b"ready"
    channels = {
        "echo (unix)": grpc.insecure_channel(f"unix:{echo_sock}"),
        "echo uvloop (unix)": grpc.insecure_channel(f"unix:{echo_uv_sock}"),
        "edged (unix)": grpc.insecure_channel(daemon.unix_url),
        "edged (tcp)": grpc.insecure_channel(daemon.tcp_url),
    }
    rows: list[tuple[str, int, str, dict[str, float]]] = []
    try:
        for name, (sizes, batch) in MODELS.items():
            x = np.random.default_rng(0).standard_normal((batch, sizes[0])).astype(np.float32)
            body = request_bytes(name, x)
            n = args.requests if name == "tiny" else args.mid_requests
            manifest = ModelStore(root).manifest(name, "1")
            so = ort.SessionOptions()
            so.intra_op_num_threads = 1
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
            model_path = str(ModelStore(root).variant_path(manifest.variants[0]))
            minimal_sock = work / f"minimal-{name}.sock"
            minimal = subprocess.Popen(
                [
                    sys.executable,
                    __file__,
                    "--minimal-server",
                    str(minimal_sock),
                    model_path,
                    ",".join(str(d) for d in x.shape),
                ],
                stdout=subprocess.PIPE,
            )
            assert minimal.stdout is not None and minimal.stdout.readline().strip() == b"ready"
            minimal_channel = grpc.insecure_channel(f"unix:{minimal_sock}")
            session = ort.InferenceSession(
                model_path,
                so,
                providers=["CPUExecutionProvider"],
            )
            calls: dict[str, Callable[[], Any]] = {
                "in-process": lambda s=session, x=x: s.run(None, {"input": x}),
            }
            for label, channel in channels.items():
                method = ECHO_METHOD if label.startswith("echo") else INFER_METHOD
                stub = channel.unary_unary(method)
                calls[label] = lambda c=stub, b=body: c(b, timeout=60)
            raw = x.tobytes()
            minimal_stub = minimal_channel.unary_unary(MINIMAL_METHOD)
            calls["minimal (unix)"] = lambda c=minimal_stub, b=raw: c(b, timeout=60)
            try:
                for concurrency in (1, 2):
                    for label, r in measure(calls, concurrency, n, args.rounds).items():
                        rows.append((name, concurrency, label, r))
                        print(
                            f"{name:5} c={concurrency} {label:14} p50 {r['p50_ms']:7.3f} ms  "
                            f"p99 {r['p99_ms']:7.3f} ms  {r['rps']:8.1f} req/s",
                            flush=True,
                        )
            finally:
                minimal_channel.close()
                minimal.terminate()
                minimal.wait()
    finally:
        for channel in channels.values():
            channel.close()
        for server in (echo, echo_uv):
            server.terminate()
            server.wait()
        daemon.stop()
        shutil.rmtree(work, ignore_errors=True)

    def get(model: str, c: int, label: str) -> dict[str, float]:
        return next(r for m, cc, lab, r in rows if m == model and cc == c and lab == label)

    lines = [
        f"Machine: {os.cpu_count()} cores; {args.requests} tiny / {args.mid_requests} mid "
        f"requests per cell in {args.rounds} interleaved rounds; client and servers in "
        "separate processes; in-process = session.run in the client process.",
        "",
        "| model | conc | path | p50 ms | p99 ms | req/s |",
        "|---|---|---|---|---|---|",
    ]
    for model, c, label, r in rows:
        lines.append(
            f"| {model} | {c} | {label} | {r['p50_ms']:.3f} | {r['p99_ms']:.3f} | {r['rps']:.1f} |"
        )
    lines += [
        "",
        "Over echo = edged p50 - echo p50 (the issue's measure; for the mid model it includes the",
        "model's compute). Added = edged p50 - echo p50 - in-process p50: what edged adds beyond",
        "the gRPC floor and the model's own compute.",
        "",
        "| model | conc | unix: over echo | unix: over uvloop echo | unix: added | tcp: added | "
        "unix req/s / in-process | unix req/s / minimal |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for model in MODELS:
        for c in (1, 2):
            echo_p50 = get(model, c, "echo (unix)")["p50_ms"]
            inproc = get(model, c, "in-process")
            unix, tcp = get(model, c, "edged (unix)"), get(model, c, "edged (tcp)")
            over_echo = (unix["p50_ms"] - echo_p50) * 1e3
            over_uv = (unix["p50_ms"] - get(model, c, "echo uvloop (unix)")["p50_ms"]) * 1e3
            added_unix = (unix["p50_ms"] - echo_p50 - inproc["p50_ms"]) * 1e3
            added_tcp = (tcp["p50_ms"] - echo_p50 - inproc["p50_ms"]) * 1e3
            ratio = unix["rps"] / inproc["rps"]
            vs_minimal = unix["rps"] / get(model, c, "minimal (unix)")["rps"]
            lines.append(
                f"| {model} | {c} | {over_echo:+.0f} us | {over_uv:+.0f} us | "
                f"{added_unix:+.0f} us | {added_tcp:+.0f} us | {ratio:.2f} x | {vs_minimal:.2f} x |"
            )
    text = "\n".join(lines) + "\n"
    print()
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
