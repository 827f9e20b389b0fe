"""Model runtimes: one protocol, an onnxruntime and a llama.cpp implementation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edged.runtime.base import Runtime


def open_runtime(fmt: str, path: Path, options: dict[str, Any]) -> Runtime:
    """Load a variant file in this process. Only call this for files that passed the probe."""
    if fmt == "onnx":
        from edged.runtime.onnx import OnnxRuntime

        return OnnxRuntime(path, options)
    if fmt == "gguf":
        from edged.runtime.llama import LlamaRuntime

        return LlamaRuntime(path, options)
    raise ValueError(f"unknown model format {fmt!r}")
