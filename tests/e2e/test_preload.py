"""Preloading in the real daemon: a time-compressed trace with a pipeline and a timer, replayed
with and without preloading; and forecasts that survive a restart."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest

from edged.runtime.probe import stored_result
from edged.sim.trace import write_csv
from edged.store.store import ModelStore
from tests.daemon import DaemonProcess, free_port, scrape, wait_for
from tests.portfolios import mlp_family

pytestmark = pytest.mark.e2e

MODELS = ("a", "b", "c", "d", "e")
# The trace runs about 100x faster than a real one: the scoring's horizon and rate half-life
# shrink with it (300 s -> 3 s, 600 s -> 6 s), and the preloader looks ahead 1 s.
FAST_PRELOAD = {
    "preload__interval_seconds": 0.2,
    "preload__lead_seconds": 1.0,
    "preload__transition_window_seconds": 1.0,
    "residency__horizon_seconds": 3.0,
    "residency__half_life_seconds": 6.0,
}


def build_store(tmp_path: Path) -> tuple[Path, int]:
    """Five small models; returns the store and a budget that holds about two of them."""
    store_path = tmp_path / "store"
    store = ModelStore(store_path)
    src = tmp_path / "src"
    src.mkdir()
    for i, name in enumerate(MODELS):
        directory = mlp_family(src, name, (256, 1024, 1024, 256), seed=i)
        # fp32 only: with one variant per model the budget holds exactly two of them, so no
        # downgrade can make room and every miss is a cold start.
        manifest = json.loads((directory / "manifest.json").read_text())
        manifest["variants"] = [v for v in manifest["variants"] if v["id"] == "fp32"]
        (directory / "manifest.json").write_text(json.dumps(manifest))
        store.import_dir(directory)
    # One start validates every variant (subprocess probe) and records its measured memory.
    DaemonProcess(store_path).start().stop()
    largest = max(
        stored_result(store, v).memory_bytes  # type: ignore[union-attr]
        for name in MODELS
        for v in store.manifest(name, "1").variants
    )
    return store_path, int(2.5 * largest)


def compressed_trace(seconds: float, seed: int) -> list[tuple[float, str]]:
    rng = random.Random(seed)
    events = []
    t = 0.5
    while t < seconds:  # a pipeline: b follows a 400 ms later (a's own load may come first)
        events += [(t, "a"), (t + 0.4, "b")]
        t += rng.uniform(1.2, 2.0)
    t = 0.3
    while t < seconds:  # a timer every 2 s
        events.append((t, "c"))
        t += 2.0
    events += [(rng.uniform(0, seconds), rng.choice(("d", "e"))) for _ in range(int(seconds))]
    return sorted(events)


def replay(daemon: DaemonProcess, trace: Path) -> dict[str, int]:
    result = daemon.edged("trace", "replay", str(trace), "--speed", "1")
    assert result.returncode == 0, result.stdout + result.stderr
    match = re.search(r"cold by model: (.*)", result.stdout)
    assert match, result.stdout
    return {m: int(n) for m, n in (kv.split("=") for kv in match.group(1).split())}


def test_preloading_cuts_cold_starts_on_a_replayed_trace(tmp_path: Path) -> None:
    store_path, budget = build_store(tmp_path)
    trace = tmp_path / "trace.csv"
    write_csv(compressed_trace(30.0, seed=2), trace)

    cold = {}
    for enabled in (False, True):
        daemon = DaemonProcess(
            store_path, memory__budget=str(budget), preload__enabled=enabled, **FAST_PRELOAD
        ).start()
        try:
            cold[enabled] = replay(daemon, trace)
        finally:
            daemon.stop()
    # The pipeline (a every 1.2-2 s, b 400 ms after it) and the timer (c) are what the
    # forecasters predict; random traffic to d and e is not predictable, and preloads of it may
    # displace as much as they save. (Typical counts, a+b+c: ~50 without preloading, ~38 with.)
    structured_without = sum(cold[False][m] for m in "abc")
    structured_with = sum(cold[True][m] for m in "abc")
    assert structured_with < structured_without, cold


def test_forecasts_survive_a_restart(tmp_path: Path) -> None:
    store_path, budget = build_store(tmp_path)
    trace = tmp_path / "pipeline.csv"
    write_csv([(i * 0.5 + dt, m) for i in range(10) for dt, m in ((0, "a"), (0.1, "b"))], trace)
    port = free_port()
    settings = {
        **FAST_PRELOAD,
        "memory__budget": str(budget),
        "metrics__address": f"127.0.0.1:{port}",
    }

    first = DaemonProcess(store_path, **settings).start()
    try:
        replay(first, trace)
    finally:
        first.stop()  # SIGTERM: the history writer flushes
    second = DaemonProcess(store_path, **settings).start()
    try:
        replayed = re.search(r"request history: (\d+) requests replayed", second.logs())
        assert replayed and int(replayed.group(1)) >= 20, second.logs()
        assert second.edged("evict", "a").returncode == 0
        assert second.edged("evict", "b").returncode == 0
        assert second.edged("infer", "a").returncode == 0

        # b was learned before the restart, both as a's follower and as a model requested every
        # half second: it is preloaded, on a's arrival (transition) or by the next forecast round,
        # whichever comes first. Without the replayed history nothing would load it.
        def preloads_of_b() -> float:
            metrics = scrape(port)
            return sum(
                metrics.get(f'edged_preloads_total{{model="b",trigger="{trigger}"}}', 0)
                for trigger in ("transition", "forecast")
            )

        wait_for(lambda: preloads_of_b() >= 1, timeout=10, what="a preload of b")
        result = second.edged("infer", "b")
        assert result.returncode == 0
    finally:
        second.stop()
