"""Start-up loading on the real portfolio: with no history and nothing evicted, every model that
can be resident is, rather than the first ones at full quality and the rest cold."""

from __future__ import annotations

import asyncio
from pathlib import Path

from edged.store.store import ModelStore
from tests.portfolios import make_settings, mlp_family, open_portfolio, quiet_system


def test_start_up_leaves_room_for_every_model(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "store")
    for name, seed in (("a", 1), ("b", 2)):
        store.import_dir(mlp_family(tmp_path / "src" / name, name, (512, 1024, 1024, 64), seed))
    probe = open_portfolio(store, tmp_path / "probe")

    async def sizes() -> dict[str, int]:
        manifest = probe.slot("a").manifest
        found = {}
        for variant in manifest.variants:
            await probe.validate(variant)
            found[variant.id] = probe.expected_bytes(variant, probe.verdict(variant).result)
        await probe.close()
        probe.journal.close()
        return found

    found = asyncio.run(sizes())
    assert found["fp32"] > 2 * found["int8"], found
    # a's fp32 fits, and then b's int8 would not: a name-order greedy pass leaves b cold.
    budget = found["fp32"] + found["int8"] // 2
    portfolio = open_portfolio(
        store, tmp_path, make_settings(memory={"budget": budget}), system=quiet_system(tmp_path)
    )

    async def run() -> dict[str, str | None]:
        try:
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
