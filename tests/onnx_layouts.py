"""ONNX files laid out as real exporters write them, built offline with onnx.helper: the same MLP
with its weights as graph initializers (torch.onnx), as ``Constant`` nodes (PaddlePaddle,
TensorFlow converters; ``value`` tensors, ``value_floats`` lists, non-raw ``float_data``), inside
the branches of nested ``If`` nodes, in ``Loop`` and ``Scan`` bodies with their own
initializers, as a sparse initializer, and in external data. Every layout computes the same
function in onnxruntime, so a patched file can be checked by running it.

Used by tests/unit/update/test_onnx_layouts.py and bench/patch.py.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

Array = np.ndarray[Any, Any]
Params = list[tuple[Array, Array]]

LAYOUTS = ("initializers", "constants", "lists", "if", "loop", "scan", "sparse", "external")


def mlp(sizes: Sequence[int], seed: int = 0) -> Params:
    rng = np.random.default_rng(seed)
    return [
        (
            (rng.standard_normal((a, b)) / np.sqrt(a)).astype(np.float32),
            (rng.standard_normal(b) * 0.1).astype(np.float32),
        )
        for a, b in itertools.pairwise(sizes)
    ]


def sparsify(params: Params, keep: float = 0.3, seed: int = 0) -> Params:
    """The first weight with all but ``keep`` of its entries zero (for the sparse layout)."""
    (w, b), *rest = params
    mask = np.random.default_rng(seed).random(w.shape) < keep
    return [(np.where(mask, w, 0).astype(w.dtype), b), *rest]


def forward(params: Params, x: Array) -> Array:
    h = x
    for i, (w, b) in enumerate(params):
        h = h @ w + b
        if i < len(params) - 1:
            h = np.maximum(h, 0)
    return h


def _layers(
    params: Params, source: str, out: str, prefix: str, weights: str
) -> tuple[list[Any], list[Any]]:
    """(nodes, initializers) computing the MLP from ``source`` into ``out``. ``weights``:
    "initializer", "constant" (a Constant node's raw ``value``), or "list" (weights as a
    non-raw ``float_data`` tensor, biases as ``value_floats``)."""
    nodes, inits, current = [], [], source
    for i, (w, b) in enumerate(params):
        wn, bn = f"{prefix}w{i}", f"{prefix}b{i}"
        if weights == "initializer":
            inits += [numpy_helper.from_array(w, wn), numpy_helper.from_array(b, bn)]
        elif weights == "constant":
            nodes.append(helper.make_node("Constant", [], [wn], value=numpy_helper.from_array(w)))
            nodes.append(helper.make_node("Constant", [], [bn], value=numpy_helper.from_array(b)))
        else:
            tensor = helper.make_tensor(wn, TensorProto.FLOAT, w.shape, w.ravel().tolist())
            nodes.append(helper.make_node("Constant", [], [wn], value=tensor))
            nodes.append(helper.make_node("Constant", [], [bn], value_floats=b.tolist()))
        last = i == len(params) - 1
        mm, added = f"{prefix}m{i}", out if last else f"{prefix}a{i}"
        nodes.append(helper.make_node("MatMul", [current, wn], [mm]))
        nodes.append(helper.make_node("Add", [mm, bn], [added]))
        if not last:
            nodes.append(helper.make_node("Relu", [added], [f"{prefix}r{i}"]))
            added = f"{prefix}r{i}"
        current = added
    return nodes, inits


def _value(name: str, width: int | str) -> Any:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", width])


def build(
    params: Params,
    path: Path,
    layout: str,
    *,
    doc: str = "",
    producer: str = "edged-tests",
    rename: str = "",
    branches: Sequence[Params] = (),
) -> Path:
    """Write the MLP ``params`` to ``path`` in ``layout``; ``rename`` prefixes every node and
    tensor name (an exporter that numbers things differently). ``branches``: the "if" layout's
    two else branches (default: their own seeded weights, which a fine-tune of ``params``
    leaves alone)."""
    d_in, d_out = params[0][0].shape[0], params[-1][0].shape[1]
    inputs, outputs = [_value("input", d_in)], [_value("logits", d_out)]
    p = rename
    nodes: list[Any]
    inits: list[Any] = []
    sparse: list[Any] = []
    if layout in ("initializers", "external"):
        nodes, inits = _layers(params, "input", "logits", p, "initializer")
    elif layout == "constants":
        nodes, _ = _layers(params, "input", "logits", p, "constant")
    elif layout == "lists":
        nodes, _ = _layers(params, "input", "logits", p, "list")
    elif layout == "if":
        others = list(branches) or [
            mlp([w.shape[0] for w, _ in params] + [d_out], s) for s in (1, 2)
        ]
        nodes = _nested_if(params, others, p)
    elif layout == "loop":
        nodes, inits = _loop(params, p)
    elif layout == "scan":
        nodes, inits = _scan(params, p)
    elif layout == "sparse":
        nodes, inits = _layers(params, "input", "logits", p, "initializer")
        # The first weight as a sparse initializer (its non-zero entries and their indices).
        w = params[0][0]
        flat = np.flatnonzero(w.ravel())
        values = numpy_helper.from_array(w.ravel()[flat], f"{p}w0")
        indices = numpy_helper.from_array(flat.astype(np.int64), "")
        sparse = [helper.make_sparse_tensor(values, indices, list(w.shape))]
        inits = [t for t in inits if t.name != f"{p}w0"]
    else:
        raise ValueError(f"unknown layout {layout!r}")
    graph = helper.make_graph(nodes, "mlp", inputs, outputs, inits, sparse_initializer=sparse)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    model.producer_name, model.producer_version, model.doc_string = producer, "1.0", doc
    if layout == "external":
        onnx.save(
            model,
            str(path),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=f"{path.name}.data",
            size_threshold=0,
        )
    else:
        onnx.save(model, str(path))
    return path


def _nested_if(params: Params, others: Sequence[Params], p: str) -> list[Any]:
    """If(true) -> then: If(true) -> then: the MLP with Constant weights; the two else branches
    other MLPs of the same shape, so that every branch holds tensors of its own."""
    d_out = params[-1][0].shape[1]

    def branch(name: str, weights: Params, prefix: str) -> Any:
        nodes, _ = _layers(weights, "input", f"{prefix}out", prefix, "constant")
        return helper.make_graph(nodes, name, [], [_value(f"{prefix}out", d_out)])

    inner = helper.make_node(
        "If",
        [f"{p}cond"],
        [f"{p}inner_out"],
        then_branch=branch("inner_then", params, f"{p}it_"),
        else_branch=branch("inner_else", others[0], f"{p}ie_"),
    )
    then = helper.make_graph([inner], "outer_then", [], [_value(f"{p}inner_out", d_out)])
    outer = helper.make_node(
        "If",
        [f"{p}cond"],
        ["logits"],
        then_branch=then,
        else_branch=branch("outer_else", others[1], f"{p}oe_"),
    )
    cond = helper.make_node(
        "Constant", [], [f"{p}cond"], value=numpy_helper.from_array(np.array(True))
    )
    return [cond, outer]


def _loop(params: Params, p: str) -> tuple[list[Any], list[Any]]:
    """The MLP's hidden layers applied once by a Loop (trip count 1) whose body holds them as
    its own initializers; the output layer outside, as an initializer of the main graph."""
    *hidden, (w_out, b_out) = params
    d_in, d_h = params[0][0].shape[0], hidden[-1][0].shape[1]
    body_nodes, body_inits = _layers(
        [*hidden, (np.eye(d_h, dtype=np.float32), np.zeros(d_h, np.float32))],
        f"{p}x_in",
        f"{p}x_out",
        f"{p}body_",
        "initializer",
    )
    body_nodes.append(helper.make_node("Identity", [f"{p}cond_in"], [f"{p}cond_out"]))
    body = helper.make_graph(
        body_nodes,
        "body",
        [
            helper.make_tensor_value_info(f"{p}iter", TensorProto.INT64, []),
            helper.make_tensor_value_info(f"{p}cond_in", TensorProto.BOOL, []),
            _value(f"{p}x_in", d_in),
        ],
        [
            helper.make_tensor_value_info(f"{p}cond_out", TensorProto.BOOL, []),
            _value(f"{p}x_out", d_h),
        ],
        body_inits,
    )
    nodes = [
        helper.make_node("Constant", [], [f"{p}trips"], value=numpy_helper.from_array(np.array(1))),
        helper.make_node(
            "Constant", [], [f"{p}true"], value=numpy_helper.from_array(np.array(True))
        ),
        helper.make_node("Loop", [f"{p}trips", f"{p}true", "input"], [f"{p}h"], body=body),
        helper.make_node("MatMul", [f"{p}h", f"{p}w_out"], [f"{p}m_out"]),
        helper.make_node("Add", [f"{p}m_out", f"{p}b_out"], ["logits"]),
    ]
    inits = [
        numpy_helper.from_array(w_out, f"{p}w_out"),
        numpy_helper.from_array(b_out, f"{p}b_out"),
    ]
    return nodes, inits


def _scan(params: Params, p: str) -> tuple[list[Any], list[Any]]:
    """The whole MLP as a Scan body over the batch (one row per iteration), its weights the
    body's Constant nodes."""
    d_in, d_out = params[0][0].shape[0], params[-1][0].shape[1]
    body_nodes, _ = _layers(params, f"{p}row2", f"{p}out2", f"{p}s_", "constant")
    axes = numpy_helper.from_array(np.array([0], dtype=np.int64))
    body_nodes.insert(0, helper.make_node("Constant", [], [f"{p}axes"], value=axes))
    body_nodes.insert(1, helper.make_node("Unsqueeze", [f"{p}row", f"{p}axes"], [f"{p}row2"]))
    body_nodes.append(helper.make_node("Squeeze", [f"{p}out2", f"{p}axes"], [f"{p}out_row"]))
    body = helper.make_graph(
        body_nodes,
        "scan_body",
        [helper.make_tensor_value_info(f"{p}row", TensorProto.FLOAT, [d_in])],
        [helper.make_tensor_value_info(f"{p}out_row", TensorProto.FLOAT, [d_out])],
    )
    node = helper.make_node("Scan", ["input"], ["logits"], body=body, num_scan_inputs=1)
    return [node], []


def all_payloads(model: Any) -> list[bytes]:
    """Every tensor payload the model holds in the file (raw or packed), by walking it with the
    onnx package: what a layout must find, each exactly once."""
    out: list[bytes] = []

    def tensor(t: Any) -> None:
        if t.data_location == TensorProto.EXTERNAL:
            return
        if t.raw_data:
            out.append(t.raw_data)
        elif t.float_data:
            out.append(np.array(t.float_data, np.float32).tobytes())

    def graph(g: Any) -> None:
        for t in g.initializer:
            tensor(t)
        for s in g.sparse_initializer:
            tensor(s.values)
            tensor(s.indices)
        for node in g.node:
            for a in node.attribute:
                if a.HasField("t"):
                    tensor(a.t)
                for t in a.tensors:
                    tensor(t)
                if a.HasField("g"):
                    graph(a.g)
                for sub in a.graphs:
                    graph(sub)
                if a.floats:  # proto2, unpacked: a key byte (field 7, fixed32) per element
                    values = np.array(a.floats, np.float32)
                    out.append(b"".join(b"\x3d" + v.tobytes() for v in values))

    graph(model.graph)
    return [b for b in out if len(b) >= 64]
