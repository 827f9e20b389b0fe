"""edged against the Python model servers a user would pick instead, side by side in one sitting.

Servers, each in its own virtual environment under var/bench-venvs (created here on first use,
from PyPI), all on the same ONNX files with the same onnxruntime settings (one intra-op thread,
no spinning):

  - Seldon MLServer 1.7.1 with a custom runtime written as its documentation shows (an MLModel
    whose predict decodes with NumpyCodec and calls session.run), twice: with MLServer's
    defaults (inference in a parallel worker process) and with parallel workers off (inference
    on its event loop);
  - KServe 0.21's Python model server (a kserve.Model whose predict calls session.run);
  - edged (the daemon, its store holding the same files);

and ``session.run`` in this process as the ceiling. The client is the same for all: tritonclient
(the newest release, from the Makefile's overlay when it is there) over TCP on loopback. Each
cell (model x concurrency) runs every server in turn, ``--rounds`` times over, so drift on a
shared machine hits all alike; throughput is the median of the rounds, latency percentiles pool
all rounds.

    .venv/bin/python bench/peers.py [--rounds 4] [--requests 1200]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
OVERLAY = ROOT / ".venv" / "tritonclient-newest"
if OVERLAY.is_dir() and os.environ.get("EDGED_BENCH_OVERLAY") != "1":
    # Re-run with the newest tritonclient (and its protobuf) first on the path.
    env = {**os.environ, "EDGED_BENCH_OVERLAY": "1", "PYTHONPATH": str(OVERLAY)}
    os.execve(sys.executable, [sys.executable, *sys.argv], env)
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import psutil  # noqa: E402
import tritonclient.grpc as triton  # noqa: E402
import tritonclient.utils.shared_memory as shm  # noqa: E402

from bench.overhead import MODELS, build_store, measure  # noqa: E402
from edged.store.store import ModelStore  # noqa: E402
from tests.daemon import DaemonProcess, free_port, wait_for  # noqa: E402

VENVS = ROOT / "var" / "bench-venvs"
PEERS = {
    # uvloop 0.22+ breaks MLServer 1.7.1's parallel workers (get_event_loop in a fresh process).
    "mlserver": ["mlserver==1.7.1", "onnxruntime", "uvloop<0.22"],
    "kserve": ["kserve==0.21.0", "onnxruntime"],
}

MLSERVER_RUNTIME = """
import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse


class OnnxModel(MLModel):
    async def load(self) -> bool:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._session = ort.InferenceSession(
            self.settings.parameters.uri, options, providers=["CPUExecutionProvider"]
        )
        self._input = self._session.get_inputs()[0].name
        self._output = self._session.get_outputs()[0].name
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        x = NumpyCodec.decode_input(payload.inputs[0])
        (y,) = self._session.run(None, {self._input: x})
        return InferenceResponse(
            model_name=self.name, outputs=[NumpyCodec.encode_output(self._output, y)]
        )
"""

KSERVE_SERVER = """
import sys
import onnxruntime as ort
from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer


class OnnxModel(Model):
    def __init__(self, name, path):
        super().__init__(name)
        self.path = path
        self.load()

    def load(self):
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(self.path, options, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name
        self.output = self.session.get_outputs()[0].name
        self.ready = True

    def predict(self, payload: InferRequest, headers=None) -> InferResponse:
        x = payload.inputs[0].as_numpy()
        (y,) = self.session.run(None, {self.input: x})
        out = InferOutput(name=self.output, shape=list(y.shape), datatype="FP32")
        out.set_data_from_numpy(y)
        return InferResponse(model_name=self.name, infer_outputs=[out], response_id=payload.id)


if __name__ == "__main__":
    http, grpc_port = int(sys.argv[1]), int(sys.argv[2])
    models = [OnnxModel(arg.split("=")[0], arg.split("=")[1]) for arg in sys.argv[3:]]
    ModelServer(
        http_port=http, grpc_port=grpc_port, workers=1, enable_latency_logging=False
    ).start(models)
"""


def venv(name: str) -> Path:
    """The peer's own environment, created and installed from PyPI on first use."""
    python = VENVS / name / "bin" / "python"
    if not (VENVS / name / ".installed").exists():
        print(f"installing {name} into {VENVS / name} ...", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(VENVS / name)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *PEERS[name]], check=True)
        (VENVS / name / ".installed").touch()
    return python


