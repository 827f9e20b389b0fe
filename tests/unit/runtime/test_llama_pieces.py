"""Generation reads each new token's text from a table built at load (runtime/llama.py Pieces)
instead of detokenizing every token so far again: the text must be what llama-cpp-python gives."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from edged.demo import PROMPTS, gguf_llama
from edged.runtime.base import GenerationParams
from edged.runtime.llama import LlamaRuntime

WORDS = ("\u2581the", "\u2581edge", "ing", "\u2581caf\u00e9", "\u2581\u2581", "\u00e9t\u00e9")
WORDS += ("x" * 70,)


@pytest.fixture(scope="module")
def gguf_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("pieces") / "words.gguf"
    gguf_llama(path, words=WORDS)
    return path


@pytest.fixture(scope="module")
def runtime(gguf_file: Path) -> LlamaRuntime:
    return LlamaRuntime(gguf_file, {"n_ctx": 256})


def test_pieces_join_to_what_detokenize_gives(runtime: LlamaRuntime) -> None:
    llm = runtime._contexts[0]
    n_vocab = llm.n_vocab()
    rng = random.Random(7)
    long_word = n_vocab - 1  # the 70-byte one: checked apart, below
    words = list(range(n_vocab - len(WORDS), long_word))
    cases = [[1], [1, 1], [1, 1, 259], [2, 1, 5], words, [1, *words], [259, 1, 259]]
    cases += [[rng.randrange(long_word) for _ in range(rng.randint(1, 40))] for _ in range(200)]
    cases += [[1, *rng.sample(words, 3)] for _ in range(20)]
    for tokens in cases:
        add = runtime._pieces.joiner()
        joined = b"".join([add(t) for t in tokens])
        assert joined == llm.detokenize(tokens), tokens
    # The 70-byte word is longer than llama-cpp-python's 32-byte piece buffer, which garbles it
    # (it slices its buffer by the negative size llama.cpp returns): the table has it whole.
    assert runtime._pieces.joiner()(long_word) == b"x" * 70
    assert runtime._pieces.longest == 70
    assert runtime.max_prompt_bytes == runtime.max_prompt_tokens * 70


def test_generation_is_create_completion_token_for_token(
    runtime: LlamaRuntime, gguf_file: Path
) -> None:
    from llama_cpp import Llama

    reference = Llama(model_path=str(gguf_file), n_ctx=256, n_threads=1, verbose=False)
    try:
        for prompt, tokens in [(p, 24) for p in PROMPTS] + [("a long one", 200)]:
            want = reference.create_completion(prompt, max_tokens=tokens, temperature=0.0)
            got = "".join(
                runtime.generate(prompt, GenerationParams(max_tokens=tokens), lambda: False)
            )
            assert got == want["choices"][0]["text"], prompt  # type: ignore[index]
            assert len(got) == tokens  # one byte per token: none was lost or doubled
    finally:
        reference.close()
