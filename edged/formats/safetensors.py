"""safetensors: an 8-byte header length, a JSON header, then the tensors' bytes."""

from __future__ import annotations

import json
import struct
from typing import BinaryIO

from edged.formats.layout import MAX_HEADER, MalformedError, Tensor, read_exact

_SAFETENSORS_FLOAT_WIDTH = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2}


def tensors(f: BinaryIO, size: int) -> list[Tensor]:
    (n,) = struct.unpack("<Q", read_exact(f, 8))
    if n > min(MAX_HEADER, size - 8):
        raise MalformedError("not safetensors")
    header = json.loads(read_exact(f, n))
    if not isinstance(header, dict):
        raise MalformedError("not safetensors")
    tensors = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        width = _SAFETENSORS_FLOAT_WIDTH.get(info["dtype"], 1)
        tensors.append(Tensor(name, 8 + n + int(begin), int(end) - int(begin), width))
    return tensors
