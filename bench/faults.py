"""The fault campaign at length (issue 17): fuzzed requests against the daemon, kill -9 at random
instants of imports and reloads, and a bystander model's latency while others abuse the daemon.

1. Fuzz: ``--fuzz`` ModelInfer requests built from the protocol's structure with hostile values
   (tests/e2e/test_fuzz.py's generator, here a seeded numpy one so that it runs unattended);
   counts the statuses, any INTERNAL/UNKNOWN, whether the daemon lived, and its RSS growth
   after the first thousand cases.
2. kill -9: ``--kills`` imports of a version, each killed at a random instant, and a fifth as
   many SIGHUP re-reads with a promotion under way; after each the store must hold whole
   versions only and (for the daemon) a committed version must serve after restart.
3. Bystander: the tiny ``mlp`` model's p99 under steady load, then while (a) 512 KiB prompts and
   long generations are abandoned, (b) a client pauses a stream while the model is evicted and
   loaded, (c) large requests are refused. Ratio to the steady p99. The same phases against
   bench/minimal_peer.py (the least a one-process Python server can do for this traffic),
   interleaved with edged's: the bound a bystander in such a process can reach.

    .venv/bin/python bench/faults.py [--fuzz 100000] [--kills 200]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import grpc  # noqa: E402
import numpy as np  # noqa: E402
import psutil  # noqa: E402
from tritonclient.grpc import service_pb2 as pb  # noqa: E402
from tritonclient.grpc import service_pb2_grpc as pb_grpc  # noqa: E402

from edged.demo import build_demo  # noqa: E402
from edged.store.store import ModelStore  # noqa: E402
from tests.conftest import import_demo  # noqa: E402
from tests.daemon import DaemonProcess  # noqa: E402
from tests.portfolios import mlp_family, store_problems  # noqa: E402

DATATYPES = ["FP32", "FP16", "INT64", "INT8", "UINT8", "BOOL", "BYTES", "FP64", "BF16", "??"]
MODELS = ["mlp", "cnn", "tinyllama", "nope", "", "../x"]
NAMES = ["input", "image", "text_input", "logits", "", "x" * 300, "é"]
DIMS = [0, 1, 2, 3, 64, 28, -1, -7, 70, 2**31, 2**62, -(2**63), 2**63 - 1]
FINE = {"OK", "INVALID_ARGUMENT", "NOT_FOUND", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION"}


def fuzzed(rng: random.Random) -> Any:
    request = pb.ModelInferRequest(model_name=rng.choice(MODELS))
    if rng.random() < 0.2:
        request.model_version = rng.choice(["1", "7", "-1", "x" * 200])
    for _ in range(rng.choice([0, 1, 1, 1, 2, 3])):
        shape = [rng.choice(DIMS) for _ in range(rng.choice([0, 1, 2, 4, 65]))]
        tensor = request.inputs.add(
            name=rng.choice(NAMES), datatype=rng.choice(DATATYPES), shape=shape
        )
        kind = rng.random()
        if kind < 0.5:
            request.raw_input_contents.append(rng.randbytes(rng.choice([0, 4, 256, 768, 3136])))
        elif kind < 0.7:
            tensor.contents.fp32_contents.extend(rng.random() for _ in range(rng.randint(0, 70)))
        elif kind < 0.9:
            tensor.contents.bytes_contents.extend(
                rng.randbytes(rng.randint(0, 30)) for _ in range(rng.randint(0, 5))
            )
        else:
            tensor.parameters["shared_memory_region"].string_param = rng.choice(NAMES)
            tensor.parameters["shared_memory_byte_size"].int64_param = rng.choice(DIMS)
    for key in rng.sample(["max_tokens", "temperature", "stream", "x"], rng.randint(0, 2)):
        value = rng.choice([0, 1, 2, 8193, -5, 2**62, "0.5", "x", True, 0.7, float("nan")])
        if isinstance(value, bool):
            request.parameters[key].bool_param = value
        elif isinstance(value, int):
            request.parameters[key].int64_param = value
        elif isinstance(value, float):
            request.parameters[key].double_param = value
        else:
            request.parameters[key].string_param = value
    if request.model_name == "tinyllama" and "max_tokens" not in request.parameters:
        request.parameters["max_tokens"].int64_param = 4
    return request


def fuzz(daemon: DaemonProcess, cases: int) -> dict[str, Any]:
    assert daemon.proc is not None
    process = psutil.Process(daemon.proc.pid)
    rng = random.Random(17)
    codes: Counter[str] = Counter()
    bad: list[str] = []
    rss_after_warmup = 0
    start = time.perf_counter()
    with grpc.insecure_channel(daemon.unix_url) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        for i in range(cases):
            try:
                stub.ModelInfer(fuzzed(rng), timeout=60)
                codes["OK"] += 1
            except grpc.RpcError as e:
                name = e.code().name
                codes[name] += 1
                if name not in FINE and len(bad) < 10:
                    bad.append(f"{name}: {(e.details() or '')[:200]}")
            if i == 1000:
                rss_after_warmup = process.memory_info().rss
            if daemon.proc.poll() is not None:
                break
    alive = daemon.proc.poll() is None
    rss_end = process.memory_info().rss if alive else 0
    return {
        "cases": sum(codes.values()),
        "seconds": time.perf_counter() - start,
        "codes": dict(codes),
        "crashes": 0 if alive else 1,
        "undefined": sum(v for k, v in codes.items() if k not in FINE),
        "examples": bad,
        "rss_growth_mb": (rss_end - rss_after_warmup) / 2**20 if alive else None,
    }


def kill_imports(work: Path, trials: int) -> dict[str, Any]:
    src = mlp_family(work / "src", "killed", (256, 2048, 2048, 10), seed=2)
    root = work / "kstore"
    config = work / "k.toml"
    config.write_text(f'[store]\npath = "{root}"\n')
    rng = random.Random(11)
    argv = [sys.executable, "-m", "edged", "import", "--no-validate", str(src), "--config"]
    broken = 0
    for _ in range(trials):
        proc = subprocess.Popen([*argv, str(config)], stdout=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.2, 1.4))  # start-up takes ~0.6 s, the copy ~1 s
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if store_problems(root) or ModelStore(root).versions("killed") not in ([], ["1"]):
            broken += 1
        if ModelStore(root).versions("killed"):
            shutil.rmtree(root)
    return {"trials": trials, "inconsistent": broken}


def kill_reloads(work: Path, trials: int) -> dict[str, Any]:
    store = ModelStore(work / "rstore")
    store.import_dir(mlp_family(work / "rsrc", "m", (64, 256, 10), seed=1))
    daemon = DaemonProcess(store.root, preload__enabled=False).start()
    rng = random.Random(5)
    broken = not_serving = 0
    try:
        for trial in range(trials):
            version = str(trial + 2)
            directory = mlp_family(
                work / f"rsrc{version}", "m", (64, 256, 10), seed=trial, version=version
            )
            store.import_dir(directory, activate=True)
            assert daemon.proc is not None
            daemon.proc.send_signal(signal.SIGHUP)
            time.sleep(rng.uniform(0.0, 3.0))
            daemon.kill()
            daemon.start()
            if store_problems(store.root, recover=False):
                broken += 1
            with grpc.insecure_channel(daemon.unix_url) as channel:
                request = pb.ModelInferRequest(model_name="m")
                request.inputs.add(name="input", datatype="FP32", shape=[1, 64])
                request.raw_input_contents.append(np.ones((1, 64), np.float32).tobytes())
                try:
                    reply = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(
                        request, timeout=60
                    )
                    if reply.model_version not in store.versions("m"):
                        not_serving += 1
                except grpc.RpcError:
                    not_serving += 1
    finally:
        daemon.stop()
    return {"trials": trials, "inconsistent": broken, "not_serving": not_serving}


class Bystander:
    """The tiny model, one request at a time, from a process of its own (as an on-device
    application would be: in this process its client would wait for the abusers' client threads
    on this interpreter's GIL). Latencies come back with their start times; perf_counter is
    CLOCK_MONOTONIC, the same clock in both processes."""

    def __init__(self, url: str) -> None:
        context = multiprocessing.get_context("spawn")
        self._stop = context.Event()
        self._receive, send = context.Pipe(duplex=False)
        self._process = context.Process(
            target=_bystander, args=(url, self._stop, send), daemon=True
        )
        self.samples: list[tuple[float, float]] = []
        self.failed = 0

    def start(self) -> None:
        self._process.start()

    def stop(self) -> None:
        self._stop.set()
        if self._receive.poll(30):
            self.samples, self.failed = self._receive.recv()
        self._process.join(15)

    def p99(self, since: float, until: float) -> float:
        window = sorted(s for t, s in self.samples if since <= t < until)
        return window[int(len(window) * 0.99) - 1] * 1e3 if len(window) > 100 else float("nan")


def _bystander(url: str, stop: Any, send: Any) -> None:
    request = pb.ModelInferRequest(model_name="mlp")
    request.inputs.add(name="input", datatype="FP32", shape=[1, 64])
    request.raw_input_contents.append(np.ones((1, 64), np.float32).tobytes())
    samples: list[tuple[float, float]] = []
    failed = 0
    with grpc.insecure_channel(url) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        while not stop.is_set():
            start = time.perf_counter()
            try:
                stub.ModelInfer(request, timeout=10)
                samples.append((start, time.perf_counter() - start))
            except grpc.RpcError:
                failed += 1
            time.sleep(0.002)
    send.send((samples, failed))


def abuse(url: str, admin_url: str, seconds: float) -> dict[str, float]:
    bystander = Bystander(url)
    bystander.start()
    time.sleep(2)
    marks: dict[str, tuple[float, float]] = {}
    start = time.perf_counter()
    time.sleep(seconds)
    marks["steady"] = (start, time.perf_counter())
    with grpc.insecure_channel(url) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)

        def generate(prompt: bytes, tokens: int) -> Any:
            request = pb.ModelInferRequest(model_name="tinyllama")
            request.inputs.add(name="text_input", datatype="BYTES", shape=[1])
            request.inputs[0].contents.bytes_contents.append(prompt)
            request.parameters["max_tokens"].int64_param = tokens
            return request

        start = time.perf_counter()
        while time.perf_counter() - start < seconds:
            futures = [stub.ModelInfer.future(generate(b"x" * 512 * 1024, 8), timeout=1)]
            futures += [stub.ModelInfer.future(generate(b"hi", 8192), timeout=1) for _ in range(4)]
            for f in futures:
                with contextlib.suppress(grpc.RpcError):  # abandoned, as meant
                    f.result()
        marks["long prompts, abandoned"] = (start, time.perf_counter())

        start = time.perf_counter()
        with grpc.insecure_channel(admin_url) as admin_channel:
            admin = pb_grpc.GRPCInferenceServiceStub(admin_channel)
            while time.perf_counter() - start < seconds:
                stream_request = generate(b"paused", 4000)
                stream_request.parameters["stream"].bool_param = True
                paused = stub.ModelStreamInfer(iter([stream_request]), timeout=60)
                next(paused)
                admin.RepositoryModelUnload(
                    pb.RepositoryModelUnloadRequest(model_name="tinyllama"), timeout=60
                )
                admin.RepositoryModelLoad(
                    pb.RepositoryModelLoadRequest(model_name="tinyllama"), timeout=60
                )
                paused.cancel()
        marks["paused stream + evict"] = (start, time.perf_counter())

        big = pb.ModelInferRequest(model_name="mlp")
        tensor = big.inputs.add(name="input", datatype="FP32", shape=[3_000_000])
        tensor.contents.bytes_contents.extend([b""] * 3_000_000)
        start = time.perf_counter()
        while time.perf_counter() - start < seconds:
            with contextlib.suppress(grpc.RpcError):  # refused, as meant
                stub.ModelInfer(big, timeout=30)
        marks["large refused requests"] = (start, time.perf_counter())
    bystander.stop()
    steady = bystander.p99(*marks["steady"])
    out = {f"{k} p99 ms": bystander.p99(*v) for k, v in marks.items()}
    out.update({f"{k} / steady": bystander.p99(*v) / steady for k, v in marks.items()})
    out["bystander failures"] = bystander.failed
    return out


@contextlib.contextmanager
def minimal_peer(src: Path, work: Path) -> Any:
    """bench/minimal_peer.py on a unix socket, serving the demo's files."""
    socket = work / "peer.sock"
    process = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "bench" / "minimal_peer.py"),
            str(socket),
            str(src / "mlp" / "model.fp32.onnx"),
            str(src / "tinyllama" / "model.q8_0.gguf"),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None and process.stdout.readline().strip() == "ready"
        yield f"unix:{socket}"
    finally:
        process.kill()
        process.wait()


