"""What a preload costs the requests running beside it: the latency of a resident model's
inference while nothing loads, while another model preloads (nice-10 thread, outside the memory
lock), and while another model loads on demand (the normal load thread). Phases interleave in
rounds so machine noise spreads over all three.

In-process: the daemon's own Portfolio and infer pool, a mid-size MLP (512-1024-1024-512) serving,
a second one of the same size loading and unloading in a loop.

    .venv/bin/python bench/preload_latency.py [--rounds 6] [--requests 300]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edged.portfolio.journal import CrashJournal  # noqa: E402
from edged.portfolio.portfolio import Portfolio  # noqa: E402
from edged.runtime import warm_runtimes  # noqa: E402
from edged.store.store import ModelStore  # noqa: E402
from tests.portfolios import make_settings, mlp_family  # noqa: E402


async def serve_requests(portfolio: Portfolio, pool: ThreadPoolExecutor, n: int) -> list[float]:
    x = {"input": np.ones((1, 512), np.float32)}
    loop = asyncio.get_running_loop()
    out = []
    for _ in range(n):
        start = time.perf_counter()
        lease = await portfolio.lease("serving", "")
        try:
            await loop.run_in_executor(pool, lease.handle.runtime.infer, x)
        finally:
            lease.release()
        out.append((time.perf_counter() - start) * 1e6)
    return out


async def churn(portfolio: Portfolio, mode: str, stop: asyncio.Event) -> int:
    loads = 0
    while not stop.is_set():
        if mode == "preload":
            await portfolio.preload("other", 1.0, 1.0, "bench")
        else:
            await portfolio.ensure_ready(portfolio.slots["other"])
        loads += 1
        await portfolio.unload("other")
    return loads


async def main_async(rounds: int, requests: int) -> str:
    work = Path(tempfile.mkdtemp(prefix="edged-preload-latency-"))
    store = ModelStore(work / "store")
    for seed, name in enumerate(("serving", "other")):
        store.import_dir(mlp_family(work / "src", name, (512, 1024, 1024, 512), seed=seed))
    warm_runtimes()
    portfolio = Portfolio(
        store,
        CrashJournal(work / "journal"),
        make_settings(),
    )
    pool = ThreadPoolExecutor(4, "edged-infer")
    portfolio.refresh()
    for name in ("serving", "other"):
        await portfolio.ensure_ready(portfolio.slots[name], "fp32")
    await portfolio.unload("other")
    results: dict[str, list[float]] = {"idle": [], "preload": [], "on-demand load": []}
    loads = {"preload": 0, "on-demand load": 0}
    for _ in range(rounds):
        for phase in results:
            stop = asyncio.Event()
            mode = "preload" if phase == "preload" else "load"
            background = (
                asyncio.ensure_future(churn(portfolio, mode, stop)) if phase != "idle" else None
            )
            results[phase] += await serve_requests(portfolio, pool, requests)
            stop.set()
            if background is not None:
                loads[phase] += await background
    with contextlib.suppress(Exception):
        await portfolio.close()
    pool.shutdown()
    idle = statistics.median(results["idle"])
    lines = [
        "| phase | loads of the other model | p50 us | p99 us | p50 vs idle |",
        "|---|---|---|---|---|",
    ]
    for phase, values in results.items():
        values.sort()
        p50, p99 = statistics.median(values), values[int(len(values) * 0.99)]
        lines.append(
            f"| {phase} | {loads.get(phase, 0)} | {p50:.0f} | {p99:.0f} | {p50 / idle:.2f} x |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--requests", type=int, default=300)
    args = parser.parse_args()
    print(asyncio.run(main_async(args.rounds, args.requests)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
