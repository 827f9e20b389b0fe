"""GGUF (llama.cpp): tensor infos after the key-value header, data aligned after them."""

from __future__ import annotations

import os
import struct
from typing import BinaryIO

from edged.formats.layout import MAX_HEADER, Q8_0_BLOCK, MalformedError, Tensor, read_exact

# Element widths of float types the XOR / difference transforms understand. Anything else
# (quantized blocks, integers) is delta-coded on its raw bytes (width 1).
_GGUF_FLOAT_WIDTH = {0: 4, 1: 2, 30: 2}  # F32, F16, BF16
_GGUF_Q8_0 = 8  # blocks of 32 weights: an f16 scale and 32 int8 quants (Q8_0_BLOCK)

_GGUF_SCALAR = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_GGUF_STRING, _GGUF_ARRAY = 8, 9


def _gguf_string(f: BinaryIO) -> bytes:
    (n,) = struct.unpack("<Q", read_exact(f, 8))
    if n > MAX_HEADER:
        raise MalformedError("string too long")
    return read_exact(f, n)


def _gguf_skip_value(f: BinaryIO, vtype: int) -> None:
    if vtype in _GGUF_SCALAR:
        f.seek(_GGUF_SCALAR[vtype], os.SEEK_CUR)
    elif vtype == _GGUF_STRING:
        _gguf_string(f)
    elif vtype == _GGUF_ARRAY:
        item_type, count = struct.unpack("<IQ", read_exact(f, 12))
        if item_type in _GGUF_SCALAR:
            f.seek(_GGUF_SCALAR[item_type] * count, os.SEEK_CUR)
        else:
            for _ in range(count):
                _gguf_skip_value(f, item_type)
    else:
        raise MalformedError(f"unknown GGUF value type {vtype}")


def tensors(f: BinaryIO, size: int) -> list[Tensor]:
    if read_exact(f, 4) != b"GGUF":
        raise MalformedError("not GGUF")
    version, n_tensors, n_kv = struct.unpack("<IQQ", read_exact(f, 20))
    if version < 2 or n_tensors > 1 << 24 or n_kv > 1 << 24:
        raise MalformedError("unsupported GGUF header")
    alignment = 32
    for _ in range(n_kv):
        key = _gguf_string(f)
        (vtype,) = struct.unpack("<I", read_exact(f, 4))
        if key == b"general.alignment" and vtype == 4:
            (alignment,) = struct.unpack("<I", read_exact(f, 4))
        else:
            _gguf_skip_value(f, vtype)
    infos = []
    for _ in range(n_tensors):
        name = _gguf_string(f).decode()
        (n_dims,) = struct.unpack("<I", read_exact(f, 4))
        dims = struct.unpack(f"<{n_dims}Q", read_exact(f, 8 * n_dims))
        ggml_type, offset = struct.unpack("<IQ", read_exact(f, 12))
        count = 1
        for d in dims:
            count *= d
        infos.append((name, ggml_type, offset, count))
    data_start = -(-f.tell() // alignment) * alignment
    starts = sorted({data_start + offset for _, _, offset, _ in infos} | {size})
    tensors = []
    for name, ggml_type, offset, count in infos:
        start = data_start + offset
        width = _GGUF_FLOAT_WIDTH.get(ggml_type)
        if width is not None:
            length = count * width
        elif ggml_type == _GGUF_Q8_0 and count % 32 == 0:
            width = Q8_0_BLOCK
            length = count // 32 * Q8_0_BLOCK
        else:
            # Quantized block sizes differ by type; the tensor runs to the next one (padding
            # included), which is all the raw-byte delta needs.
            length = starts[starts.index(start) + 1] - start
            width = 1
        tensors.append(Tensor(name, start, length, width))
    return tensors
