"""Tensors as the protocol and the runtimes both see them: KServe v2 datatypes, signatures,
generation parameters. Domain types: the core and the adapters share them."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from edged.errors import InvalidInputError

# KServe v2 datatypes <-> numpy. BYTES travel as object arrays of ``bytes``.
DATATYPE_TO_NUMPY: dict[str, Any] = {
    "BOOL": np.bool_,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
    "BYTES": np.object_,
}
NUMPY_TO_DATATYPE: dict[Any, str] = {np.dtype(v): k for k, v in DATATYPE_TO_NUMPY.items()}

Array = npt.NDArray[Any]


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str
    shape: tuple[int, ...]  # -1 marks a dynamic dimension

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TensorSpec:
        return cls(str(data["name"]), str(data["datatype"]), tuple(int(d) for d in data["shape"]))


@dataclasses.dataclass(frozen=True)
class GenerationParams:
    max_tokens: int = 64
    temperature: float = 0.0


def prompt_text(array: Array, tensor: str) -> str:
    """The single UTF-8 string a generative model takes as its prompt."""
    flat = array.reshape(-1)
    if flat.size != 1:
        raise InvalidInputError(
            f"input tensor {tensor!r}: expected one prompt string, got {flat.size}"
        )
    value = flat[0]
    try:
        return value.decode() if isinstance(value, bytes) else str(value)
    except UnicodeDecodeError:
        raise InvalidInputError(f"input tensor {tensor!r}: not valid UTF-8") from None


def example_inputs(specs: tuple[TensorSpec, ...]) -> dict[str, Array]:
    """Deterministic inputs matching a signature (dynamic dimensions become 1)."""
    rng = np.random.default_rng(0)
    out: dict[str, Array] = {}
    for spec in specs:
        shape = tuple(1 if d < 0 else d for d in spec.shape)
        dtype = DATATYPE_TO_NUMPY[spec.datatype]
        if spec.datatype == "BYTES":
            out[spec.name] = np.full(shape, b"hello", dtype=object)
        elif np.issubdtype(dtype, np.floating):
            out[spec.name] = rng.standard_normal(shape).astype(dtype)
        elif spec.datatype == "BOOL":
            out[spec.name] = np.zeros(shape, dtype=np.bool_)
        else:
            out[spec.name] = np.zeros(shape, dtype=dtype)
    return out


def short_shape(shape: tuple[int, ...]) -> str:
    """A shape for an error message, cut short (a hostile one may have 64 huge dimensions)."""
    text = str(list(shape))
    return text if len(text) <= 120 else text[:117] + "..."
