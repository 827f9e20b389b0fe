"""Where the tensors are: byte ranges of named tensors inside GGUF, ONNX and safetensors files.

The patch engine only needs each tensor's name, byte range and element width (for the float
transforms); it never interprets values. Parsers read headers through a file object, never the
whole file, so memory stays small on large models. A file that does not parse is simply treated
as opaque bytes (layout "raw"): the generic path still patches it.

An ONNX model saved with external data keeps its initializers in separate files that say nothing
about themselves; their layout comes from the model next to them (``external_layout``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from edged.update.transform import Q8_0_BLOCK

# Element widths of float types the XOR / difference transforms understand. Anything else
# (quantized blocks, integers) is delta-coded on its raw bytes (width 1).
_GGUF_FLOAT_WIDTH = {0: 4, 1: 2, 30: 2}  # F32, F16, BF16
_GGUF_Q8_0 = 8  # blocks of 32 weights: an f16 scale and 32 int8 quants (transform.Q8_0_BLOCK)
_ONNX_FLOAT_WIDTH = {1: 4, 10: 2, 11: 8, 16: 2}  # FLOAT, FLOAT16, DOUBLE, BFLOAT16
# Element sizes of the fixed-size ONNX types, for external tensors saved without a "length".
_ONNX_ELEMENT_SIZE = {
    **_ONNX_FLOAT_WIDTH,
    **{2: 1, 3: 1, 9: 1, 4: 2, 5: 2, 6: 4, 12: 4, 7: 8, 13: 8, 14: 8, 15: 16},
}
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


_PARSE_ERRORS = (_MalformedError, struct.error, UnicodeDecodeError, ValueError, OverflowError)


def detect(f: BinaryIO, path: Path | None = None) -> Layout:
    """The file's tensor layout, or a "raw" layout when it is none of the known formats.

    With the file's ``path``, a file no format recognizes may still be an ONNX model's external
    data: then its layout comes from that model (see ``external_layout``)."""
    size = os.fstat(f.fileno()).st_size
    for kind, parse in (("gguf", _gguf), ("safetensors", _safetensors), ("onnx", _onnx)):
        try:
            f.seek(0)
            tensors = sorted(parse(f, size), key=lambda t: t.offset)
        except _PARSE_ERRORS:
            continue
        if tensors and _well_formed(tensors, size):
            return Layout(kind, size, tuple(tensors))
    if path is not None:
        external = external_layout(path, size)
        if external is not None:
            return external
    return Layout("raw", size, ())


def onnx_external_locations(f: BinaryIO) -> list[str]:
    """The external-data files an ONNX model reads its initializers from (none for a model
    kept in one file, or for a file that is not ONNX)."""
    try:
        f.seek(0)
        found = _onnx_external(f, os.fstat(f.fileno()).st_size)
    except _PARSE_ERRORS:
        return []
    return sorted({location for location, _ in found})


# How many sibling .onnx files to read looking for the model that owns an external-data file.
_MAX_SIBLING_MODELS = 16


def external_layout(data_path: Path, size: int) -> Layout | None:
    """The layout of ``data_path`` as an external-data file of an ONNX model in the same
    directory (its initializers' ``location`` names this file), or None.

    onnx.save(..., save_as_external_data=True) writes such files: raw tensor bytes at the
    offsets and lengths the model records, nothing else.
    """
    target = data_path.resolve()
    for model in sorted(data_path.parent.glob("*.onnx"))[:_MAX_SIBLING_MODELS]:
        try:
            with model.open("rb") as f:
                tensors = [
                    tensor
                    for location, tensor in _onnx_external(f, os.fstat(f.fileno()).st_size)
                    if (model.parent / location).resolve() == target
                ]
        except (OSError, *_PARSE_ERRORS):
            continue
        tensors.sort(key=lambda t: t.offset)
        if tensors and _well_formed(tensors, size):
            return Layout("onnx-external", size, tuple(tensors))
    return None


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
_TENSOR_DIMS, _TENSOR_DATA_TYPE, _TENSOR_NAME, _TENSOR_RAW_DATA = 1, 2, 8, 9
_TENSOR_EXTERNAL_DATA, _TENSOR_DATA_LOCATION, _LOCATION_EXTERNAL = 13, 14, 1
_ENTRY_KEY, _ENTRY_VALUE = 1, 2


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


@dataclasses.dataclass
class _Initializer:
    name: str = ""
    data_type: int = 0
    dims: list[int] = dataclasses.field(default_factory=list)
    raw: tuple[int, int] | None = None  # (offset, length) of raw_data in the model file
    external: dict[str, str] = dataclasses.field(default_factory=dict)
    location: int = 0


def _onnx_initializers(f: BinaryIO, size: int) -> Iterator[_Initializer]:
    seen_graph = False
    for field, wire, start, length in _fields(f, size):
        if field != _MODEL_GRAPH or wire != 2:
            continue
        seen_graph = True
        for g_field, g_wire, g_start, g_length in _fields(f, start + length):
            if g_field == _GRAPH_INITIALIZER and g_wire == 2:
                yield _onnx_tensor(f, g_start, g_start + g_length)
            # _fields seeks past each payload itself.
    if not seen_graph:
        raise _MalformedError("no graph")


def _onnx(f: BinaryIO, size: int) -> list[Tensor]:
    return [
        Tensor(t.name, t.raw[0], t.raw[1], _ONNX_FLOAT_WIDTH.get(t.data_type, 1))
        for t in _onnx_initializers(f, size)
        if t.raw is not None and t.raw[1] > 0 and t.name
    ]


def _onnx_external(f: BinaryIO, size: int) -> list[tuple[str, Tensor]]:
    """(location, tensor) of each initializer kept in an external-data file."""
    out = []
    for t in _onnx_initializers(f, size):
        location = t.external.get("location")
        if t.location != _LOCATION_EXTERNAL or not location or not t.name:
            continue
        offset = int(t.external.get("offset", "0"))
        if "length" in t.external:
            length = int(t.external["length"])
        elif t.data_type in _ONNX_ELEMENT_SIZE:
            length = _ONNX_ELEMENT_SIZE[t.data_type]
            for d in t.dims:
                length *= d
        else:
            continue  # its extent is unknown: the generic path covers it
        if offset >= 0 and length > 0:
            width = _ONNX_FLOAT_WIDTH.get(t.data_type, 1)
            out.append((location, Tensor(t.name, offset, length, width)))
    return out


def _onnx_tensor(f: BinaryIO, start: int, end: int) -> _Initializer:
    t = _Initializer()
    for field, wire, value, length in _fields(f, end):
        if field == _TENSOR_NAME and wire == 2:
            f.seek(value)
            t.name = _read(f, length).decode()
        elif field == _TENSOR_DATA_TYPE and wire == 0:
            t.data_type = value
        elif field == _TENSOR_RAW_DATA and wire == 2:
            t.raw = (value, length)
        elif field == _TENSOR_DIMS and wire == 0:
            t.dims.append(value)
        elif field == _TENSOR_DIMS and wire == 2:  # packed
            f.seek(value)
            while f.tell() < value + length:
                t.dims.append(_varint(f))
        elif field == _TENSOR_DATA_LOCATION and wire == 0:
            t.location = value
        elif field == _TENSOR_EXTERNAL_DATA and wire == 2:
            key = entry = ""
            for e_field, e_wire, e_value, e_length in _fields(f, value + length):
                if e_field in (_ENTRY_KEY, _ENTRY_VALUE) and e_wire == 2:
                    f.seek(e_value)
                    text = _read(f, e_length).decode()
                    if e_field == _ENTRY_KEY:
                        key = text
                    else:
                        entry = text
            t.external[key] = entry
    f.seek(end)
    return t
