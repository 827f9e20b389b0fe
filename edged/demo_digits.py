"""The demo's classifier with real accuracy: handwritten digits (scikit-learn's bundled copy of
the UCI set: 1,797 8x8 images, 10 classes; nothing is downloaded), a teacher and a distilled
student trained here with numpy, each exported to ONNX in fp32 and int8.

- teacher: an MLP 64-256-256-10 (~84k multiply-adds), trained on the labels;
- student: an MLP 64-24-10 (~1.8k multiply-adds, ~45x cheaper), distilled from the teacher's
  softened outputs (temperature 4) plus the labels.

The qualities in the manifest are accuracies on a held-out split (40%, stratified, seeded), which
is written beside the model as ``heldout.npz`` (inputs, labels) so that `edged trace digits` can
replay it as labelled requests. A quarter of the rest is kept from training to calibrate the
cascade's threshold as a publisher would.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from pathlib import Path
from typing import Any

import numpy as np

SEED = 20261201
TEACHER = (64, 256, 256, 10)
STUDENT = (64, 24, 10)

Array = np.ndarray[Any, Any]
Params = list[tuple[Array, Array]]


def dataset() -> tuple[Array, Array, Array, Array]:
    """(train x, train y, held-out x, held-out y); x scaled to 0..1, float32."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.4, random_state=SEED, stratify=y)
    return xtr, ytr, xte, yte


def calibration_split(x: Array, y: Array) -> tuple[Array, Array, Array, Array]:
    """The training split cut in two: what the models learn from, and a quarter they never see
    that the publisher calibrates the cascade's threshold on."""
    from sklearn.model_selection import train_test_split

    xa, xb, ya, yb = train_test_split(x, y, test_size=0.25, random_state=SEED, stratify=y)
    return xa, ya, xb, yb


def _init(sizes: tuple[int, ...], rng: np.random.Generator) -> Params:
    return [
        (
            (rng.standard_normal((a, b)) * np.sqrt(2.0 / a)).astype(np.float32),
            np.zeros(b, np.float32),
        )
        for a, b in itertools.pairwise(sizes)
    ]


def forward(params: Params, x: Array) -> Array:
    h = x
    for i, (w, b) in enumerate(params):
        h = h @ w + b
        if i < len(params) - 1:
            h = np.maximum(h, 0)
    return np.asarray(h)


