"""Versions of one model built offline, each a small real ONNX MLP, for the lifecycle's tests:
the same weights (a retrain-free new version), permuted classes (wrong answers), extra work
(slower), softer logits (same answers, lower confidence), a graph that runs at one batch size
only (runtime errors on others), and the manifests around them (budgets, lineage)."""

from __future__ import annotations

import hashlib
import itertools
import json
from pathlib import Path
from typing import Any

import numpy as np

SIZES = (32, 64, 10)


def _weights(seed: int) -> list[tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]]:
    rng = np.random.default_rng(seed)
    out = []
    for fan_in, fan_out in itertools.pairwise(SIZES):
        w = (rng.standard_normal((fan_in, fan_out)) / np.sqrt(fan_in)).astype(np.float32)
        b = (rng.standard_normal(fan_out) * 0.1).astype(np.float32)
        out.append((w, b))
    return out


def build_onnx(
    path: Path,
    *,
    seed: int = 7,
    permute: bool = False,
    scale: float = 1.0,
    extra_work: int = 0,
    fixed_batch: int | None = None,
) -> None:
    from onnx import TensorProto, checker, helper, numpy_helper, save

    layers = _weights(seed)
    if permute:  # the classes come out in another order: most answers are wrong
        order = np.roll(np.arange(SIZES[-1]), 3)
        w, b = layers[-1]
        layers[-1] = (w[:, order], b[order])
    if scale != 1.0:  # the same top-1 answers with flatter scores
        w, b = layers[-1]
        layers[-1] = (w * scale, b * scale)
    nodes, inits = [], []
    current = "input"
    for i, (w, b) in enumerate(layers):
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        nodes.append(helper.make_node("MatMul", [current, f"w{i}"], [f"mm{i}"]))
        nodes.append(helper.make_node("Add", [f"mm{i}", f"b{i}"], [f"add{i}"]))
        if i < len(layers) - 1:
            nodes.append(helper.make_node("Relu", [f"add{i}"], [f"relu{i}"]))
            current = f"relu{i}"
        else:
            current = f"add{i}"
    if extra_work:
        # A side branch of square MatMuls whose result is multiplied by a zero that is an
        # initializer (not folded away): the answers are the same, each run costs more.
        rng = np.random.default_rng(99)
        width = 384
        inits.append(
            numpy_helper.from_array(
                (rng.standard_normal((SIZES[0], width)) * 0.01).astype(np.float32), "xw_in"
            )
        )
        nodes.append(helper.make_node("MatMul", ["input", "xw_in"], ["x0"]))
        for k in range(extra_work):
            inits.append(
                numpy_helper.from_array(
                    (rng.standard_normal((width, width)) * 0.01).astype(np.float32), f"xw{k}"
                )
            )
            nodes.append(helper.make_node("MatMul", [f"x{k}", f"xw{k}"], [f"x{k + 1}"]))
        inits.append(numpy_helper.from_array(np.zeros((1,), np.float32), "zero"))
        nodes.append(helper.make_node("ReduceSum", [f"x{extra_work}"], ["xs"], keepdims=1))
        nodes.append(helper.make_node("Mul", ["xs", "zero"], ["xz"]))
        nodes.append(helper.make_node("Add", [current, "xz"], ["with_work"]))
        current = "with_work"
    if fixed_batch is not None:
        # The graph only runs at this batch size, though its signature says any: a runtime
        # error (not an input check) for every other batch.
        shape = np.array([fixed_batch, SIZES[-1]], np.int64)
        inits.append(numpy_helper.from_array(shape, "fixed_rows"))
        nodes.append(helper.make_node("Reshape", [current, "fixed_rows"], ["reshaped"]))
        current = "reshaped"
    nodes.append(helper.make_node("Identity", [current], ["logits"]))
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", SIZES[0]])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", SIZES[-1]])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    checker.check_model(model)
    save(model, str(path))


def version_dir(
    out: Path,
    name: str,
    version: str,
    *,
    budget_ms: float | None = None,
    lineage: dict[str, Any] | None = None,
    **model: Any,
) -> Path:
    """A model directory (manifest.json + one fp32 variant) for ``name`` ``version``."""
    directory = out / f"{name}-{version}"
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "model.onnx"
    build_onnx(path, **model)
    data = path.read_bytes()
    variant: dict[str, Any] = {
        "id": "fp32",
        "format": "onnx",
        "file": path.name,
        "sha256": hashlib.sha256(data).hexdigest(),
        "size": len(data),
        "quantization": "fp32",
        "quality": 1.0,
        "options": {"threads": 1},
    }
    if budget_ms is not None:
        variant["latency_ms"] = {"p50": budget_ms, "p95": budget_ms * 2, "p99": budget_ms * 3}
    manifest = {"schema": 1, "name": name, "version": version, "variants": [variant]}
    if lineage is not None:
        manifest["lineage"] = lineage
    (directory / "manifest.json").write_text(json.dumps(manifest))
    return directory


def p50_ms(directory: Path, runs: int = 200) -> float:
    """The variant's median run time here, in-process (what a budget is set from)."""
    import time

    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    session = ort.InferenceSession(str(directory / "model.onnx"), so)
    x = {"input": np.ones((1, SIZES[0]), np.float32)}
    for _ in range(20):
        session.run(None, x)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(None, x)
        times.append((time.perf_counter() - start) * 1e3)
    return float(np.median(times))