def version_of(python: Path, package: str) -> str:
    done = subprocess.run(
        [str(python), "-c", f"from importlib.metadata import version; print(version({package!r}))"],
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip()


class Peer:
    def __init__(self, label: str, argv: list[str], cwd: Path, grpc_port: int) -> None:
        self.label, self.url = label, f"127.0.0.1:{grpc_port}"
        log_dir = ROOT / "bench" / "out" / "peers-logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log = (log_dir / f"{label}.log").open("wb")
        self.proc = subprocess.Popen(argv, cwd=cwd, stdout=self.log, stderr=subprocess.STDOUT)

    def wait_ready(self, models: list[str]) -> None:
        client = triton.InferenceServerClient(url=self.url)

        def ready() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.label} exited; see its log {self.log.name}")
            try:
                return all(client.is_model_ready(m) for m in models)
            except Exception:
                return False

        wait_for(ready, timeout=180, what=f"{self.label} ready")
        client.close()

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def mlserver(work: Path, store: ModelStore, parallel: bool) -> Peer:
    label = "mlserver" if parallel else "mlserver-inline"
    home = work / label
    home.mkdir()
    (home / "runtime.py").write_text(MLSERVER_RUNTIME)
    grpc_port = free_port()
    settings = {
        "http_port": free_port(),
        "grpc_port": grpc_port,
        "metrics_port": free_port(),
        "debug": False,
    }
    if not parallel:
        settings["parallel_workers"] = 0
    (home / "settings.json").write_text(json.dumps(settings))
    for name in MODELS:
        path = store.variant_path(store.manifest(name, "1").variants[0])
        (home / name).mkdir()
        (home / name / "model-settings.json").write_text(
            json.dumps(
                {
                    "name": name,
                    "implementation": "runtime.OnnxModel",
                    "parameters": {"uri": str(path)},
                }
            )
        )
    mlserver_bin = venv("mlserver").parent / "mlserver"
    return Peer(label, [str(mlserver_bin), "start", str(home)], home, grpc_port)


def kserve(work: Path, store: ModelStore) -> Peer:
    home = work / "kserve"
    home.mkdir()
    (home / "server.py").write_text(KSERVE_SERVER)
    grpc_port = free_port()
    models = [f"{n}={store.variant_path(store.manifest(n, '1').variants[0])}" for n in MODELS]
    argv = [str(venv("kserve")), "server.py", str(free_port()), str(grpc_port), *models]
    return Peer("kserve", argv, home, grpc_port)


def expected_shape(session: ort.InferenceSession, x: Any) -> tuple[int, ...]:
    return tuple(session.run(None, {"input": x})[0].shape)


