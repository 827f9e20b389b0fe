"""Synthetic model updates for tests and benchmarks: fine-tune a file's float tensors in place.

A fine-tune keeps the file's layout and moves weights by a small relative amount; that is what
a controller ships most often and what the tensor-aware patch path is built for.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from edged.formats import detect

_FLOAT = {2: np.float16, 4: np.float32, 8: np.float64}


def finetune(
    src: Path,
    dst: Path,
    *,
    fraction: float = 1.0,
    relative: float = 1e-3,
    seed: int = 0,
    block: int = 4 << 20,
) -> int:
    """Copy ``src`` to ``dst`` with the last ``fraction`` of its float tensors (by count) moved by
    ``relative`` x N(0, 1) each; returns how many tensors changed."""
    shutil.copyfile(src, dst)
    rng = np.random.default_rng(seed)
    with dst.open("r+b") as f:
        layout = detect(f, src)  # src: an external-data file's model sits next to it
        floats = [t for t in layout.tensors if t.width in _FLOAT]
        if not floats:
            raise ValueError(f"{src}: no float tensors to fine-tune ({layout.kind} layout)")
        chosen = floats[len(floats) - max(1, round(fraction * len(floats))) :]
        for tensor in chosen:
            step = block - block % tensor.width
            for start in range(0, tensor.length, step):
                n = min(step, tensor.length - start)
                data = os.pread(f.fileno(), n, tensor.offset + start)
                values: np.ndarray[Any, Any] = np.frombuffer(data, dtype=_FLOAT[tensor.width])
                noise = rng.standard_normal(values.size).astype(values.dtype)
                moved = (values * (1 + relative * noise)).astype(values.dtype)
                os.pwrite(f.fileno(), moved.tobytes(), tensor.offset + start)
    return len(chosen)
