"""llama.cpp (through llama-cpp-python) behind the Runtime protocol.

A llama.cpp context is not thread-safe, so every call on it holds the context lock; requests to
one GGUF model are served one at a time, in arrival order.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from edged.errors import InvalidInputError
from edged.runtime.base import Array, GenerationParams, TensorSpec, prompt_text
from edged.store.manifest import Warmup

TEXT_INPUT = "text_input"
TEXT_OUTPUT = "text_output"
EMBEDDING_OUTPUT = "embedding"


class LlamaRuntime:
    platform = "llama_cpp_gguf"
    staged = False

    def __init__(self, path: Path, options: Mapping[str, Any]) -> None:
        from llama_cpp import Llama

        self._embedding = bool(options.get("embedding", False))
        self._llm = Llama(
            model_path=str(path),
            n_ctx=int(options.get("n_ctx", 512)),
            n_threads=int(options.get("threads", 1)),
            n_batch=int(options.get("n_batch", 128)),
            use_mmap=True,
            embedding=self._embedding,
            verbose=False,
        )
        self._lock = threading.Lock()
        self.generative = not self._embedding
        self.inputs: tuple[TensorSpec, ...] = (TensorSpec(TEXT_INPUT, "BYTES", (1,)),)
        self.outputs: tuple[TensorSpec, ...]
        if self._embedding:
            self.outputs = (TensorSpec(EMBEDDING_OUTPUT, "FP32", (-1,)),)
        else:
            self.outputs = (TensorSpec(TEXT_OUTPUT, "BYTES", (1,)),)

    def infer(self, inputs: Mapping[str, Array]) -> dict[str, Array]:
        prompt = prompt_text(inputs[TEXT_INPUT], TEXT_INPUT)
        if self._embedding:
            with self._lock:
                vector = np.asarray(self._llm.embed(prompt), dtype=np.float32)
            # Models without a pooling type give one vector per token: mean-pool them.
            if vector.ndim == 2:
                vector = vector.mean(axis=0)
            return {EMBEDDING_OUTPUT: vector}
        text = "".join(self.generate(prompt, GenerationParams(), lambda: False))
        return {TEXT_OUTPUT: np.array([text.encode()], dtype=object)}

    def generate(
        self, prompt: str, params: GenerationParams, should_stop: Callable[[], bool]
    ) -> Iterator[str]:
        if not self.generative:
            raise InvalidInputError("this GGUF variant serves embeddings, not generation")
        with self._lock:
            stream = self._llm.create_completion(
                prompt,
                max_tokens=params.max_tokens,
                temperature=params.temperature,
                stream=True,
            )
            for chunk in stream:
                if should_stop():
                    break
                text = chunk["choices"][0]["text"]  # type: ignore[index]
                if text:
                    yield str(text)

    def warm_up(self, sample: Warmup | None = None) -> None:
        text = sample.prompt if sample is not None and sample.prompt else "hello"
        if self._embedding:
            self.infer({TEXT_INPUT: np.array([text.encode()], dtype=object)})
        else:
            for _ in self.generate(text, GenerationParams(max_tokens=1), lambda: False):
                pass

    def close(self) -> None:
        with self._lock:
            self._llm.close()