def shm_call(url: str, model: str, x: Any, out_shape: tuple[int, ...]) -> Any:
    """ModelInfer over the unix socket with the input and output in system shared memory, the
    way an on-device client passes large tensors: one region per client thread, registered
    once; the input is written into it and the output read from it on every call."""
    client = triton.InferenceServerClient(url=url)
    local = threading.local()
    slots = itertools.count()
    out_bytes = int(np.prod(out_shape)) * 4
    regions: list[Any] = []

    def call() -> Any:
        if not hasattr(local, "region"):
            name = f"bench-{os.getpid()}-{next(slots)}"
            local.region = shm.create_shared_memory_region(name, "/" + name, x.nbytes + out_bytes)
            regions.append(local.region)
            client.register_system_shared_memory(name, "/" + name, x.nbytes + out_bytes)
            local.tensor = triton.InferInput("input", list(x.shape), "FP32")
            local.tensor.set_shared_memory(name, x.nbytes)
            local.output = triton.InferRequestedOutput("logits")
            local.output.set_shared_memory(name, out_bytes, offset=x.nbytes)
        shm.set_shared_memory_region(local.region, [x])
        client.infer(model, [local.tensor], outputs=[local.output])
        return shm.get_contents_as_numpy(local.region, np.float32, out_shape, offset=x.nbytes)

    call.regions = regions  # type: ignore[attr-defined]
    return call


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--requests", type=int, default=1200, help="tiny model, per cell")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "peers.json")
    parser.add_argument("--peers", default="mlserver,mlserver-inline,kserve")
    parser.add_argument("--models", default=",".join(MODELS))
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="edged-peers-"))
    peers: list[Peer] = []
    daemon = None
    try:
        root = build_store(work)
        store = ModelStore(root)
        wanted = set(args.peers.split(",")) if args.peers else set()
        peers = []
        if "mlserver" in wanted:
            peers.append(mlserver(work, store, True))
        if "mlserver-inline" in wanted:
            peers.append(mlserver(work, store, False))
        if "kserve" in wanted:
            peers.append(kserve(work, store))
        daemon = DaemonProcess(root).start()
        for peer in peers:
            peer.wait_ready(list(MODELS))
        urls = {"edged": daemon.tcp_url, **{p.label: p.url for p in peers}}
        urls["edged unix"] = daemon.unix_url
        processes = {"edged": psutil.Process(daemon.proc.pid)}  # type: ignore[union-attr]
        processes.update({p.label: psutil.Process(p.proc.pid) for p in peers})
        processes["edged unix"] = processes["edged unix shm"] = processes["edged"]
        versions = {"tritonclient": version_of(Path(sys.executable), "tritonclient")}
        for name in PEERS:
            if any(p.label.startswith(name) for p in peers):
                versions[name] = version_of(venv(name), name)
        results: dict[str, Any] = {"versions": versions, "cells": {}}
        print(json.dumps(versions))
        rng = np.random.default_rng(0)
        for model, (sizes, batch) in MODELS.items():
            if model not in args.models.split(","):
                continue
            x = rng.standard_normal((batch, sizes[0])).astype(np.float32)
            path = store.variant_path(store.manifest(model, "1").variants[0])
            options = ort.SessionOptions()
            options.intra_op_num_threads = 1
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            clients = {label: triton.InferenceServerClient(url=url) for label, url in urls.items()}

            def call_for(label: str, model: str = model, x: Any = x, clients: Any = clients) -> Any:
                client = clients[label]
                tensor = triton.InferInput("input", list(x.shape), "FP32")
                tensor.set_data_from_numpy(x)
                return lambda: client.infer(model, [tensor]).as_numpy("logits")

            calls = {"in-process": lambda s=session, x=x: s.run(None, {"input": x})}
            calls.update({label: call_for(label) for label in urls if label != "edged unix"})
            if model == "mid":
                # The same request on the unix socket, in the message and by shared memory.
                calls["edged unix"] = call_for("edged unix")
                shape = expected_shape(session, x)
                calls["edged unix shm"] = shm_call(daemon.unix_url, model, x, shape)
            expected = session.run(None, {"input": x})[0]
            for label, call in calls.items():
                if label != "in-process":
                    np.testing.assert_allclose(call(), expected, rtol=1e-4, atol=1e-5)
            requests = args.requests if model == "tiny" else max(args.requests // 8, 40)
            for concurrency in (1, 2):
                cell = measure(calls, concurrency, requests * args.rounds, args.rounds, processes)
                results["cells"][f"{model} c={concurrency}"] = cell
                print(f"\n{model}, concurrency {concurrency}")
                best_peer = max(
                    (lbl for lbl in cell if lbl != "in-process" and not lbl.startswith("edged")),
                    key=lambda lbl: cell[lbl]["rps"],
                )
                for label, row in cell.items():
                    ratio = row["rps"] / cell[best_peer]["rps"]
                    ceiling = row["rps"] / cell["in-process"]["rps"]
                    print(
                        f"  {label:16s} {row['rps']:8.1f} req/s  p50 {row['p50_ms']:7.3f} ms  "
                        f"p99 {row['p99_ms']:7.3f} ms  cpu/req client {row['client_cpu_us']:6.0f}"
                        f" server {row['server_cpu_us']:6.0f} us  {ratio:5.2f}x {best_peer}  "
                        f"{ceiling:5.2f}x in-process"
                    )
                # What two cores allow when client and server share them: each request costs
                # its client's and its server's CPU (in-process pays neither protocol side).
                edged = cell["edged"]
                cpu = (edged["client_cpu_us"] + edged["server_cpu_us"]) / 1e6
                bound = min(concurrency, os.cpu_count() or 1) / cpu if cpu else 0.0
                print(f"  two-core bound for edged's wire path: {bound:.1f} req/s")
                cell["edged"]["cpu_bound_rps"] = bound
            for client in clients.values():
                client.close()
            for region in getattr(calls.get("edged unix shm"), "regions", []):
                shm.destroy_shared_memory_region(region)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2))
        print(f"\nwritten {args.out}")
    finally:
        if daemon is not None:
            daemon.stop()
        for peer in peers:
            peer.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
