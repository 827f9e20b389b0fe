"""edged's data plane without gRPC: how much of the mid-size model's throughput at concurrency 2
is lost to edged's own request handling, and how much to the transport.

Runs, in one process and one sitting, interleaved: (a) ``session.run`` from 1 or 2 threads (the
in-process baseline of bench/overhead.py) and (b) the daemon's own Portfolio and
InferenceService.infer driven by 1 or 2 coroutines on an event loop (lease, checks, the hop to
the inference pool, release, the forecasters' bookkeeping) — everything ModelInfer does except
gRPC and protobuf.

    .venv/bin/python bench/dataplane.py --requests 600 --rounds 5
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.overhead import MODELS, build_store, run_load  # noqa: E402
from edged.events import NoEvents  # noqa: E402
from edged.serving.inference import InferenceService  # noqa: E402
from edged.store.store import ModelStore  # noqa: E402
from edged.tensors import GenerationParams  # noqa: E402
from tests.portfolios import open_portfolio  # noqa: E402

PARAMS = GenerationParams(max_tokens=16, temperature=0.0)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=600, help="per cell and round")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="edged-bench-"))
    try:
        root = build_store(work)
        portfolio = open_portfolio(ModelStore(root), work)
        dataplane = InferenceService(portfolio, NoEvents(), workers=4)
        sizes, batch = MODELS["mid"]
        x = np.random.default_rng(0).standard_normal((batch, sizes[0])).astype(np.float32)
        store = ModelStore(root)
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        manifest = store.manifest("mid", "1")
        session = ort.InferenceSession(
            str(store.variant_path(manifest.variants[0])), so, providers=["CPUExecutionProvider"]
        )

        async def dataplane_rate(concurrency: int, n: int) -> float:
            async def client() -> None:
                for _ in range(n // concurrency):
                    await dataplane.infer("mid", "", {"input": x}, [], PARAMS)

            start = time.perf_counter()
            await asyncio.gather(*(client() for _ in range(concurrency)))
            return (n // concurrency * concurrency) / (time.perf_counter() - start)

        async def run() -> dict[tuple[str, int], list[float]]:
            rates: dict[tuple[str, int], list[float]] = {}
            for _ in range(20):
                await dataplane.infer("mid", "", {"input": x}, [], PARAMS)
            for _ in range(args.rounds):
                for c in (1, 2):
                    _, rate = run_load(lambda: session.run(None, {"input": x}), c, args.requests)
                    rates.setdefault(("in-process", c), []).append(rate)
                    rate = await dataplane_rate(c, args.requests)
                    rates.setdefault(("edged data plane", c), []).append(rate)
            await portfolio.close()
            dataplane.close()
            portfolio.journal.close()
            return rates

        rates = asyncio.run(run())
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"mid model, {args.requests} requests per cell, {args.rounds} interleaved rounds")
    print("| path | conc | req/s (median of rounds) | over in-process |")
    print("|---|---|---|---|")
    for c in (1, 2):
        base = statistics.median(rates[("in-process", c)])
        for path in ("in-process", "edged data plane"):
            rate = statistics.median(rates[(path, c)])
            print(f"| {path} | {c} | {rate:.1f} | {rate / base:.2f} x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
