"""Start-up loading on the real portfolio: with no history and nothing evicted, every model that
can be resident is, rather than the first ones at full quality and the rest cold."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

from edged.portfolio.residency import BudgetSettings
from edged.store.store import ModelStore
from tests.portfolios import mlp_family, open_portfolio


def test_start_up_leaves_room_for_every_model(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "store")
    for name, seed in (("a", 1), ("b", 2)):
        store.import_dir(mlp_family(tmp_path / "src" / name, name, (512, 1024, 1024, 64), seed))
    portfolio = open_portfolio(store, tmp_path)

    async def run() -> dict[str, str | None]:
        try:
            manifest = portfolio.slot("a").manifest
            assert manifest is not None
            sizes = {}
            for variant in manifest.variants:
                await portfolio.validate(variant)
                sizes[variant.id] = portfolio.expected_bytes(variant, portfolio.verdict(variant)[2])
            assert sizes["fp32"] > 2 * sizes["int8"], sizes
            # a's fp32 fits, and then b's int8 would not: a name-order greedy pass leaves b cold.
            budget = sizes["fp32"] + sizes["int8"] // 2
            portfolio.settings = dataclasses.replace(
                portfolio.settings, budget=BudgetSettings(configured=budget)
            )
            await portfolio.tick()
            await portfolio.load_all()
            assert portfolio.accounted() <= budget
            return {
                name: slot.handle.variant.id if slot.handle else None
                for name, slot in portfolio.slots.items()
            }
        finally:
            await portfolio.close()
            portfolio.journal.close()

    assert asyncio.run(run()) == {"a": "int8", "b": "int8"}
