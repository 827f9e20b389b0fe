"""What an operator changes on the device: pins, explicit loads and evictions."""

from __future__ import annotations

from edged.lifecycle.manager import Lifecycle
from edged.portfolio.portfolio import Portfolio
from edged.serving.views import Loaded


class OperationsService:
    def __init__(self, portfolio: Portfolio, lifecycle: Lifecycle | None = None) -> None:
        self.portfolio = portfolio
        self.lifecycle = lifecycle

    async def repository_load(self, model: str) -> None:
        """Triton's RepositoryModelLoad: a newer staged version is promoted (the serving one
        serves until it passes); without one, the serving version is loaded now."""
        self.portfolio.refresh()
        if self.lifecycle is not None and self.lifecycle.promote_newest(model):
            return
        await self.portfolio.load(model)

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
