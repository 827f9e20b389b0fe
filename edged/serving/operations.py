"""What an operator changes on the device: pins, explicit loads and evictions."""

from __future__ import annotations

from edged.portfolio.portfolio import Portfolio
from edged.serving.views import Loaded


class OperationsService:
    def __init__(self, portfolio: Portfolio) -> None:
        self.portfolio = portfolio

    def pin(self, model: str, pinned: bool) -> None:
        """A pin holds the resident variant: never evicted, downgraded or swapped."""
        self.portfolio.pin(model, pinned)

    async def load(self, model: str, variant: str | None = None) -> Loaded:
        """Load ``model`` now (the store is re-read first), optionally a given variant."""
        handle = await self.portfolio.load(model, variant)
        return Loaded(handle.version, handle.variant.id, self.portfolio.bytes_of(handle))

    async def evict(self, model: str) -> None:
        """Unload now; the model stays served and loads again on its next request."""
        await self.portfolio.unload(model)
