"""onnxruntime InferenceSession behind the Runtime protocol."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import onnxruntime as ort

from edged.errors import InvalidInputError
from edged.runtime.base import Array, GenerationParams, TensorSpec, warmup_inputs
from edged.store.manifest import Warmup

_ONNX_TO_DATATYPE = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}


def _spec(arg: Any) -> TensorSpec:
    datatype = _ONNX_TO_DATATYPE.get(arg.type)
    if datatype is None:
        raise ValueError(f"tensor {arg.name}: unsupported ONNX type {arg.type}")
    shape = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in arg.shape)
    return TensorSpec(arg.name, datatype, shape)


class OnnxRuntime:
    platform = "onnxruntime_onnx"
    generative = False
    staged = False
    concurrency: int | None = None

    def __init__(self, path: Path, options: Mapping[str, Any]) -> None:
        so = ort.SessionOptions()
        so.intra_op_num_threads = int(options.get("threads", 1))
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.log_severity_level = 3
        # Threads spin-wait between runs by default, burning a core on a 2-core box for nothing.
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._session = ort.InferenceSession(
            str(path), sess_options=so, providers=["CPUExecutionProvider"]
        )
        self.inputs = tuple(_spec(a) for a in self._session.get_inputs())
        self.outputs = tuple(_spec(a) for a in self._session.get_outputs())
        self._output_names = [o.name for o in self.outputs]
        # InferenceSession.run re-checks in Python, on every call, what check_inputs has already
        # checked (input names) plus things edged never passes (OrtValues, graph capture), then
        # calls the binding's run: call that directly (a few us of the tiny model's ~10).
        binding = getattr(self._session, "_sess", None)
        self._run = binding.run if binding is not None else self._session.run
        self._run_options = ort.RunOptions()

    def infer(self, inputs: Mapping[str, Array]) -> dict[str, Array]:
        # The session's run is thread-safe and releases the GIL.
        feed = inputs if type(inputs) is dict else dict(inputs)
        results = self._run(self._output_names, feed, self._run_options)
        return dict(zip(self._output_names, results, strict=True))

    def generate(
        self,
        prompt: str,
        params: GenerationParams,
        should_stop: Callable[[], bool],
        logprobs: list[float] | None = None,
    ) -> Iterator[str]:
        raise InvalidInputError("this model is not generative; use ModelInfer with tensors")

    def warm_up(self, sample: Warmup | None = None) -> None:
        self.infer(warmup_inputs(self.inputs, sample))

    def close(self) -> None:
        del self._session
