"""Model runtimes: one protocol, an onnxruntime and a llama.cpp implementation."""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path
from typing import Any

from edged.runtime.base import Runtime

_warmed: set[str] = set()  # runtimes whose process-wide state is set up


def warm_runtimes(formats: Collection[str] | None = None) -> None:
    """Initialise the runtimes' process-wide state (onnxruntime's environment, llama.cpp's
    backend) before any variant loads, so that one-time cost lands in the daemon's baseline
    instead of the first model's measured memory. ``formats``: only the runtimes of these
    variant formats (the store's at start: a daemon with no GGUF model never maps llama.cpp,
    ~10 MB, nor one with no ONNX model onnxruntime, ~20 MB); None: all of them. A runtime
    already warmed is not warmed again; the loader warms a format the store gained later before
    it measures that first load."""
    from edged.runtime.base import TensorSpec, example_inputs

    wanted = {"onnx", "gguf"} if formats is None else set(formats)
    wanted -= _warmed
    _warmed.update(wanted & {"onnx", "gguf"})
    if "onnx" in wanted:
        import onnxruntime

        session = onnxruntime.InferenceSession(_IDENTITY_ONNX, providers=["CPUExecutionProvider"])
        # Warm-up inputs come from numpy.random, a ~3 MB import numpy makes on first use: without
        # this the first variant loaded (and every variant the probe measures) was charged for it.
        session.run(None, example_inputs((TensorSpec("x", "FP32", (1,)),)))
        del session
    if "gguf" in wanted:
        from llama_cpp import llama_cpp

        llama_cpp.llama_backend_init()


# A one-node ONNX model (y = Identity(x), float[1]) that makes onnxruntime set up its environment.
_IDENTITY_ONNX = (
    b'\x08\t::\n\x10\n\x01x\x12\x01y"\x08Identity\x12\x04warmZ\x0f\n\x01x\x12\n\n\x08\x08'
    b"\x01\x12\x04\n\x02\x08\x01b\x0f\n\x01y\x12\n\n\x08\x08\x01\x12\x04\n\x02\x08\x01B\x04\n"
    b"\x00\x10\x11"
)


def open_runtime(fmt: str, path: Path, options: dict[str, Any]) -> Runtime:
    """Load a variant file in this process. Only call this for files that passed the probe."""
    if fmt == "onnx":
        from edged.runtime.onnx import OnnxRuntime

        return OnnxRuntime(path, options)
    if fmt == "gguf":
        from edged.runtime.llama import LlamaRuntime

        return LlamaRuntime(path, options)
    raise ValueError(f"unknown model format {fmt!r}")
