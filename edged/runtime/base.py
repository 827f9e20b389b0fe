"""What every runtime offers the portfolio: a signature, memory it holds, infer, generate."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping
from typing import Protocol

import numpy as np

from edged.errors import InvalidInputError
from edged.store.manifest import Warmup
from edged.tensors import (
    DATATYPE_TO_NUMPY,
    NUMPY_TO_DATATYPE,
    Array,
    GenerationParams,
    TensorSpec,
    example_inputs,
    prompt_text,
)

__all__ = [
    "DATATYPE_TO_NUMPY",
    "NUMPY_TO_DATATYPE",
    "Array",
    "GenerationParams",
    "LoadStats",
    "Runtime",
    "TensorSpec",
    "example_inputs",
    "prompt_text",
    "warmup_inputs",
]


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
    staged: bool  # a cascade (runtime/cascade.py): infer_staged says which stage answered
    # How many requests it runs at once (llama.cpp: one per context), None for any number:
    # the serving layer queues the rest on the event loop, never on a worker thread.
    concurrency: int | None

    def infer(self, inputs: Mapping[str, Array]) -> dict[str, Array]:
        """Run the model; blocking, safe to call from several threads at once."""
        ...

    def generate(
        self,
        prompt: str,
        params: GenerationParams,
        should_stop: Callable[[], bool],
        logprobs: list[float] | None = None,
    ) -> Iterator[str]:
        """Stream generated text chunks (generative runtimes only); with ``logprobs``, append
        each generated token's log-probability to it."""
        ...

    def warm_up(self, sample: Warmup | None = None) -> None:
        """One inference, so the first request is not slow: on the manifest's sample when it
        gives one, else on inputs built from the signature."""
        ...

    def close(self) -> None: ...


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
