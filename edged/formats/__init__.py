"""Model file formats: where the tensors are in GGUF, ONNX and safetensors files (used by the
store and the patch engine alike)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO

from edged.formats import gguf, onnx, safetensors
from edged.formats.layout import PARSE_ERRORS, Q8_0_BLOCK, Layout, Tensor, well_formed

__all__ = ["Q8_0_BLOCK", "Layout", "Tensor", "detect", "onnx"]


def detect(f: BinaryIO, path: Path | None = None) -> Layout:
    """The file's tensor layout, or a "raw" layout when it is none of the known formats.

    With the file's ``path``, a file no format recognizes may still be an ONNX model's external
    data: then its layout comes from that model (``onnx.external_layout``)."""
    size = os.fstat(f.fileno()).st_size
    for kind, parse in (
        ("gguf", gguf.tensors),
        ("safetensors", safetensors.tensors),
        ("onnx", onnx.tensors),
    ):
        try:
            f.seek(0)
            tensors = sorted(parse(f, size), key=lambda t: t.offset)
        except PARSE_ERRORS:
            continue
        if tensors and well_formed(tensors, size):
            return Layout(kind, size, tuple(tensors))
    if path is not None:
        external = onnx.external_layout(path, size)
        if external is not None:
            return external
    return Layout("raw", size, ())
