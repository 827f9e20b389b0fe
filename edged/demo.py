"""The demo portfolio, built offline: two ONNX models (fp32 + int8) and one GGUF llama (f16 + q8_0).

Weights are seeded, so every build gives the same files. Each variant's ``quality`` is measured
against the full-precision one on generated inputs: top-1 agreement for the ONNX classifiers,
agreement of greedy generations for the GGUF model.
"""

from __future__ import annotations

import ctypes
import datetime
import hashlib
import itertools
import json
import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edged.demo_digits import build as build_digits

log = logging.getLogger(__name__)

SEED = 20261124


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


# -- ONNX --------------------------------------------------------------------------------------


def _save_onnx(graph: Any, path: Path) -> None:
    import onnx
    from onnx import helper

    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def mlp_model(path: Path, sizes: tuple[int, ...], seed: int = SEED) -> None:
    """A ReLU MLP: input ``input`` [-1, sizes[0]] -> output ``logits`` [-1, sizes[-1]]."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    current = "input"
    for i, (fan_in, fan_out) in enumerate(itertools.pairwise(sizes)):
        w = (rng.standard_normal((fan_in, fan_out)) / np.sqrt(fan_in)).astype(np.float32)
        b = (rng.standard_normal(fan_out) * 0.1).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        last = i == len(sizes) - 2
        nodes.append(helper.make_node("MatMul", [current, f"w{i}"], [f"mm{i}"]))
        out = "logits" if last else f"add{i}"
        nodes.append(helper.make_node("Add", [f"mm{i}", f"b{i}"], [out]))
        if not last:
            nodes.append(helper.make_node("Relu", [out], [f"relu{i}"]))
            out = f"relu{i}"
        current = out
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", sizes[0]])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", sizes[-1]])],
        inits,
    )
    _save_onnx(graph, path)


def cnn_model(path: Path, seed: int = SEED) -> None:
    """A small CNN: ``image`` [-1, 1, 28, 28] -> ``logits`` [-1, 10]."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed + 1)

    def weight(name: str, shape: tuple[int, ...], fan_in: int) -> Any:
        return numpy_helper.from_array(
            (rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32), name
        )

    inits = [
        weight("c1w", (8, 1, 3, 3), 9),
        weight("c1b", (8,), 9),
        weight("c2w", (16, 8, 3, 3), 72),
        weight("c2b", (16,), 72),
        weight("fcw", (16, 10), 16),
        weight("fcb", (10,), 16),
    ]
    nodes = [
        helper.make_node("Conv", ["image", "c1w", "c1b"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p1", "c2w", "c2b"], ["c2"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("GlobalAveragePool", ["r2"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("MatMul", ["f", "fcw"], ["m"]),
        helper.make_node("Add", ["m", "fcb"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "cnn",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 1, 28, 28])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        inits,
    )
    _save_onnx(graph, path)


def quantize_int8(src: Path, dst: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)


def _onnx_outputs(path: Path, feed: dict[str, Any]) -> Any:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, feed)[0]


def _onnx_p50_ms(path: Path, feed: dict[str, Any]) -> float:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    times = []
    for _ in range(30):
        start = time.perf_counter()
        session.run(None, feed)
        times.append((time.perf_counter() - start) * 1000)
    return float(np.median(times))


def _top1_agreement(reference: Any, candidate: Any) -> float:
    return float(np.mean(np.argmax(reference, axis=-1) == np.argmax(candidate, axis=-1)))


# -- GGUF --------------------------------------------------------------------------------------

N_EMBD, N_FF, N_LAYER, N_HEAD, N_CTX = 64, 128, 2, 4, 256


def gguf_llama(
    path: Path,
    seed: int = SEED,
    n_embd: int = N_EMBD,
    n_ff: int = N_FF,
    n_layer: int = N_LAYER,
    name: str = "edged-demo-llama",
    dtype: Any = np.float16,
    words: tuple[str, ...] = (),
) -> None:
    """A llama-architecture GGUF with a byte-level vocabulary and random f16 weights.

    Output rows of all but printable ASCII tokens are zero, so greedy generation emits readable
    text (and never end-of-sequence), which makes streaming visible. ``words``: SentencePiece
    pieces ("\u2581the") added after the bytes, never generated (tests of detokenizing).
    """
    import gguf

    rng = np.random.default_rng(seed + 2)
    tokens = [b"<unk>", b"<s>", b"</s>"] + [f"<0x{i:02X}>".encode() for i in range(256)]
    tokens += [word.encode() for word in words]
    n_vocab = len(tokens)
    types = [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL] + [
        gguf.TokenType.BYTE
    ] * 256
    types += [gguf.TokenType.NORMAL] * len(words)

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name(name)
    writer.add_context_length(N_CTX)
    writer.add_embedding_length(n_embd)
    writer.add_block_count(n_layer)
    writer.add_feed_forward_length(n_ff)
    writer.add_head_count(N_HEAD)
    writer.add_head_count_kv(N_HEAD)
    writer.add_rope_dimension_count(n_embd // N_HEAD)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_file_type(
        gguf.LlamaFileType.MOSTLY_F16 if dtype == np.float16 else gguf.LlamaFileType.ALL_F32
    )
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores([0.0] * n_vocab)
    writer.add_token_types(types)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_add_bos_token(True)

    def mat(rows: int, cols: int, scale: float = 0.3) -> Any:
        return (rng.standard_normal((rows, cols)) * scale / np.sqrt(cols)).astype(dtype)

    def ones(n: int) -> Any:
        return np.ones(n, dtype=np.float32)

    writer.add_tensor("token_embd.weight", mat(n_vocab, n_embd, 3.0))
    for i in range(n_layer):
        p = f"blk.{i}."
        writer.add_tensor(p + "attn_norm.weight", ones(n_embd))
        for part in ("attn_q", "attn_k", "attn_v", "attn_output"):
            writer.add_tensor(p + part + ".weight", mat(n_embd, n_embd))
        writer.add_tensor(p + "ffn_norm.weight", ones(n_embd))
        writer.add_tensor(p + "ffn_gate.weight", mat(n_ff, n_embd))
        writer.add_tensor(p + "ffn_up.weight", mat(n_ff, n_embd))
        writer.add_tensor(p + "ffn_down.weight", mat(n_embd, n_ff))
    writer.add_tensor("output_norm.weight", ones(n_embd))
    output = mat(n_vocab, n_embd, 8.0)
    printable = np.zeros(n_vocab, dtype=bool)
    printable[3 + 0x20 : 3 + 0x7F] = True
    output[~printable] = 0
    writer.add_tensor("output.weight", output)

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def quantize_q8_0(src: Path, dst: Path) -> None:
    """llama.cpp's own quantizer (the same code path as its `llama-quantize` tool)."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0
    status = llama_cpp.llama_model_quantize(
        str(src).encode(), str(dst).encode(), ctypes.byref(params)
    )
    if status != 0:
        raise RuntimeError(f"llama_model_quantize failed with status {status}")


PROMPTS = ("The quick brown fox", "edge devices", "hello", "model serving is")


def _greedy_texts(path: Path) -> list[str]:
    from llama_cpp import Llama

    llm = Llama(model_path=str(path), n_ctx=N_CTX, n_threads=1, verbose=False)
    try:
        texts = []
        for prompt in PROMPTS:
            out = llm.create_completion(prompt, max_tokens=24, temperature=0.0)
            texts.append(out["choices"][0]["text"])  # type: ignore[index]
        return texts
    finally:
        llm.close()


def _text_agreement(reference: list[str], candidate: list[str]) -> float:
    """Share of reference characters generated identically before the first divergence."""
    matched = total = 0
    for a, b in zip(reference, candidate, strict=True):
        prefix = 0
        for x, y in zip(a, b, strict=False):
            if x != y:
                break
            prefix += 1
        matched += prefix
        total += max(len(a), 1)
    return matched / total


# -- assembly ----------------------------------------------------------------------------------


def _variant(
    directory: Path,
    vid: str,
    fmt: str,
    file: str,
    quant: str,
    quality: float,
    latency_p50: float | None,
    options: dict[str, Any],
) -> dict[str, Any]:
    path = directory / file
    entry: dict[str, Any] = {
        "id": vid,
        "format": fmt,
        "file": file,
        "sha256": _sha256(path),
        "size": path.stat().st_size,
        "quantization": quant,
        "target": "cpu",
        "quality": round(quality, 4),
        "memory_bytes": path.stat().st_size,
        "options": options,
    }
    if latency_p50 is not None:
        entry["latency_ms"] = {
            "p50": round(latency_p50, 3),
            "p95": round(latency_p50 * 2, 3),
            "p99": round(latency_p50 * 3, 3),
        }
    return entry


def _write_manifest(
    directory: Path, name: str, variants: list[dict[str, Any]], compression: dict[str, Any]
) -> None:
    manifest = {
        "schema": 1,
        "name": name,
        "version": "1",
        "created": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "lineage": {
            "parent": None,
            "teacher": {"name": f"{name}-teacher", "version": "1.0.0"},
            "dataset": "synthetic-seeded",
            "compression": compression,
        },
        "variants": variants,
    }
    (directory / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")


def _onnx_family(
    out: Path, name: str, build: Callable[[Path], None], feed_name: str, shape: tuple[int, ...]
) -> Path:
    directory = out / name
    directory.mkdir(parents=True, exist_ok=True)
    fp32, int8 = directory / "model.fp32.onnx", directory / "model.int8.onnx"
    build(fp32)
    quantize_int8(fp32, int8)
    rng = np.random.default_rng(SEED)
    sample = {feed_name: rng.standard_normal((512, *shape)).astype(np.float32)}
    reference = _onnx_outputs(fp32, sample)
    quality = _top1_agreement(reference, _onnx_outputs(int8, sample))
    one = {feed_name: sample[feed_name][:1]}
    variants = [
        _variant(
            directory,
            "fp32",
            "onnx",
            fp32.name,
            "fp32",
            1.0,
            _onnx_p50_ms(fp32, one),
            {"threads": 1},
        ),
        _variant(
            directory,
            "int8",
            "onnx",
            int8.name,
            "int8",
            quality,
            _onnx_p50_ms(int8, one),
            {"threads": 1},
        ),
    ]
    _write_manifest(directory, name, variants, {"method": "dynamic-quantization", "bits": 8})
    return directory


def _gguf_family(out: Path) -> Path:
    directory = out / "tinyllama"
    directory.mkdir(parents=True, exist_ok=True)
    f16, q8 = directory / "model.f16.gguf", directory / "model.q8_0.gguf"
    gguf_llama(f16)
    quantize_q8_0(f16, q8)
    quality = _text_agreement(_greedy_texts(f16), _greedy_texts(q8))
    # Two contexts: two streams on the model are generated at once (docs/runtimes.md).
    options = {"threads": 1, "n_ctx": N_CTX, "contexts": 2}
    variants = [
        _variant(directory, "f16", "gguf", f16.name, "f16", 1.0, None, options),
        _variant(directory, "q8_0", "gguf", q8.name, "q8_0", quality, None, options),
    ]
    _write_manifest(directory, "tinyllama", variants, {"method": "quantization", "bits": 8})
    return directory


def build_demo(out: Path) -> list[Path]:
    """Write the demo model directories (each with manifest.json) under ``out``."""
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    dirs = [
        _onnx_family(out, "mlp", lambda p: mlp_model(p, (64, 256, 256, 10)), "input", (64,)),
        _onnx_family(out, "cnn", cnn_model, "image", (1, 28, 28)),
        _gguf_family(out),
        build_digits(out),
    ]
    log.info("demo portfolio written to %s", out)
    return dirs
