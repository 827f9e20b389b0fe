"""Where the tensors are: byte ranges of named tensors inside GGUF, ONNX and safetensors files.

The patch engine only needs each tensor's name, byte range and element width (for the float
transforms); it never interprets values. Parsers read headers through a file object, never the
whole file, so memory stays small on large models. A file that does not parse is simply treated
as opaque bytes (layout "raw"): the generic path still patches it. The store uses the same
parsers to refuse what it cannot hold (an ONNX model whose weights live in other files).

One module per format (gguf.py, onnx.py, safetensors.py); this one holds what they share.
"""

from __future__ import annotations

import dataclasses
import struct
from typing import BinaryIO

# The "width" of a GGUF q8_0 tensor: one block, an f16 scale then 32 int8 quants.
Q8_0_BLOCK = 34
MAX_HEADER = 256 << 20


@dataclasses.dataclass(frozen=True)
class Tensor:
    name: str
    offset: int
    length: int
    width: int  # element width in bytes for float tensors, Q8_0_BLOCK for q8_0, 1 for raw bytes
    # What a tensor is when its name is not enough to find it in another version (an exporter
    # renamed it): its dimensions and the format's type code, where the format says.
    shape: tuple[int, ...] = ()
    dtype: int = 0

    @property
    def end(self) -> int:
        return self.offset + self.length


@dataclasses.dataclass(frozen=True)
class Layout:
    kind: str  # "gguf", "onnx", "onnx-external", "safetensors" or "raw"
    size: int
    tensors: tuple[Tensor, ...]  # sorted by offset, non-overlapping


class MalformedError(Exception):
    """The bytes are not the format a parser expected (the caller tries the next one)."""


PARSE_ERRORS = (MalformedError, struct.error, UnicodeDecodeError, ValueError, OverflowError)


def well_formed(tensors: list[Tensor], size: int) -> bool:
    names = {t.name for t in tensors}
    if len(names) != len(tensors):
        return False
    previous_end = 0
    for t in tensors:
        if t.offset < previous_end or t.end > size or t.length <= 0:
            return False
        previous_end = t.end
    return True


def read_exact(f: BinaryIO, n: int) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise MalformedError("truncated")
    return data