def _softmax(z: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return np.asarray(e / e.sum(axis=1, keepdims=True))


def train(
    sizes: tuple[int, ...],
    x: np.ndarray[Any, Any],
    y: np.ndarray[Any, Any],
    *,
    teacher: Params | None = None,
    temperature: float = 4.0,
    epochs: int = 60,
    seed: int = SEED,
    init: Params | None = None,
    steps: int | None = None,
    lr: float | None = None,
) -> Params:
    """Minibatch Adam on cross-entropy; with a ``teacher``, half of the loss is the KL to its
    softened outputs (Hinton et al.'s distillation). From ``init`` (copied) instead of a fresh
    initialization, for at most ``steps`` minibatches: a fine-tune."""
    rng = np.random.default_rng(seed)
    params = [(w.copy(), b.copy()) for w, b in init] if init is not None else _init(sizes, rng)
    m = [(np.zeros_like(w), np.zeros_like(b)) for w, b in params]
    v = [(np.zeros_like(w), np.zeros_like(b)) for w, b in params]
    if lr is None:
        lr = 1e-3 if teacher is None else 3e-3
    beta1, beta2, eps, step = 0.9, 0.999, 1e-8, 0
    onehot = np.eye(sizes[-1], dtype=np.float32)[y]
    soft = _softmax(forward(teacher, x) / temperature) if teacher is not None else None
    for _ in range(epochs):
        order = rng.permutation(len(x))
        for start in range(0, len(x), 32):
            if steps is not None and step >= steps:
                return params
            idx = order[start : start + 32]
            xb = x[idx]
            acts = [xb]
            h = xb
            for i, (w, b) in enumerate(params):
                h = h @ w + b
                if i < len(params) - 1:
                    h = np.maximum(h, 0)
                acts.append(h)
            grad = _softmax(acts[-1]) - onehot[idx]
            if soft is not None:
                distil = _softmax(acts[-1] / temperature) - soft[idx]
                grad = 0.5 * grad + 0.5 * distil * temperature
            grad /= len(idx)
            step += 1
            for i in range(len(params) - 1, -1, -1):
                w, b = params[i]
                gw, gb = acts[i].T @ grad, grad.sum(axis=0)
                if i > 0:
                    grad = (grad @ w.T) * (acts[i] > 0)
                for j, (param, g) in enumerate(((w, gw), (b, gb))):
                    mj, vj = m[i][j], v[i][j]
                    mj *= beta1
                    mj += (1 - beta1) * g
                    vj *= beta2
                    vj += (1 - beta2) * g * g
                    update = lr * (mj / (1 - beta1**step)) / (np.sqrt(vj / (1 - beta2**step)) + eps)
                    np.subtract(param, update, out=param)  # in place: the layer's own array
    return params


def accuracy(params: Params, x: np.ndarray[Any, Any], y: np.ndarray[Any, Any]) -> float:
    return float(np.mean(forward(params, x).argmax(axis=1) == y))


def export(params: Params, path: Path) -> None:
    """An ONNX MLP: ``input`` [-1, 64] -> ``logits`` [-1, 10]."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits, current = [], [], "input"
    for i, (w, b) in enumerate(params):
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        nodes.append(helper.make_node("MatMul", [current, f"w{i}"], [f"m{i}"]))
        last = i == len(params) - 1
        out = "logits" if last else f"a{i}"
        nodes.append(helper.make_node("Add", [f"m{i}", f"b{i}"], [out]))
        if not last:
            nodes.append(helper.make_node("Relu", [out], [f"r{i}"]))
            out = f"r{i}"
        current = out
    graph = helper.make_graph(
        nodes,
        "digits",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 64])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def onnx_accuracy(path: Path, x: np.ndarray[Any, Any], y: np.ndarray[Any, Any]) -> float:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return float(np.mean(session.run(None, {"input": x})[0].argmax(axis=1) == y))


def top1(params: Params, x: Array) -> Array:
    return np.asarray(_softmax(forward(params, x)).max(axis=1))


def threshold(first: Params, last: Params, x: Array, target: float) -> float:
    """The lowest confidence threshold at which a cascade (``first``, escalating to ``last``
    below it) agrees with ``last`` on at least ``target`` of ``x``."""
    confidence = top1(first, x)
    agreed = forward(first, x).argmax(axis=1) == forward(last, x).argmax(axis=1)
    order = np.argsort(confidence)
    disagree_above = np.cumsum((~agreed[order])[::-1])[::-1]
    for i, k in enumerate(order):
        if 1.0 - disagree_above[i] / len(x) >= target:
            return float(confidence[k])
    return 1.0


def multiply_adds(sizes: tuple[int, ...]) -> int:
    return sum(a * b for a, b in itertools.pairwise(sizes))


def build(out: Path) -> Path:
    """The digits model directory (manifest.json, four variants, heldout.npz) under ``out``."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    directory = out / "digits"
    directory.mkdir(parents=True, exist_ok=True)
    xall, yall, xte, yte = dataset()
    xtr, ytr, xcal, _ = calibration_split(xall, yall)
    teacher = train(TEACHER, xtr, ytr)
    student = train(STUDENT, xtr, ytr, teacher=teacher)
    np.savez(directory / "heldout.npz", x=xte, y=yte)
    variants = []
    for name, params, sizes in (("teacher", teacher, TEACHER), ("student", student, STUDENT)):
        fp32 = directory / f"{name}.fp32.onnx"
        int8 = directory / f"{name}.int8.onnx"
        export(params, fp32)
        quantize_dynamic(str(fp32), str(int8), weight_type=QuantType.QInt8)
        for kind, path in (("fp32", fp32), ("int8", int8)):
            data = path.read_bytes()
            variants.append(
                {
                    "id": f"{name}-{kind}",
                    "format": "onnx",
                    "file": path.name,
                    "sha256": hashlib.sha256(data).hexdigest(),
                    "size": len(data),
                    "quantization": kind,
                    "quality": round(onnx_accuracy(path, xte, yte), 4),
                    "options": {"threads": 1, "multiply_adds": multiply_adds(sizes)},
                }
            )
    manifest = {
        "schema": 1,
        "name": "digits",
        "version": "1",
        "lineage": {
            "parent": None,
            "teacher": {"name": "digits-teacher", "version": "1"},
            "dataset": "sklearn-digits-train60",
            "compression": {"method": "distillation", "settings": {"temperature": 4}},
        },
        "outputs": {"logits": {"kind": "class_scores"}},
        # The cheapest variant first; the next when it is unsure (docs/quality.md).
        "cascade": {
            "stages": ["student-int8", "teacher-fp32"],
            "agreement": 0.99,
            # The publisher's calibration, on data the models never saw (the held-out split is
            # for measuring); the device calibrates its own from its traffic.
            "threshold": round(threshold(student, teacher, xcal, 0.99), 4),
        },
        "warmup": {"inputs": {"input": {"shape": [1, 64], "data": [float(v) for v in xte[0]]}}},
        "variants": variants,
    }
    (directory / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return directory
