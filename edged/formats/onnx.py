"""ONNX models, read on the protobuf wire format without decoding the whole message: the byte
ranges of every tensor payload the file holds, and where external data lives.

Exporters put weights in several places, and the patch engine has to find all of them:

- graph initializers (``torch.onnx``, most converters) and sparse initializers;
- ``Constant`` nodes: the ``value`` tensor attribute (PaddlePaddle, TensorFlow converters), or
  the ``value_floats`` / ``value_ints`` list forms;
- any tensor-valued attribute of any node, and every subgraph of ``If``, ``Loop`` and ``Scan``
  (their ``then_branch`` / ``else_branch`` / ``body`` graphs, with their own initializers and
  nodes, nested to any depth), and the nodes of model-local functions;
- tensors whose data is in external files (``external_layout``).

A tensor's payload is ``raw_data``, or the packed ``float_data`` / ``double_data`` (fixed
width: patched as floats), or a packed varint list (``int32_data``, ``int64_data``, ``ints``:
patched as bytes). Each is named by its path in the model — the initializer's name for the main
graph's initializers (as before), else ``<node>::<attribute>`` below the graph it sits in, where
``<node>`` is the node's name, else its first output (unique in a model), else its index — so
that the same tensor in two exports of one model has the same name. The parse runs over a
memory map of the file: nothing but the fields' keys and lengths is read, whatever the size.
"""

from __future__ import annotations

import dataclasses
import mmap
import os
from pathlib import Path
from typing import BinaryIO

from edged.formats.layout import PARSE_ERRORS, Layout, MalformedError, Tensor, well_formed
from edged.formats.protowire import ProtoWire

_ONNX_FLOAT_WIDTH = {1: 4, 10: 2, 11: 8, 16: 2}  # FLOAT, FLOAT16, DOUBLE, BFLOAT16
# Element sizes of the fixed-size ONNX types, for external tensors saved without a "length".
_ONNX_ELEMENT_SIZE = {
    **_ONNX_FLOAT_WIDTH,
    **{2: 1, 3: 1, 9: 1, 4: 2, 5: 2, 6: 4, 12: 4, 7: 8, 13: 8, 14: 8, 15: 16},
}
# How many sibling .onnx files to read looking for the model that owns an external-data file.
_MAX_SIBLING_MODELS = 16
# Smaller payloads stay in the container around them: a tensor operation would cost more in
# the op table than the tensor is worth.
MIN_TENSOR_BYTES = 64
_MAX_DEPTH = 64  # of nested subgraphs (a crafted file must not exhaust the stack)

# Field numbers (onnx.proto3).
_MODEL_GRAPH, _MODEL_FUNCTIONS = 7, 25
_GRAPH_NODE, _GRAPH_INITIALIZER, _GRAPH_SPARSE_INITIALIZER = 1, 5, 15
_FUNCTION_NAME, _FUNCTION_NODE = 1, 7
_NODE_OUTPUT, _NODE_NAME, _NODE_ATTRIBUTE = 2, 3, 5
_ATTR_NAME, _ATTR_T, _ATTR_G, _ATTR_FLOATS, _ATTR_INTS = 1, 5, 6, 7, 8
_ATTR_TENSORS, _ATTR_GRAPHS, _ATTR_SPARSE_TENSOR, _ATTR_SPARSE_TENSORS = 10, 11, 22, 23
_SPARSE_VALUES, _SPARSE_INDICES = 1, 2
_TENSOR_DIMS, _TENSOR_DATA_TYPE, _TENSOR_NAME, _TENSOR_RAW_DATA = 1, 2, 8, 9
_TENSOR_FLOAT_DATA, _TENSOR_DOUBLE_DATA = 4, 10
_TENSOR_VARINT_DATA = (5, 7, 11)  # int32_data, int64_data, uint64_data (packed varints)
_TENSOR_EXTERNAL_DATA, _TENSOR_DATA_LOCATION, _LOCATION_EXTERNAL = 13, 14, 1
_ENTRY_KEY, _ENTRY_VALUE = 1, 2


@dataclasses.dataclass
class _Found:
    """One tensor as the walk found it."""

    path: str
    data_type: int = 0
    dims: list[int] = dataclasses.field(default_factory=list)
    payload: tuple[int, int] | None = None  # (offset, length) of its values in the file
    width: int = 1
    external: dict[str, str] = dataclasses.field(default_factory=dict)
    location: int = 0


