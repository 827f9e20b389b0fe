"""Model portfolios for tests and benchmarks, built offline like the demo one."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from edged.demo import _onnx_outputs, _top1_agreement, mlp_model, quantize_int8
from edged.portfolio.journal import CrashJournal
from edged.portfolio.portfolio import Portfolio, PortfolioSettings
from edged.portfolio.residency import BudgetSettings
from edged.store.store import ModelStore


def open_portfolio(store: ModelStore, work: Path) -> Portfolio:
    """The daemon's portfolio over ``store`` (real loads), its crash journal under ``work``, a
    budget far above what tests load (tests that need pressure set their own), store read."""
    portfolio = Portfolio(
        store,
        CrashJournal(work / "journal"),
        PortfolioSettings(budget=BudgetSettings(configured=1 << 34)),
    )
    portfolio.journal.start()
    portfolio.refresh()
    return portfolio


def mlp_family(out: Path, name: str, sizes: tuple[int, ...], seed: int) -> Path:
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
        json.dumps({"schema": 1, "name": name, "version": "1", "variants": variants})
    )
    return directory
