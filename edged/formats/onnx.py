"""ONNX models, read on the protobuf wire format without decoding the whole message: the byte
ranges of tensor payloads, and where external data lives."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from edged.formats.layout import (
    PARSE_ERRORS,
    Layout,
    MalformedError,
    Tensor,
    read_exact,
    well_formed,
)

_ONNX_FLOAT_WIDTH = {1: 4, 10: 2, 11: 8, 16: 2}  # FLOAT, FLOAT16, DOUBLE, BFLOAT16
# Element sizes of the fixed-size ONNX types, for external tensors saved without a "length".
_ONNX_ELEMENT_SIZE = {
    **_ONNX_FLOAT_WIDTH,
    **{2: 1, 3: 1, 9: 1, 4: 2, 5: 2, 6: 4, 12: 4, 7: 8, 13: 8, 14: 8, 15: 16},
}
# How many sibling .onnx files to read looking for the model that owns an external-data file.
_MAX_SIBLING_MODELS = 16


def external_locations(f: BinaryIO) -> list[str]:
    """The external-data files an ONNX model reads its initializers from (none for a model
    kept in one file, or for a file that is not ONNX)."""
    try:
        f.seek(0)
        found = _onnx_external(f, os.fstat(f.fileno()).st_size)
    except PARSE_ERRORS:
        return []
    return sorted({location for location, _ in found})


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
                found = [
                    tensor
                    for location, tensor in _onnx_external(f, os.fstat(f.fileno()).st_size)
                    if (model.parent / location).resolve() == target
                ]
        except (OSError, *PARSE_ERRORS):
            continue
        found.sort(key=lambda t: t.offset)
        if found and well_formed(found, size):
            return Layout("onnx-external", size, tuple(found))
    return None


_MODEL_GRAPH, _GRAPH_INITIALIZER = 7, 5
_TENSOR_DIMS, _TENSOR_DATA_TYPE, _TENSOR_NAME, _TENSOR_RAW_DATA = 1, 2, 8, 9
_TENSOR_EXTERNAL_DATA, _TENSOR_DATA_LOCATION, _LOCATION_EXTERNAL = 13, 14, 1
_ENTRY_KEY, _ENTRY_VALUE = 1, 2


def _varint(f: BinaryIO) -> int:
    result, shift = 0, 0
    while True:
        byte = read_exact(f, 1)[0]
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result
        shift += 7
        if shift > 63:
            raise MalformedError("varint too long")


def _fields(f: BinaryIO, end: int) -> Iterator[tuple[int, int, int, int]]:
    """(field number, wire type, value or payload start, payload length) up to ``end``."""
    while f.tell() < end:
        key = _varint(f)
        field, wire = key >> 3, key & 7
        if field == 0:
            raise MalformedError("field number 0")
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
                raise MalformedError("field overruns its message")
            yield field, wire, start, length
            f.seek(start + length)
        else:
            raise MalformedError(f"unsupported wire type {wire}")


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
        raise MalformedError("no graph")


def tensors(f: BinaryIO, size: int) -> list[Tensor]:
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
            t.name = read_exact(f, length).decode()
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
                    text = read_exact(f, e_length).decode()
                    if e_field == _ENTRY_KEY:
                        key = text
                    else:
                        entry = text
            t.external[key] = entry
    f.seek(end)
    return t
