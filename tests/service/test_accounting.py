"""What a load is charged: the memory meter's measurement, but never less than the probe's
clean measurement in a fresh interpreter."""

from __future__ import annotations

import asyncio
from pathlib import Path

from edged.store.store import ModelStore
from tests.portfolios import DeclaredMemory, mlp_family, open_portfolio


def test_a_load_is_accounted_at_least_at_the_probes_measurement(tmp_path: Path) -> None:
    """Freed pages of an earlier unload can make a load's RSS delta tiny (a reload of a 13.6 MB
    variant once grew RSS by 1.1 MB): the clean subprocess measurement is the floor. The load and
    the probe are real; the meter reports the small delta reused pages produce."""
    store = ModelStore(tmp_path / "store")
    store.import_dir(mlp_family(tmp_path / "src", "m", (256, 1024, 1024, 256), seed=1))
    portfolio = open_portfolio(store, tmp_path, meter=DeclaredMemory(lambda v: 1_000_000))

    async def run() -> tuple[int, int]:
        try:
            fp32 = portfolio.slot("m").manifest.variant("fp32")
            probed = (await portfolio.validate(fp32)).memory_bytes
            await portfolio.load("m", "fp32")
            handle = portfolio.slot("m").handle
            assert handle is not None and handle.variant.id == "fp32"
            return handle.load_stats.memory_bytes, probed
        finally:
            await portfolio.close()
            portfolio.journal.close()

    accounted, probed = asyncio.run(run())
    assert probed > 5_000_000  # ~13 MB for this MLP in fp32
    assert accounted == probed
