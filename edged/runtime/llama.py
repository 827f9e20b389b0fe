"""llama.cpp (through llama-cpp-python) behind the Runtime protocol.

A llama.cpp context is not thread-safe, so a request holds one context for its whole run. A
variant opens ``contexts`` of them (option, default 1): each is a ``Llama`` over the same
memory-mapped file, so the weights' pages are shared and a context costs its KV cache and compute
buffers (n_ctx-sized; measured with the rest when the variant is loaded and probed, so the memory
budget sees them). With two, two streams on one model are generated at once; a request that
finds every context busy waits for one, in arrival order.
"""

from __future__ import annotations

import array
import codecs
import contextlib
import itertools
import queue
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
MAX_CONTEXTS = 16


class Pieces:
    """Every token's text as llama-cpp-python's detokenize gives it (special tokens render
    empty), read once at load: generation looks each new token up instead of asking the
    library, whose detokenize makes one ctypes call per token of the list it is given. Kept as
    one bytes object and offsets (a vocabulary of 150,000 pieces is about 1 MB, not 6)."""

    def __init__(self, llm: Any) -> None:
        import ctypes

        from llama_cpp import llama_cpp

        vocab = llm._model.vocab
        size = 256
        buffer = ctypes.create_string_buffer(size)
        chunks: list[bytes] = []
        offsets = [0]
        for token in range(llm.n_vocab()):
            n = llama_cpp.llama_token_to_piece(vocab, token, buffer, size, 0, False)
            if n < 0:  # longer than the buffer: -n is what it needs
                size = -n
                buffer = ctypes.create_string_buffer(size)
                n = llama_cpp.llama_token_to_piece(vocab, token, buffer, size, 0, False)
            chunks.append(buffer.raw[: max(n, 0)])
            offsets.append(offsets[-1] + max(n, 0))
        self._text = b"".join(chunks)
        self._offsets = array.array("q", offsets)
        self.longest = max((b - a for a, b in itertools.pairwise(offsets)), default=1)
        self._bos = llm.token_bos()

    def joiner(self) -> Callable[[int], bytes]:
        """A function of each next token giving the bytes it adds to the detokenized text of
        the tokens so far. detokenize drops the text's leading space when the tokens start with
        BOS (which renders empty): the first non-empty piece after a leading BOS loses it."""
        text, offsets, bos = self._text, self._offsets, self._bos
        owed: bool | None = None  # a leading space to drop; unknown before the first token

        def add(token: int) -> bytes:
            nonlocal owed
            data = text[offsets[token] : offsets[token + 1]]
            if owed is None:
                owed = token == bos
            if owed and data:
                owed = False
                if data.startswith(b" "):
                    return data[1:]
            return data

        return add


