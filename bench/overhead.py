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
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

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


def minimal_server(socket_path: str, model_path: str, shape: str, inline: str = "") -> None:
    """Path (d): run_in_executor(session.run) on raw bytes, nothing else. With ``inline``:
    session.run on the event loop itself, on uvloop - what edged does with a sub-150 us model,
    minus the protocol: edged's p50 over it is what decode, validation, routing, leases and
    encoding cost, with the model's run (slower inside any gRPC server than back to back) on
    both sides."""
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

    async def run_inline(request: bytes, context: Any) -> bytes:
        x = np.frombuffer(request, np.float32).reshape(dims)
        return bytes(session.run(None, {"input": x})[0].tobytes())

    if inline:
        serve_bytes(socket_path, MINIMAL_METHOD, run_inline, uvloop=True)
    else:
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
    # Imported here: bench/peers.py imports this module beside tritonclient, whose stubs define
    # the same protobuf package (one descriptor pool cannot hold both).
    from edged.api import inference_pb2 as pb

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


def cpu_seconds(process: psutil.Process | None) -> float:
    """CPU time of a server's threads in ns resolution (/proc/PID/task/*/schedstat; psutil's
    cpu_times counts 10 ms ticks, too coarse for a few hundred requests). Only for processes
    whose threads live on (servers): an ended thread's time leaves the sum. This process's own
    time: time.process_time(), which keeps it."""
    if process is None:
        return 0.0
    total = 0
    task_dir = Path(f"/proc/{process.pid}/task")
    for task in task_dir.iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (OSError, IndexError, ValueError):
            continue  # a thread that ended meanwhile
    return total / 1e9


