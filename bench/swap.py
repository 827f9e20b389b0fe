"""Version swaps under steady load: 20 promotions of one model while it and a bystander serve,
in three daemons one after another — the lifecycle's availability-preserving mode, its
resource-preserving mode, and ``direct`` (what edged did before the lifecycle: the pointer moves,
the next request loads the new version) as the baseline — then an injected regression.

Load: tritonclient over the unix socket, closed loop, concurrency 2 on the swapped model
(a 19 MB fp32 MLP, 256-2048-2048-10) and 2 on the bystander (a 1 MB MLP). Each version of the
swapped model is the same network with its scores scaled a little (a new file, the same answers).

Reported per mode: failed requests; the swapped model's and the bystander's p99 inside the swap
windows (activation to the version committed) against their steady p99 (10 s before the first
promotion); activation to flip (the first answer from the new version, seen by the clients);
peak accounted memory against the budget (scraped every 0.2 s). Then, per mode, a regression:
a version with the same top-1 answers and much flatter scores (its confidence drifts), with the
answers it served before it was taken back and the time from the decision to the old version
serving again.

    .venv/bin/python bench/swap.py [--promotions 20] [--out bench/out/swap.md]
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import grpc  # noqa: E402
import tritonclient.grpc as triton  # noqa: E402

from edged.api import lifecycle_pb2 as lpb  # noqa: E402
from edged.api import lifecycle_pb2_grpc as lpb_grpc  # noqa: E402
from edged.store.store import ModelStore  # noqa: E402
from tests.daemon import DaemonProcess, free_port  # noqa: E402

SWAPPED = (256, 2048, 2048, 10)
BYSTANDER = (64, 256, 256, 10)


def mlp(path: Path, sizes: tuple[int, ...], seed: int, scale: float) -> None:
    from onnx import TensorProto, helper, numpy_helper, save

    rng = np.random.default_rng(seed)
    nodes, inits, current = [], [], "input"
    layers = list(itertools.pairwise(sizes))
    for i, (fan_in, fan_out) in enumerate(layers):
        w = (rng.standard_normal((fan_in, fan_out)) / np.sqrt(fan_in)).astype(np.float32)
        b = (rng.standard_normal(fan_out) * 0.1).astype(np.float32)
        if i == len(layers) - 1:
            w, b = w * scale, b * scale
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        nodes.append(helper.make_node("MatMul", [current, f"w{i}"], [f"m{i}"]))
        out = "logits" if i == len(layers) - 1 else f"a{i}"
        nodes.append(helper.make_node("Add", [f"m{i}", f"b{i}"], [out]))
        if out != "logits":
            nodes.append(helper.make_node("Relu", [out], [f"r{i}"]))
            out = f"r{i}"
        current = out
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", sizes[0]])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", sizes[-1]])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    save(model, str(path))


def p50_ms(path: Path, width: int) -> float:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), so)
    x = {"input": np.ones((1, width), np.float32)}
    for _ in range(10):
        session.run(None, x)
    times = []
    for _ in range(100):
        start = time.perf_counter()
        session.run(None, x)
        times.append((time.perf_counter() - start) * 1e3)
    return float(np.median(times))


def version(
    out: Path, name: str, v: int, sizes: tuple[int, ...], scale: float, budget: float
) -> Path:
    directory = out / f"{name}-{v}"
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "model.onnx"
    mlp(path, sizes, seed=11 if name == "swapped" else 5, scale=scale)
    data = path.read_bytes()
    manifest = {
        "schema": 1,
        "name": name,
        "version": str(v),
        "lineage": {"parent": str(v - 1) if v > 1 else None},
        "variants": [
            {
                "id": "fp32",
                "format": "onnx",
                "file": path.name,
                "sha256": hashlib.sha256(data).hexdigest(),
                "size": len(data),
                "quality": 1.0,
                "options": {"threads": 1},
                "latency_ms": {"p50": budget, "p95": budget * 2, "p99": budget * 3},
            }
        ],
    }
    (directory / "manifest.json").write_text(json.dumps(manifest))
    return directory


class Client(threading.Thread):
    def __init__(self, url: str, model: str, width: int) -> None:
        super().__init__(daemon=True)
        self.url, self.model, self.width = url, model, width
        self.records: list[tuple[float, float, str, bool]] = []  # sent, took ms, version, ok
        self.stop = threading.Event()

    def run(self) -> None:
        client = triton.InferenceServerClient(url=self.url)
        rng = np.random.default_rng(abs(hash((self.model, id(self)))) % 1000)
        data = triton.InferInput("input", [1, self.width], "FP32")
        while not self.stop.is_set():
            data.set_data_from_numpy(rng.standard_normal((1, self.width)).astype(np.float32))
            sent = time.monotonic()
            try:
                response = client.infer(self.model, [data], client_timeout=30).get_response()
                self.records.append(
                    (sent, (time.monotonic() - sent) * 1e3, response.model_version, True)
                )
            except Exception:
                self.records.append((sent, (time.monotonic() - sent) * 1e3, "", False))
        client.close()


def scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def p99(values: list[float]) -> float:
    return float(np.percentile(values, 99)) if values else float("nan")


def run_mode(mode: str, work: Path, sources: dict[str, Any], promotions: int) -> dict[str, Any]:
    store = ModelStore(work / f"store-{mode}")
    store.import_dir(sources["swapped"][0])
    for directory in sources["swapped"][1:]:
        store.import_dir(directory, activate=False)
    store.import_dir(sources["regression"], activate=False)
    store.import_dir(sources["bystander"])
    port = free_port()
    daemon = DaemonProcess(
        store.root,
        preload__enabled=False,
        metrics__address=f"127.0.0.1:{port}",
        memory__budget="512MiB",
        lifecycle__mode=mode,
        lifecycle__shadow_max_seconds=10,
        lifecycle__probation_seconds=5,
        lifecycle__probation_requests=200,
        lifecycle__gate_min_samples=30,
    ).start()
    stub = lpb_grpc.LifecycleStub(grpc.insecure_channel(daemon.admin_url))
    clients = [Client(daemon.unix_url, "swapped", SWAPPED[0]) for _ in range(2)]
    clients += [Client(daemon.unix_url, "bystander", BYSTANDER[0]) for _ in range(2)]
    peak = {"accounted": 0.0, "budget": 0.0}
    sampling = threading.Event()

    def sample() -> None:
        while not sampling.is_set():
            try:
                values = scrape(port)
            except OSError:
                continue
            peak["accounted"] = max(peak["accounted"], values.get("edged_accounted_bytes", 0))
            peak["budget"] = max(
                (v for k, v in values.items() if k.startswith("edged_budget_bytes")), default=0
            )
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    activations: list[tuple[str, float, float]] = []  # version, activated, final state seen
    outcomes: list[str] = []
    try:
        for c in clients:
            c.start()
        sampler.start()
        time.sleep(10)
        steady_end = time.monotonic()
        for k in range(2, promotions + 2):
            began = time.monotonic()
            stub.Activate(lpb.ActivateRequest(model="swapped", version=str(k)), timeout=30)
            while True:
                record = store.record("swapped", str(k))
                if record.state in ("committed", "rejected", "rolled_back") or (
                    record.state == "staged" and not record.requested
                ):
                    break
                time.sleep(0.05)
            outcomes.append(str(record.state))
            activations.append((str(k), began, time.monotonic()))
            if record.state == "committed":  # direct mode commits first and serves later
                until = time.monotonic() + 30
                while time.monotonic() < until and not any(
                    c.records and c.records[-1][2] == str(k) for c in clients[:2]
                ):
                    time.sleep(0.05)
            time.sleep(1.0)
        # The regression.
        regression = str(promotions + 2)
        before = time.monotonic()
        stub.Activate(lpb.ActivateRequest(model="swapped", version=regression), timeout=30)
        deadline = before + (90 if mode != "direct" else 30)
        while time.monotonic() < deadline:
            if store.record("swapped", regression).state in ("rolled_back", "rejected"):
                break
            time.sleep(0.05)
        time.sleep(1.0)
        regression_record = store.record("swapped", regression)
    finally:
        for c in clients:
            c.stop.set()
        for c in clients:
            c.join(30)
        sampling.set()
        daemon.stop()

    swapped = [r for c in clients[:2] for r in c.records]
    # A swap's window: from its activation to its final state or the first answer from the new
    # version, whichever is later (direct mode commits at once and serves later), plus 0.5 s.
    windows: list[tuple[float, float]] = []
    flips: list[float] = []
    for v, began, final in activations:
        first = min((s for s, _, got, ok in swapped if ok and got == v), default=None)
        if first is not None:
            flips.append(first - began)
        windows.append((began, max(final, first or final) + 0.5))

    def in_windows(records: list[tuple[float, float, str, bool]]) -> list[float]:
        return [t for s, t, _, ok in records if ok and any(a <= s <= b for a, b in windows)]

    bystander = [r for c in clients[2:] for r in c.records]
    steady = lambda rs: [t for s, t, _, ok in rs if ok and s < steady_end]  # noqa: E731
    bad = [r for r in swapped if r[2] == regression and r[3]]
    last_bad = max((s for s, _, _, _ in bad), default=None)
    back = (
        min(
            (s for s, _, v, ok in swapped if ok and last_bad and s > last_bad and v != regression),
            default=None,
        )
        if last_bad is not None
        else None
    )
    return {
        "mode": mode,
        "failed": sum(not ok for _, _, _, ok in swapped + bystander),
        "requests": len(swapped) + len(bystander),
        "outcomes": {o: outcomes.count(o) for o in set(outcomes)},
        "swapped_steady_p99": p99(steady(swapped)),
        "swapped_window_p99": p99(in_windows(swapped)),
        "bystander_steady_p99": p99(steady(bystander)),
        "bystander_window_p99": p99(in_windows(bystander)),
        "flip_s": statistics.median(flips) if flips else float("nan"),
        "window_s": statistics.median(b - a for a, b in windows),
        "peak_accounted": peak["accounted"],
        "budget": peak["budget"],
        "regression_state": str(regression_record.state),
        "regression_reason": regression_record.reason,
        "served_by_bad": len(bad),
        "rollback_s": regression_record.figures.get("rollback_seconds", float("nan")),
        "client_gap_s": (back - last_bad)
        if back is not None and last_bad is not None
        else float("nan"),
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--promotions", type=int, default=20)
    parser.add_argument("--modes", nargs="+", default=["direct", "availability", "resource"])
    parser.add_argument("--out", default=str(ROOT / "bench" / "out" / "swap.md"))
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="edged-swap-"))
    src = work / "src"
    probe = src / "probe"
    probe.mkdir(parents=True)
    mlp(probe / "s.onnx", SWAPPED, 11, 1.0)
    mlp(probe / "b.onnx", BYSTANDER, 5, 1.0)
    budget_s = max(3 * p50_ms(probe / "s.onnx", SWAPPED[0]), 0.5)
    budget_b = max(3 * p50_ms(probe / "b.onnx", BYSTANDER[0]), 0.5)
    sources = {
        "swapped": [
            version(src, "swapped", k, SWAPPED, 1.0 + 0.01 * k, budget_s)
            for k in range(1, args.promotions + 2)
        ],
        "regression": version(src, "swapped", args.promotions + 2, SWAPPED, 0.1, budget_s),
        "bystander": version(src, "bystander", 1, BYSTANDER, 1.0, budget_b),
    }
    results = [run_mode(mode, work, sources, args.promotions) for mode in args.modes]
    lines = [
        f"{args.promotions} promotions per mode; load c=2 on the swapped model (19 MB fp32 MLP) "
        "and c=2 on a bystander (tritonclient, unix socket, closed loop); then one regression "
        "(same answers, flatter scores).",
        "",
        "| mode | requests | failed | outcomes | swapped p99 steady / swap window | bystander p99 "
        "steady / swap window | activation to flip (median) | swap window (median) | peak "
        "accounted / budget |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['mode']} | {r['requests']} | {r['failed']} | {r['outcomes']} | "
            f"{r['swapped_steady_p99']:.2f} / {r['swapped_window_p99']:.2f} ms "
            f"({r['swapped_window_p99'] / r['swapped_steady_p99']:.2f} x) | "
            f"{r['bystander_steady_p99']:.2f} / {r['bystander_window_p99']:.2f} ms "
            f"({r['bystander_window_p99'] / r['bystander_steady_p99']:.2f} x) | "
            f"{r['flip_s']:.2f} s | {r['window_s']:.1f} s | "
            f"{r['peak_accounted'] / 2**20:.1f} / {r['budget'] / 2**20:.0f} MiB |"
        )
    lines += [
        "",
        "| mode | regression outcome | answers from the bad version | decision to old version "
        "serving (daemon) | last bad to first good answer (clients) |",
        "|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['mode']} | {r['regression_state']}: {r['regression_reason'][:90]} | "
            f"{r['served_by_bad']} | {r['rollback_s'] * 1e3:.1f} ms | "
            f"{r['client_gap_s'] * 1e3:.1f} ms |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