class LlamaRuntime:
    platform = "llama_cpp_gguf"
    staged = False
    concurrency: int | None

    def __init__(self, path: Path, options: Mapping[str, Any]) -> None:
        from llama_cpp import Llama

        self._embedding = bool(options.get("embedding", False))
        count = int(options.get("contexts", 1))
        if not 1 <= count <= MAX_CONTEXTS:
            raise ValueError(f"options.contexts: expected 1 to {MAX_CONTEXTS}, got {count}")
        self._contexts: list[Any] = []
        try:
            for _ in range(count):
                self._contexts.append(
                    Llama(
                        model_path=str(path),
                        n_ctx=int(options.get("n_ctx", 512)),
                        n_threads=int(options.get("threads", 1)),
                        n_batch=int(options.get("n_batch", 128)),
                        use_mmap=True,
                        embedding=self._embedding,
                        verbose=False,
                    )
                )
        except BaseException:
            for llm in self._contexts:
                llm.close()
            raise
        self._free: queue.SimpleQueue[Any] = queue.SimpleQueue()
        for llm in self._contexts:
            self._free.put(llm)
        self.concurrency = count
        first = self._contexts[0]
        self.max_prompt_tokens = int(options.get("max_prompt_tokens", first.n_ctx() - 1))
        # A prompt longer than this many bytes cannot fit in the context whatever it says (no
        # token is longer than the vocabulary's longest piece): refused before tokenizing,
        # which is quadratic in llama.cpp (a 128 KiB prompt took 2.6 s).
        self._pieces = Pieces(first)
        self.max_prompt_bytes = int(
            options.get("max_prompt_bytes", self.max_prompt_tokens * max(self._pieces.longest, 1))
        )
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
            with self._context() as llm:
                vector = np.asarray(llm.embed(prompt), dtype=np.float32)
            # Models without a pooling type give one vector per token: mean-pool them.
            if vector.ndim == 2:
                vector = vector.mean(axis=0)
            return {EMBEDDING_OUTPUT: vector}
        text = "".join(self.generate(prompt, GenerationParams(), lambda: False))
        return {TEXT_OUTPUT: np.array([text.encode()], dtype=object)}

    def generate(
        self,
        prompt: str,
        params: GenerationParams,
        should_stop: Callable[[], bool],
        logprobs: list[float] | None = None,
    ) -> Iterator[str]:
        """Stream the completion of ``prompt``, as create_completion would (same prompt tokens,
        same sampler), one token at a time; with ``logprobs``, the log-probability of each
        generated token under the distribution it was drawn from is appended to it (what a
        request's confidence is computed from)."""
        if not self.generative:
            raise InvalidInputError("this GGUF variant serves embeddings, not generation")
        import llama_cpp

        size = len(prompt.encode())
        if size > self.max_prompt_bytes:
            raise InvalidInputError(
                f"input tensor {TEXT_INPUT!r}: the prompt is {size} bytes, at most "
                f"{self.max_prompt_bytes} are accepted (max_prompt_tokens "
                f"{self.max_prompt_tokens} of the model's longest token)"
            )
        with self._context() as llm:
            prompt_tokens = self._prompt_tokens(llm, prompt)
            n_ctx = llm.n_ctx()
            if len(prompt_tokens) > min(self.max_prompt_tokens, n_ctx - 1):
                raise InvalidInputError(
                    f"input tensor {TEXT_INPUT!r}: the prompt is {len(prompt_tokens)} tokens, "
                    f"at most {min(self.max_prompt_tokens, n_ctx - 1)} are accepted (the "
                    f"model's context holds {n_ctx})"
                )
            vocab, n_vocab = llm._model.vocab, llm.n_vocab()
            decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
            piece = self._pieces.joiner()
            tokens = llm.generate(
                prompt_tokens, top_k=40, top_p=0.95, min_p=0.05, temp=params.temperature
            )
            for produced, token in enumerate(tokens, start=1):
                if should_stop() or llama_cpp.llama_vocab_is_eog(vocab, token):
                    break
                if logprobs is not None:
                    logits = np.ctypeslib.as_array(
                        llama_cpp.llama_get_logits(llm._ctx.ctx), shape=(n_vocab,)
                    )
                    top = float(logits.max())
                    logprobs.append(
                        float(logits[token]) - top - float(np.log(np.exp(logits - top).sum()))
                    )
                # The bytes detokenize(all tokens so far) adds for this one, without
                # detokenizing them all again (that made a generation quadratic in its
                # length, and held the GIL for most of it).
                text = decoder.decode(piece(token))
                if text:
                    yield text
                if produced >= params.max_tokens or len(prompt_tokens) + produced >= n_ctx:
                    break
            tail = decoder.decode(b"", final=True)
            if tail:
                yield tail

    @contextlib.contextmanager
    def _context(self) -> Iterator[Any]:
        """A free context for one request's run (waiting for one when all are busy)."""
        llm = self._free.get()
        try:
            yield llm
        finally:
            self._free.put(llm)

    @staticmethod
    def _prompt_tokens(llm: Any, prompt: str) -> list[int]:
        """As create_completion tokenizes a prompt: BOS when the model wants one, then the text
        with special tokens parsed."""
        bos = llm.token_bos()
        head = [bos] if bos != -1 and llm._model.add_bos_token() else []
        return head + (llm.tokenize(prompt.encode(), add_bos=False, special=True) if prompt else [])

    def warm_up(self, sample: Warmup | None = None) -> None:
        text = sample.prompt if sample is not None and sample.prompt else "hello"
        if self._embedding:
            self.infer({TEXT_INPUT: np.array([text.encode()], dtype=object)})
        else:
            for _ in self.generate(text, GenerationParams(max_tokens=1), lambda: False):
                pass

    def close(self) -> None:
        """Close every context, once each is free (a drained handle has none in use)."""
        for _ in self._contexts:
            self._free.get().close()
