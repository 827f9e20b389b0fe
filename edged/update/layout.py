"""Where the tensors are: byte ranges of named tensors inside GGUF, ONNX and safetensors files.

The patch engine only needs each tensor's name, byte range and element width (for the float
transforms); it never interprets values. Parsers read headers through a file object, never the
whole file, so memory stays small on large models. A file that does not parse is simply treated
as opaque bytes (layout "raw"): the generic path still patches it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import struct
from collections.abc import Iterator
from typing import BinaryIO

from edged.update.transform import Q8_0_BLOCK

# Element widths of float types the XOR / difference transforms understand. Anything else
# (quantized blocks, integers) is delta-coded on its raw bytes (width 1).
_GGUF_FLOAT_WIDTH = {0: 4, 1: 2, 30: 2}  # F32, F16, BF16
_GGUF_Q8_0 = 8  # blocks of 32 weights: an f16 scale and 32 int8 quants (transform.Q8_0_BLOCK)
_ONNX_FLOAT_WIDTH = {1: 4, 10: 2, 11: 8, 16: 2}  # FLOAT, FLOAT16, DOUBLE, BFLOAT16
_SAFETENSORS_FLOAT_WIDTH = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2}

_MAX_HEADER = 256 << 20


@dataclasses.dataclass(frozen=True)
class Tensor:
    name: str
    offset: int
    length: int
    width: int  # element width in bytes for float tensors, Q8_0_BLOCK for q8_0, 1 for raw bytes

    @property
    def end(self) -> int:
        return self.offset + self.length


@dataclasses.dataclass(frozen=True)
class Layout:
    kind: str  # "gguf", "onnx", "safetensors" or "raw"
    size: int
    tensors: tuple[Tensor, ...]  # sorted by offset, non-overlapping


class _MalformedError(Exception):
    pass


def detect(f: BinaryIO) -> Layout:
    """The file's tensor layout, or a "raw" layout when it is none of the known formats."""
    size = os.fstat(f.fileno()).st_size
    for kind, parse in (("gguf", _gguf), ("safetensors", _safetensors), ("onnx", _onnx)):
        try:
            f.seek(0)
            tensors = sorted(parse(f, size), key=lambda t: t.offset)
        except (_MalformedError, struct.error, UnicodeDecodeError, ValueError, OverflowError):
            continue
        if tensors and _well_formed(tensors, size):
            return Layout(kind, size, tuple(tensors))
    return Layout("raw", size, ())


def _well_formed(tensors: list[Tensor], size: int) -> bool:
    names = {t.name for t in tensors}
    if len(names) != len(tensors):
        return False
    previous_end = 0
    for t in tensors:
        if t.offset < previous_end or t.end > size or t.length <= 0:
            return False
        previous_end = t.end
    return True


def _read(f: BinaryIO, n: int) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise _MalformedError("truncated")
    return data


# -- GGUF -------------------------------------------------------------------------------------

_GGUF_SCALAR = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_GGUF_STRING, _GGUF_ARRAY = 8, 9


def _gguf_string(f: BinaryIO) -> bytes:
    (n,) = struct.unpack("<Q", _read(f, 8))
    if n > _MAX_HEADER:
        raise _MalformedError("string too long")
    return _read(f, n)


def _gguf_skip_value(f: BinaryIO, vtype: int) -> None:
    if vtype in _GGUF_SCALAR:
        f.seek(_GGUF_SCALAR[vtype], os.SEEK_CUR)
    elif vtype == _GGUF_STRING:
        _gguf_string(f)
    elif vtype == _GGUF_ARRAY:
        item_type, count = struct.unpack("<IQ", _read(f, 12))
        if item_type in _GGUF_SCALAR:
            f.seek(_GGUF_SCALAR[item_type] * count, os.SEEK_CUR)
        else:
            for _ in range(count):
                _gguf_skip_value(f, item_type)
    else:
        raise _MalformedError(f"unknown GGUF value type {vtype}")


