"""Streamed generation: edged against llama-cpp-python in-process and against llama-cpp-python's
own OpenAI-compatible server (what a user would run instead), in one sitting.

Same GGUF (a llama-architecture model built offline, large enough that a token costs
milliseconds on one thread), same prompt, greedy sampling, one thread per context everywhere;
one and two concurrent streams. Measured per stream: time to first token (request sent -> first
token received) and tokens per second after the first; per cell: total tokens per second of wall
time. Every system runs every cell in turn, ``--rounds`` times over; medians.

  - in-process: ``Llama.create_completion(stream=True)`` in this process; two streams are two
    threads, each with its own ``Llama`` (llama.cpp releases the GIL while it computes);
  - llama-cpp-python server: ``python -m llama_cpp.server`` in its own venv (var/bench-venvs,
    created on first use), /v1/completions with ``stream: true`` over HTTP (server-sent events);
  - edged: ModelStreamInfer over the unix socket with tritonclient, the variant opening two
    contexts (``options.contexts = 2``).

    .venv/bin/python bench/llm.py [--rounds 3] [--tokens 64]
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import numpy as np  # noqa: E402
import tritonclient.grpc as triton  # noqa: E402

from edged.demo import gguf_llama, quantize_q8_0  # noqa: E402
from edged.store.store import ModelStore  # noqa: E402
from tests.daemon import DaemonProcess, free_port, wait_for  # noqa: E402

VENV = ROOT / "var" / "bench-venvs" / "llamaserver"
PROMPT = "The quick brown fox jumps over the lazy dog while the farmer watches from afar"
N_CTX = 512
# One stream: (time to first token s, decode tokens/s, tokens); a cell: streams, wall seconds.
Stream = tuple[float, float, int]


def server_python() -> Path:
    python = VENV / "bin" / "python"
    if not (VENV / ".installed").exists():
        from importlib.metadata import version

        pin = f"llama-cpp-python[server]=={version('llama_cpp_python')}"
        print(f"installing {pin} into {VENV} ...", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", pin], check=True)
        (VENV / ".installed").touch()
    return python


def build_model(work: Path) -> Path:
    """A q8_0 llama GGUF of ~30M parameters, in an edged store and as a plain file."""
    src = work / "src" / "llm"
    src.mkdir(parents=True)
    f16 = work / "model.f16.gguf"
    gguf_llama(f16, n_embd=512, n_ff=1408, n_layer=8, name="bench-llama")
    q8 = src / "model.q8_0.gguf"
    quantize_q8_0(f16, q8)
    import hashlib

    data = q8.read_bytes()
    manifest = {
        "schema": 1,
        "name": "llm",
        "version": "1",
        "variants": [
            {
                "id": "q8_0",
                "format": "gguf",
                "file": q8.name,
                "sha256": hashlib.sha256(data).hexdigest(),
                "size": len(data),
                "quantization": "q8_0",
                "quality": 1.0,
                "options": {"threads": 1, "n_ctx": N_CTX, "contexts": 2},
            }
        ],
    }
    (src / "manifest.json").write_text(json.dumps(manifest))
    root = work / "store"
    ModelStore(root).import_dir(src)
    return q8


def _stream_stats(sent: float, stamps: list[float]) -> Stream:
    first, last = stamps[0], stamps[-1]
    rate = (len(stamps) - 1) / (last - first) if len(stamps) > 1 and last > first else 0.0
    return first - sent, rate, len(stamps)


def in_process(path: Path, tokens: int) -> Callable[[int], tuple[list[Stream], float, str]]:
    from llama_cpp import Llama

    contexts = [
        Llama(model_path=str(path), n_ctx=N_CTX, n_threads=1, use_mmap=True, verbose=False)
        for _ in range(2)
    ]

    def run(concurrency: int) -> tuple[list[Stream], float, str]:
        streams: list[Stream] = []
        texts: list[str] = []

        def one(llm: Any) -> None:
            sent = time.perf_counter()
            stamps, text = [], []
            for chunk in llm.create_completion(
                PROMPT, max_tokens=tokens, temperature=0.0, stream=True
            ):
                stamps.append(time.perf_counter())
                text.append(chunk["choices"][0]["text"])
            streams.append(_stream_stats(sent, stamps))
            texts.append("".join(text))

        wall = _concurrently(one, contexts[:concurrency])
        return streams, wall, texts[0]

    return run


FAILURES: list[str] = []


def _concurrently(fn: Callable[[Any], None], args: list[Any]) -> float:
    """Wall time of fn(a) for every a, each on its own thread, all at once (a stream that
    fails is counted in FAILURES, its tokens in none of the figures)."""

    def guarded(a: Any) -> None:
        try:
            fn(a)
        except Exception as exc:
            FAILURES.append(f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=guarded, args=(a,)) for a in args]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - start


def llama_server(url: str, tokens: int) -> Callable[[int], tuple[list[Stream], float, str]]:
    client = httpx.Client(base_url=url, timeout=120)

    def run(concurrency: int) -> tuple[list[Stream], float, str]:
        streams: list[Stream] = []
        texts: list[str] = []

        def one(_: Any) -> None:
            body = {"prompt": PROMPT, "max_tokens": tokens, "temperature": 0.0, "stream": True}
            sent = time.perf_counter()
            stamps, text = [], []
            with client.stream("POST", "/v1/completions", json=body) as response:
                response.raise_for_status()
                for line in response.iter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    piece = json.loads(line[6:])["choices"][0]["text"]
                    stamps.append(time.perf_counter())
                    text.append(piece)
            streams.append(_stream_stats(sent, stamps))
            texts.append("".join(text))

        wall = _concurrently(one, [None] * concurrency)
        return streams, wall, texts[0]

    return run


def edged_streams(url: str, tokens: int) -> Callable[[int], tuple[list[Stream], float, str]]:
    def run(concurrency: int) -> tuple[list[Stream], float, str]:
        streams: list[Stream] = []
        texts: list[str] = []

        def one(_: Any) -> None:
            client = triton.InferenceServerClient(url=url)
            chunks: queue.Queue[tuple[float, Any, Any]] = queue.Queue()
            client.start_stream(
                callback=lambda result, error: chunks.put((time.perf_counter(), result, error))
            )
            prompt = triton.InferInput("text_input", [1], "BYTES")
            prompt.set_data_from_numpy(np.array([PROMPT.encode()], dtype=object))
            params = {"max_tokens": tokens, "stream": True, "temperature": "0"}
            sent = time.perf_counter()
            client.async_stream_infer("llm", [prompt], parameters=params)
            stamps, text = [], []
            while True:
                stamp, result, error = chunks.get(timeout=120)
                if error is not None:
                    raise RuntimeError(error)
                piece = result.as_numpy("text_output")[0].decode()
                if piece:
                    stamps.append(stamp)
                    text.append(piece)
                if result.get_response().parameters["triton_final_response"].bool_param:
                    break
            client.stop_stream()
            client.close()
            streams.append(_stream_stats(sent, stamps))
            texts.append("".join(text))

        wall = _concurrently(one, [None] * concurrency)
        return streams, wall, texts[0]

    return run


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument(
        "--generation-nice", type=int, default=10, help="edged's server.generation_nice"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "llm.json")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="edged-llm-"))
    server = daemon = None
    try:
        path = build_model(work)
        port = free_port()
        log = (work / "server.log").open("wb")
        server = subprocess.Popen(
            [str(server_python()), "-m", "llama_cpp.server", "--model", str(path),
             "--n_threads", "1", "--n_ctx", str(N_CTX), "--host", "127.0.0.1",
             "--port", str(port)],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        daemon = DaemonProcess(work / "store", server__generation_nice=args.generation_nice).start()
        url = f"http://127.0.0.1:{port}"

        def server_up() -> bool:
            if server is not None and server.poll() is not None:
                raise RuntimeError((work / "server.log").read_text()[-2000:])
            try:
                return httpx.get(url + "/v1/models", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(server_up, timeout=120, what="llama-cpp-python server")
        systems = {
            "in-process": in_process(path, args.tokens),
            "llama-cpp-python server": llama_server(url, args.tokens),
            "edged": edged_streams(daemon.unix_url, args.tokens),
        }
        texts = {}
        for label, run in systems.items():  # warm every path and context; outputs must agree
            _, _, texts[label] = run(1)
            run(2)
        print(json.dumps({k: v[:40] for k, v in texts.items()}))
        samples: dict[tuple[str, int], list[tuple[list[Stream], float]]] = {}
        failed: dict[str, int] = {}
        for _ in range(args.rounds):
            for concurrency in (1, 2):
                for label, run in systems.items():
                    before = len(FAILURES)
                    streams, wall, _ = run(concurrency)
                    key = f"{label} c={concurrency}"
                    failed[key] = failed.get(key, 0) + len(FAILURES) - before
                    samples.setdefault((label, concurrency), []).append((streams, wall))
        results: dict[str, Any] = {"same_text": len(set(texts.values())) == 1, "cells": {}}
        for concurrency in (1, 2):
            print(f"\n{concurrency} stream(s), {args.tokens} tokens each")
            base = None
            for label in systems:
                rows = samples[(label, concurrency)]
                ttft = statistics.median(s[0] for streams, _ in rows for s in streams) * 1e3
                rate = statistics.median(s[1] for streams, _ in rows for s in streams)
                total = statistics.median(
                    sum(s[2] for s in streams) / wall for streams, wall in rows
                )
                failures = failed[f"{label} c={concurrency}"]
                cell = {
                    "ttft_ms": ttft,
                    "stream_tok_s": rate,
                    "total_tok_s": total,
                    "failed_streams": failures,
                }
                results["cells"][f"{label} c={concurrency}"] = cell
                base = base or cell
                print(
                    f"  {label:24s} ttft {ttft:7.2f} ms ({ttft - base['ttft_ms']:+6.2f})  "
                    f"per stream {rate:7.1f} tok/s  total {total:7.1f} tok/s "
                    f"({total / base['total_tok_s']:4.2f}x in-process)"
                    + (f"  {failures} stream(s) failed" if failures else "")
                )
        if FAILURES:
            print("\nfailures:", *sorted(set(FAILURES)), sep="\n  ")
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2))
    finally:
        if daemon is not None:
            daemon.stop()
        if server is not None:
            server.terminate()
            server.wait(20)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