class _Walk:
    def __init__(self, wire: ProtoWire) -> None:
        self.wire = wire
        self.found: list[_Found] = []

    def model(self, size: int) -> None:
        seen_graph = False
        for field, wire, start, length in self.wire.fields(0, size):
            if field == _MODEL_GRAPH and wire == 2:
                seen_graph = True
                self.graph(start, start + length, "", 0, main=True)
            elif field == _MODEL_FUNCTIONS and wire == 2:
                self.function(start, start + length)
        if not seen_graph:
            raise MalformedError("no graph")

    def function(self, start: int, end: int) -> None:
        name, nodes = "", []
        for field, wire, value, length in self.wire.fields(start, end):
            if field == _FUNCTION_NAME and wire == 2:
                name = self.wire.text(value, length)
            elif field == _FUNCTION_NODE and wire == 2:
                nodes.append((value, value + length))
        for index, (s, e) in enumerate(nodes):
            self.node(s, e, f"function {name}/", index, 1)

    def graph(self, start: int, end: int, prefix: str, depth: int, main: bool = False) -> None:
        if depth > _MAX_DEPTH:
            raise MalformedError("subgraphs nested too deep")
        node_index = initializer_index = 0
        for field, wire, value, length in self.wire.fields(start, end):
            if wire != 2:
                continue
            if field == _GRAPH_INITIALIZER:
                found = self.tensor(value, value + length, "")
                # The main graph's initializers keep their own names (what they always were).
                name = found.path or f"initializer[{initializer_index}]"
                found.path = name if main else f"{prefix}{name}"
                initializer_index += 1
            elif field == _GRAPH_SPARSE_INITIALIZER:
                self.sparse(value, value + length, f"{prefix}sparse[{initializer_index}]")
                initializer_index += 1
            elif field == _GRAPH_NODE:
                self.node(value, value + length, prefix, node_index, depth)
                node_index += 1

    def node(self, start: int, end: int, prefix: str, index: int, depth: int) -> None:
        name = output = ""
        attributes = []
        for field, wire, value, length in self.wire.fields(start, end):
            if wire != 2:
                continue
            if field == _NODE_NAME:
                name = self.wire.text(value, length)
            elif field == _NODE_OUTPUT and not output:
                output = self.wire.text(value, length)
            elif field == _NODE_ATTRIBUTE:
                attributes.append((value, value + length))
        node = f"{prefix}{name or output or f'node[{index}]'}"
        for s, e in attributes:
            self.attribute(s, e, node, depth)

    def attribute(self, start: int, end: int, node: str, depth: int) -> None:
        name = ""
        parts: list[tuple[int, int, int]] = []
        # onnx.proto is proto2: ``floats`` and ``ints`` are written unpacked, one field per
        # element; a run of them is one stretch of bytes (key, value, key, value...).
        runs: dict[int, list[int]] = {}
        for field, wire, value, length, begin, stop in self.wire.spans(start, end):
            if field == _ATTR_NAME and wire == 2:
                name = self.wire.text(value, length)
            elif wire == 2:
                parts.append((field, value, length))
            elif field in (_ATTR_FLOATS, _ATTR_INTS):
                run = runs.get(field)
                if run is None:
                    runs[field] = [begin, stop]
                elif run[1] == begin:
                    run[1] = stop
                else:
                    run[1] = -1  # interleaved with other fields: not one stretch
        here = f"{node}::{name}"
        for field, (begin, stop) in runs.items():
            if stop > begin:
                self.found.append(
                    _Found(here, 1 if field == _ATTR_FLOATS else 7, [], (begin, stop - begin))
                )
        counts: dict[int, int] = {}  # per repeated field, the index of the next item
        for field, value, length in parts:
            k = counts[field] = counts.get(field, -1) + 1
            if field == _ATTR_T:
                self.tensor(value, value + length, here)
            elif field == _ATTR_TENSORS:
                self.tensor(value, value + length, f"{here}[{k}]")
            elif field == _ATTR_G:
                self.graph(value, value + length, f"{here}/", depth + 1)
            elif field == _ATTR_GRAPHS:
                self.graph(value, value + length, f"{here}[{k}]/", depth + 1)
            elif field == _ATTR_SPARSE_TENSOR:
                self.sparse(value, value + length, here)
            elif field == _ATTR_SPARSE_TENSORS:
                self.sparse(value, value + length, f"{here}[{k}]")
            elif field == _ATTR_FLOATS:  # packed (proto3 writers): fixed32 values
                self.found.append(_Found(here, 1, [length // 4], (value, length), 4))
            elif field == _ATTR_INTS:  # packed varints
                self.found.append(_Found(here, 7, [], (value, length), 1))

    def sparse(self, start: int, end: int, path: str) -> None:
        for field, wire, value, length in self.wire.fields(start, end):
            if wire == 2 and field == _SPARSE_VALUES:
                self.tensor(value, value + length, f"{path}.values")
            elif wire == 2 and field == _SPARSE_INDICES:
                self.tensor(value, value + length, f"{path}.indices")

    def tensor(self, start: int, end: int, path: str) -> _Found:
        """A TensorProto; ``path`` "" names it by its own name (initializers)."""
        t = _Found(path)
        wire_ = self.wire
        for field, wire, value, length in wire_.fields(start, end):
            if field == _TENSOR_NAME and wire == 2 and not path:
                t.path = wire_.text(value, length)
            elif field == _TENSOR_DATA_TYPE and wire == 0:
                t.data_type = value
            elif field == _TENSOR_RAW_DATA and wire == 2:
                t.payload, t.width = (value, length), 0  # width from the data type, below
            elif field == _TENSOR_FLOAT_DATA and wire == 2:
                t.payload, t.width = (value, length), 4
            elif field == _TENSOR_DOUBLE_DATA and wire == 2:
                t.payload, t.width = (value, length), 8
            elif field in _TENSOR_VARINT_DATA and wire == 2:
                t.payload, t.width = (value, length), 1
            elif field == _TENSOR_DIMS and wire == 0:
                t.dims.append(value)
            elif field == _TENSOR_DIMS and wire == 2:  # packed
                pos = value
                while pos < value + length:
                    dim, pos = wire_.varint(pos, value + length)
                    t.dims.append(dim)
            elif field == _TENSOR_DATA_LOCATION and wire == 0:
                t.location = value
            elif field == _TENSOR_EXTERNAL_DATA and wire == 2:
                key = entry = ""
                for e_field, e_wire, e_value, e_length in wire_.fields(value, value + length):
                    if e_field == _ENTRY_KEY and e_wire == 2:
                        key = wire_.text(e_value, e_length)
                    elif e_field == _ENTRY_VALUE and e_wire == 2:
                        entry = wire_.text(e_value, e_length)
                t.external[key] = entry
        if t.width == 0:
            t.width = _ONNX_FLOAT_WIDTH.get(t.data_type, 1)
        self.found.append(t)
        return t


def _walk(f: BinaryIO, size: int) -> list[_Found]:
    if size == 0:
        raise MalformedError("empty file")
    with mmap.mmap(f.fileno(), size, access=mmap.ACCESS_READ) as buf:
        walk = _Walk(ProtoWire(buf))
        walk.model(size)
    return walk.found


def tensors(f: BinaryIO, size: int) -> list[Tensor]:
    """Every tensor payload kept in the file itself, named uniquely by its path."""
    out, seen = [], set[str]()
    for t in _walk(f, size):
        if t.location == _LOCATION_EXTERNAL or t.payload is None:
            continue
        if t.payload[1] < MIN_TENSOR_BYTES:
            continue
        name = t.path or "tensor"
        if name in seen:  # two tensors with one path (a malformed or odd export): keep both
            k = 1
            while f"{name}#{k}" in seen:
                k += 1
            name = f"{name}#{k}"
        seen.add(name)
        width = t.width if t.payload[1] % t.width == 0 else 1
        out.append(Tensor(name, t.payload[0], t.payload[1], width, tuple(t.dims), t.data_type))
    return out


def external_locations(f: BinaryIO) -> list[str]:
    """The external-data files an ONNX model reads tensors from (none for a model kept in one
    file, or for a file that is not ONNX)."""
    try:
        f.seek(0)
        found = _external(f, os.fstat(f.fileno()).st_size)
    except (*PARSE_ERRORS, OSError):
        return []
    return sorted({location for location, _ in found})


def external_layout(data_path: Path, size: int) -> Layout | None:
    """The layout of ``data_path`` as an external-data file of an ONNX model in the same
    directory (its tensors' ``location`` names this file), or None.

    onnx.save(..., save_as_external_data=True) writes such files: raw tensor bytes at the
    offsets and lengths the model records, nothing else.
    """
    target = data_path.resolve()
    for model in sorted(data_path.parent.glob("*.onnx"))[:_MAX_SIBLING_MODELS]:
        try:
            with model.open("rb") as f:
                found = [
                    tensor
                    for location, tensor in _external(f, os.fstat(f.fileno()).st_size)
                    if (model.parent / location).resolve() == target
                ]
        except (OSError, *PARSE_ERRORS):
            continue
        found.sort(key=lambda t: t.offset)
        if found and well_formed(found, size):
            return Layout("onnx-external", size, tuple(found))
    return None


def _external(f: BinaryIO, size: int) -> list[tuple[str, Tensor]]:
    """(location, tensor) of each tensor kept in an external-data file."""
    out = []
    for t in _walk(f, size):
        location = t.external.get("location")
        if t.location != _LOCATION_EXTERNAL or not location or not t.path:
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
            out.append(
                (location, Tensor(t.path, offset, length, width, tuple(t.dims), t.data_type))
            )
    return out