def measure(
    calls: dict[str, Callable[[], Any]],
    concurrency: int,
    requests: int,
    rounds: int,
    servers: dict[str, psutil.Process] | None = None,
) -> dict[str, dict[str, float]]:
    """Every path in turn, ``rounds`` times over, so drift on a shared machine hits all alike.
    Latency percentiles pool all rounds; throughput is the median of the rounds. CPU time per
    request, of this (client) process and of the path's server process, over all rounds."""
    servers = servers or {}
    latencies: dict[str, list[float]] = {label: [] for label in calls}
    rates: dict[str, list[float]] = {label: [] for label in calls}
    cpu = {label: [0.0, 0.0] for label in calls}
    for _ in range(rounds):
        for label, call in calls.items():
            server = servers.get(label)
            before = time.process_time(), cpu_seconds(server)
            lat, rate = run_load(call, concurrency, requests // rounds)
            cpu[label][0] += time.process_time() - before[0]
            cpu[label][1] += cpu_seconds(server) - before[1]
            latencies[label] += lat
            rates[label].append(rate)
    out = {}
    for label in calls:
        flat = sorted(latencies[label])
        # run_load's warm-up calls are inside the CPU window: count them.
        per_round = requests // rounds
        done = rounds * (per_round // concurrency * concurrency + min(50, per_round // 10))
        out[label] = {
            "p50_ms": statistics.median(flat) * 1e3,
            "p99_ms": flat[int(len(flat) * 0.99) - 1] * 1e3,
            "rps": statistics.median(rates[label]),
            "client_cpu_us": cpu[label][0] / done * 1e6,
            "server_cpu_us": cpu[label][1] / done * 1e6,
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
    parser.add_argument("--minimal-server", nargs="+", help=argparse.SUPPRESS)
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
    servers = {
        "echo (unix)": psutil.Process(echo.pid),
        "echo uvloop (unix)": psutil.Process(echo_uv.pid),
        "edged (unix)": psutil.Process(daemon.proc.pid if daemon.proc else 0),
        "edged (tcp)": psutil.Process(daemon.proc.pid if daemon.proc else 0),
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
            # The inline variant only where edged runs inline: the tiny model.
            minimal_kinds = {"minimal (unix)": ""}
            if name == "tiny":
                minimal_kinds["minimal inline (unix)"] = "inline"
            minimals: dict[str, subprocess.Popen[bytes]] = {}
            minimal_channels: dict[str, grpc.Channel] = {}
            for label, inline in minimal_kinds.items():
                sock = work / f"minimal-{name}{'-' + inline if inline else ''}.sock"
                command = [sys.executable, __file__, "--minimal-server", str(sock), model_path]
                command += [",".join(str(d) for d in x.shape), *([inline] if inline else [])]
                proc = subprocess.Popen(command, stdout=subprocess.PIPE)
                assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
                minimals[label] = proc
                minimal_channels[label] = grpc.insecure_channel(f"unix:{sock}")
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
            for label, channel in minimal_channels.items():
                stub = channel.unary_unary(MINIMAL_METHOD)
                calls[label] = lambda c=stub, b=raw: c(b, timeout=60)
                servers[label] = psutil.Process(minimals[label].pid)
            try:
                for concurrency in (1, 2):
                    for label, r in measure(calls, concurrency, n, args.rounds, servers).items():
                        rows.append((name, concurrency, label, r))
                        print(
                            f"{name:5} c={concurrency} {label:21} p50 {r['p50_ms']:7.3f} ms  "
                            f"p99 {r['p99_ms']:7.3f} ms  {r['rps']:8.1f} req/s  "
                            f"cpu client {r['client_cpu_us']:6.0f} us server "
                            f"{r['server_cpu_us']:6.0f} us",
                            flush=True,
                        )
            finally:
                for channel in minimal_channels.values():
                    channel.close()
                for proc in minimals.values():
                    proc.terminate()
                    proc.wait()
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
        "CPU columns: CPU time per request of the client process (for in-process: the model's",
        "run) and of the path's server process, all threads.",
        "",
        "| model | conc | path | p50 ms | p99 ms | req/s | client CPU us/req | server CPU us/req |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for model, c, label, r in rows:
        lines.append(
            f"| {model} | {c} | {label} | {r['p50_ms']:.3f} | {r['p99_ms']:.3f} | {r['rps']:.1f} "
            f"| {r['client_cpu_us']:.0f} | {r['server_cpu_us']:.0f} |"
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
    lines += [
        "",
        "The tiny model against *minimal inline* (a protocol-free uvloop server that runs the",
        "model on its event loop, as edged does for models under 150 us): edged's p50 over it",
        "is what its decode, validation, routing, leases and encoding add, the run on both sides.",
        "",
        "| conc | minimal inline p50 ms | edged (unix) p50 ms | edged over minimal inline |",
        "|---|---|---|---|",
    ]
    for c in (1, 2):
        inline_p50 = get("tiny", c, "minimal inline (unix)")["p50_ms"]
        edged_p50 = get("tiny", c, "edged (unix)")["p50_ms"]
        added = (edged_p50 - inline_p50) * 1e3
        lines.append(f"| {c} | {inline_p50:.3f} | {edged_p50:.3f} | {added:+.0f} us |")
    cores = os.cpu_count() or 1
    lines += [
        "",
        "CPU ceiling at concurrency 2: with every core busy, no server reaches more than",
        "cores / (CPU per request) requests/s. Counting the model's run as in-process costs it,",
        "and the client and server exactly as the echo floor costs them (a server that adds",
        "nothing to Python gRPC), the ceiling over in-process throughput is:",
        "",
        "| model | in-process CPU us/req | echo client + server CPU us/req | ceiling / in-proc |",
        "|---|---|---|---|",
    ]
    for model in MODELS:
        inproc, echo_r = get(model, 2, "in-process"), get(model, 2, "echo (unix)")
        grpc_cpu = echo_r["client_cpu_us"] + echo_r["server_cpu_us"]
        ceiling = cores / ((inproc["client_cpu_us"] + grpc_cpu) * 1e-6)
        lines.append(
            f"| {model} | {inproc['client_cpu_us']:.0f} | {grpc_cpu:.0f} | "
            f"{min(ceiling, inproc['rps']) / inproc['rps']:.2f} x |"
        )
    text = "\n".join(lines) + "\n"
    print()
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