def _gguf(f: BinaryIO, size: int) -> list[Tensor]:
    if _read(f, 4) != b"GGUF":
        raise _MalformedError("not GGUF")
    version, n_tensors, n_kv = struct.unpack("<IQQ", _read(f, 20))
    if version < 2 or n_tensors > 1 << 24 or n_kv > 1 << 24:
        raise _MalformedError("unsupported GGUF header")
    alignment = 32
    for _ in range(n_kv):
        key = _gguf_string(f)
        (vtype,) = struct.unpack("<I", _read(f, 4))
        if key == b"general.alignment" and vtype == 4:
            (alignment,) = struct.unpack("<I", _read(f, 4))
        else:
            _gguf_skip_value(f, vtype)
    infos = []
    for _ in range(n_tensors):
        name = _gguf_string(f).decode()
        (n_dims,) = struct.unpack("<I", _read(f, 4))
        dims = struct.unpack(f"<{n_dims}Q", _read(f, 8 * n_dims))
        ggml_type, offset = struct.unpack("<IQ", _read(f, 12))
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


# -- safetensors ------------------------------------------------------------------------------


def _safetensors(f: BinaryIO, size: int) -> list[Tensor]:
    (n,) = struct.unpack("<Q", _read(f, 8))
    if n > min(_MAX_HEADER, size - 8):
        raise _MalformedError("not safetensors")
    header = json.loads(_read(f, n))
    if not isinstance(header, dict):
        raise _MalformedError("not safetensors")
    tensors = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        width = _SAFETENSORS_FLOAT_WIDTH.get(info["dtype"], 1)
        tensors.append(Tensor(name, 8 + n + int(begin), int(end) - int(begin), width))
    return tensors


# -- ONNX (protobuf wire format) --------------------------------------------------------------

_MODEL_GRAPH, _GRAPH_INITIALIZER = 7, 5
_TENSOR_DATA_TYPE, _TENSOR_NAME, _TENSOR_RAW_DATA = 2, 8, 9


def _varint(f: BinaryIO) -> int:
    result, shift = 0, 0
    while True:
        byte = _read(f, 1)[0]
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result
        shift += 7
        if shift > 63:
            raise _MalformedError("varint too long")


def _fields(f: BinaryIO, end: int) -> Iterator[tuple[int, int, int, int]]:
    """(field number, wire type, value or payload start, payload length) up to ``end``."""
    while f.tell() < end:
        key = _varint(f)
        field, wire = key >> 3, key & 7
        if field == 0:
            raise _MalformedError("field number 0")
        if wire == 0:
            yield field, wire, _varint(f), 0
        elif wire == 1:
            f.seek(8, os.SEEK_CUR)
            yield field, wire, 0, 0
        elif wire == 5:
            f.seek(4, os.SEEK_CUR)
            yield field, wire, 0, 0
        elif wire == 2:
            length = _varint(f)
            start = f.tell()
            if start + length > end:
                raise _MalformedError("field overruns its message")
            yield field, wire, start, length
            f.seek(start + length)
        else:
            raise _MalformedError(f"unsupported wire type {wire}")


def _onnx(f: BinaryIO, size: int) -> list[Tensor]:
    tensors = []
    seen_graph = False
    for field, wire, start, length in _fields(f, size):
        if field != _MODEL_GRAPH or wire != 2:
            continue
        seen_graph = True
        for g_field, g_wire, g_start, g_length in _fields(f, start + length):
            if g_field == _GRAPH_INITIALIZER and g_wire == 2:
                found = _onnx_tensor(f, g_start, g_start + g_length)
                if found is not None:
                    tensors.append(found)
            # _fields seeks past each payload itself.
    if not seen_graph:
        raise _MalformedError("no graph")
    return tensors


def _onnx_tensor(f: BinaryIO, start: int, end: int) -> Tensor | None:
    name, data_type, raw = "", 0, None
    for field, wire, value, length in _fields(f, end):
        if field == _TENSOR_NAME and wire == 2:
            f.seek(value)
            name = _read(f, length).decode()
        elif field == _TENSOR_DATA_TYPE and wire == 0:
            data_type = value
        elif field == _TENSOR_RAW_DATA and wire == 2:
            raw = (value, length)
    f.seek(end)
    if raw is None or raw[1] == 0 or not name:
        return None
    return Tensor(name, raw[0], raw[1], _ONNX_FLOAT_WIDTH.get(data_type, 1))
