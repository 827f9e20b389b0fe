"""Upgrades on the real portfolio (real onnxruntime sessions): a model served by its small
variant moves back to its best one when memory allows and it is in use, unless it is pinned."""

from __future__ import annotations

import asyncio
from pathlib import Path

from edged.portfolio.journal import CrashJournal
from edged.portfolio.portfolio import Portfolio, PortfolioSettings
from edged.portfolio.residency import BudgetSettings
from edged.store.store import ModelStore
from tests.portfolios import mlp_family


def _portfolio(tmp_path: Path) -> Portfolio:
    store = ModelStore(tmp_path / "store")
    store.import_dir(mlp_family(tmp_path / "src", "m", (256, 512, 512, 64), seed=3))
    portfolio = Portfolio(
        store,
        CrashJournal(tmp_path / "journal"),
        PortfolioSettings(budget=BudgetSettings(configured=1 << 34)),
    )
    portfolio.journal.start()
    portfolio.refresh()
    return portfolio


async def _serve_int8_then_tick(portfolio: Portfolio, *, pinned: bool) -> tuple[str, str]:
    """Load int8 explicitly, serve requests on it, tick with plenty of memory free: the
    variant resident afterwards and the slot's last decision."""
    slot = portfolio.slot("m")
    await portfolio.ensure_ready(slot, "int8")
    portfolio.pin("m", pinned)
    for _ in range(20):
        (await portfolio.lease("m", "")).release()
    assert portfolio.predicted_requests(slot) >= portfolio.settings.upgrade_min_requests
    try:
        await portfolio.tick()
        assert slot.handle is not None
        return slot.handle.variant.id, slot.reason
    finally:
        await portfolio.close()
        portfolio.journal.close()


def test_a_busy_downsized_model_is_upgraded_when_memory_allows(tmp_path: Path) -> None:
    portfolio = _portfolio(tmp_path)
    variant, reason = asyncio.run(_serve_int8_then_tick(portfolio, pinned=False))
    assert variant == "fp32"
    assert reason.startswith("upgraded"), reason


def test_a_pinned_model_keeps_its_variant(tmp_path: Path) -> None:
    portfolio = _portfolio(tmp_path)
    variant, reason = asyncio.run(_serve_int8_then_tick(portfolio, pinned=True))
    assert variant == "int8"
    assert "upgraded" not in reason, reason
