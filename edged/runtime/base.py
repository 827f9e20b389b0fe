"""What every runtime offers the portfolio: a signature, memory it holds, infer, generate."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from edged.errors import InvalidInputError
from edged.store.manifest import Warmup

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


@dataclasses.dataclass
class LoadStats:
    """What a load cost: wall time and the bytes the variant holds (see runtime/memory.py)."""

    seconds: float = 0.0
    rss_delta_bytes: int = 0
    mapped_bytes: int = 0

    @property
    def memory_bytes(self) -> int:
        return max(self.rss_delta_bytes, 0) + self.mapped_bytes


class Runtime(Protocol):
    platform: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    generative: bool

    def infer(self, inputs: Mapping[str, Array]) -> dict[str, Array]:
        """Run the model; blocking, safe to call from several threads at once."""
        ...

    def generate(
        self, prompt: str, params: GenerationParams, should_stop: Callable[[], bool]
    ) -> Iterator[str]:
        """Stream generated text chunks (generative runtimes only)."""
        ...

    def warm_up(self, sample: Warmup | None = None) -> None:
        """One inference, so the first request is not slow: on the manifest's sample when it
        gives one, else on inputs built from the signature."""
        ...

    def close(self) -> None: ...


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


def warmup_inputs(specs: tuple[TensorSpec, ...], sample: Warmup | None) -> dict[str, Array]:
    """The manifest's warm-up sample in the signature's datatypes; example inputs for the rest."""
    out = example_inputs(specs)
    given = {name: (shape, data) for name, shape, data in (sample.inputs if sample else ())}
    for spec in specs:
        if spec.name not in given:
            continue
        shape, data = given.pop(spec.name)
        dtype = object if spec.datatype == "BYTES" else DATATYPE_TO_NUMPY[spec.datatype]
        try:
            out[spec.name] = np.asarray(data, dtype=dtype).reshape(shape)
        except (TypeError, ValueError) as exc:
            raise InvalidInputError(f"manifest warmup.inputs.{spec.name}: {exc}") from None
    if given:
        raise InvalidInputError(
            f"manifest warmup.inputs: the model has no input {sorted(given)[0]!r}"
        )
    return out


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