def abuse_rounds(daemon: DaemonProcess, src: Path, work: Path, args: Any) -> dict[str, Any]:
    """The abuse phases against edged and against the minimal peer, interleaved: the ratio of
    each phase's p99 to the same server's steady p99, per round and their median."""
    rounds: dict[str, list[dict[str, float]]] = {"edged": [], "minimal peer": []}
    for _ in range(args.abuse_rounds):
        rounds["edged"].append(abuse(daemon.unix_url, daemon.admin_url, args.abuse_seconds))
        print("edged", json.dumps(rounds["edged"][-1], indent=1), flush=True)
        with minimal_peer(src, work) as url:
            rounds["minimal peer"].append(abuse(url, url, args.abuse_seconds))
        print("minimal peer", json.dumps(rounds["minimal peer"][-1], indent=1), flush=True)
    medians = {
        server: {key: float(np.median([r[key] for r in runs])) for key in runs[0]}
        for server, runs in rounds.items()
    }
    print("medians", json.dumps(medians, indent=1), flush=True)
    return {"bystander rounds": rounds, "bystander medians": medians}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--fuzz", type=int, default=100_000)
    parser.add_argument("--kills", type=int, default=200, help="kill -9 trials of imports")
    parser.add_argument(
        "--reload-kills", type=int, default=0, help="kill -9 trials of reloads (default kills/5)"
    )
    parser.add_argument("--abuse-seconds", type=float, default=10.0)
    parser.add_argument("--abuse-rounds", type=int, default=2)
    parser.add_argument(
        "--phases", default="fuzz,abuse,kills", help="which of fuzz, abuse, kills to run"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "faults.json")
    args = parser.parse_args()
    phases = set(args.phases.split(","))
    work = Path(tempfile.mkdtemp(prefix="edged-faults-"))
    results: dict[str, Any] = {}
    try:
        src = work / "demo"
        build_demo(src)
        daemon = DaemonProcess(import_demo(work / "store", src)).start()
        try:
            if "fuzz" in phases:
                results["fuzz"] = fuzz(daemon, args.fuzz)
                print(json.dumps(results["fuzz"], indent=1), flush=True)
            if "abuse" in phases:
                results.update(abuse_rounds(daemon, src, work, args))
        finally:
            daemon.stop()
        if "kills" not in phases:
            return 0
        results["kill imports"] = kill_imports(work, args.kills)
        print(json.dumps(results["kill imports"]), flush=True)
        results["kill reloads"] = kill_reloads(work, args.reload_kills or max(args.kills // 5, 1))
        print(json.dumps(results["kill reloads"]), flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
