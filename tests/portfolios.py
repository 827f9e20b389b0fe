"""Model portfolios for tests and benchmarks, built offline like the demo one, and the
portfolio's ports as fakes (a prober that does not start subprocesses, a memory meter that
reports what it is told)."""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from edged import settings as settings_mod
from edged.demo import _onnx_outputs, _top1_agreement, mlp_model, quantize_int8
from edged.portfolio.budget import SystemMemory
from edged.portfolio.journal import CrashJournal
from edged.portfolio.portfolio import Portfolio
from edged.runtime.base import LoadStats
from edged.runtime.probe import ProbeResult
from edged.settings import Settings
from edged.store.manifest import Variant
from edged.store.store import ModelStore


def make_settings(**sections: dict[str, Any]) -> Settings:
    """Settings as the TOML would give them: ``make_settings(memory={"budget": "30MB"})``. The
    default budget is far above what tests load (tests that need pressure set their own)."""
    data: dict[str, Any] = {"memory": {"budget": 1 << 34}}
    for name, values in sections.items():
        data[name] = {**data.get(name, {}), **values}
    return settings_mod.from_dict(data)


def open_portfolio(
    store: ModelStore, work: Path, config: Settings | None = None, **ports: Any
) -> Portfolio:
    """The daemon's portfolio over ``store`` (real loads), its crash journal under ``work``,
    store read. ``ports``: prober=, meter=, system=, clock=, events= (the real ones otherwise)."""
    work.mkdir(parents=True, exist_ok=True)
    portfolio = Portfolio(store, CrashJournal(work / "journal"), config or make_settings(), **ports)
    portfolio.journal.start()
    portfolio.refresh()
    return portfolio


class DeclaredProber:
    """A prober that does not run anything: every variant is usable, its memory the manifest's
    ``memory_bytes`` (or ``sizes[variant id]``), its signature read once from the real file."""

    def __init__(self, sizes: dict[str, int] | None = None) -> None:
        self.sizes = sizes or {}
        self.probed: list[str] = []

    async def probe(self, variant: Variant, path: Path) -> ProbeResult:
        from edged.runtime import open_runtime

        self.probed.append(variant.id)
        runtime = open_runtime(variant.format, path, variant.options)
        try:
            return ProbeResult(
                usable=True,
                load_seconds=0.01,
                memory_bytes=self.sizes.get(variant.id, variant.memory_bytes or variant.size),
                inputs=tuple(s.to_json() for s in runtime.inputs),
                outputs=tuple(s.to_json() for s in runtime.outputs),
                platform=runtime.platform,
            )
        finally:
            runtime.close()


class DeclaredMemory:
    """A memory meter that charges each load what ``charge(variant)`` says (the manifest's
    ``memory_bytes`` by default) and reports the process as holding exactly what is loaded, so
    the accounting's correction stays 1."""

    def __init__(self, charge: Callable[[Variant], int] | None = None) -> None:
        self.charge = charge or (lambda v: v.memory_bytes or v.size)
        self.held = 0
        self.baseline = 100 << 20

    def rss(self) -> int:
        return self.baseline + self.held

    @contextlib.contextmanager
    def measure(self, variant: Variant, path: Path) -> Iterator[LoadStats]:
        stats = LoadStats()
        yield stats
        stats.rss_delta_bytes = self.charge(variant)
        stats.seconds = 0.01
        self.held += stats.rss_delta_bytes

    def released(self, variant: Variant) -> None:
        self.held -= self.charge(variant)


def mlp_family(out: Path, name: str, sizes: tuple[int, ...], seed: int, version: str = "1") -> Path:
    """A model directory with fp32 and int8 variants of a seeded MLP, quality measured."""
    directory = out / name
    directory.mkdir(parents=True)
    fp32, int8 = directory / "model.fp32.onnx", directory / "model.int8.onnx"
    mlp_model(fp32, sizes, seed=seed)
    quantize_int8(fp32, int8)
    sample = {
        "input": np.random.default_rng(seed).standard_normal((256, sizes[0])).astype(np.float32)
    }
    quality = _top1_agreement(_onnx_outputs(fp32, sample), _onnx_outputs(int8, sample))
    variants = []
    for vid, path, q in (("fp32", fp32, 1.0), ("int8", int8, quality)):
        data = path.read_bytes()
        variants.append(
            {
                "id": vid,
                "format": "onnx",
                "file": path.name,
                "sha256": hashlib.sha256(data).hexdigest(),
                "size": len(data),
                "quantization": vid,
                "quality": round(q, 4),
                "memory_bytes": len(data),
                "options": {"threads": 1},
            }
        )
    (directory / "manifest.json").write_text(
        json.dumps({"schema": 1, "name": name, "version": version, "variants": variants})
    )
    return directory


def store_problems(root: Path, recover: bool = True) -> list[str]:
    """What is wrong with a store after a crash: a registered version's blob missing or not
    matching its digest, temporary files left once recovery ran. ``recover``: run the start-up
    recovery first (not while a daemon runs on the store)."""
    store = ModelStore(root)
    if recover:
        store.recover()
    problems = []
    for manifest in store.iter_manifests():
        for variant in manifest.variants:
            path = store.blob_path(variant.sha256)
            where = f"{manifest.name} {manifest.version}/{variant.id}"
            if not path.is_file():
                problems.append(f"{where}: blob missing")
            elif hashlib.sha256(path.read_bytes()).hexdigest() != variant.sha256:
                problems.append(f"{where}: blob does not match its digest")
    if recover:
        problems += [f"left behind: {p.name}" for p in store.tmp.iterdir()]
    return problems


def quiet_system(work: Path) -> SystemMemory:
    """A machine with plenty of memory available, no cgroup limit and no pressure: the working
    budget is the configured one, whatever the test machine is doing."""
    proc = work / "quiet-proc"
    proc.mkdir(parents=True, exist_ok=True)
    return SystemMemory(proc=proc, cgroup_root=proc / "no-cgroup", available=lambda: 1 << 42)
