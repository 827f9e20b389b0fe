"""What the core tells the world: one protocol of events, emitted by the portfolio, the preloader,
the service layer and the update session, and implemented by adapters (Prometheus).

The core never imports an adapter and never asks whether one is listening: it holds an
``Events`` (``NoEvents`` unless the daemon wires one in) and calls it. Methods on the request path
(``request_finished``, ``served``) are plain calls that must stay cheap: an implementation adds
to counters and returns.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol


class Events(Protocol):
    # -- the request path -----------------------------------------------------------------------
    def request_finished(self, model: str, version: str, ok: bool, seconds: float) -> None:
        """A request to a known model ended (unknown names never reach here); ``version``: the
        one that answered ("" when it failed before one did)."""

    def served(self, model: str, quality: float) -> None:
        """A request was leased to a variant of this declared quality."""

    def confidences(
        self,
        model: str,
        variant: str,
        values: Sequence[float],
        margins: Sequence[float],
        entropies: Sequence[float],
    ) -> None:
        """One answer's rows: each row's top-1 confidence, margin to the second class and
        normalized entropy (NaN when not known: generated text), off the request path."""

    def escalated(self, model: str, escalated: bool, saved: float) -> None:
        """A cascade answered with its first stage or escalated; ``saved``: the share of the
        last stage's compute this request did not spend."""

    # -- residency ------------------------------------------------------------------------------
    def loaded(self, model: str, variant: str, seconds: float) -> None: ...

    def cold_load(self, model: str) -> None:
        """A request had to wait for this load."""

    def evicted(self, reason: str) -> None: ...

    def downgraded(self, reason: str) -> None: ...

    def upgraded(self, model: str) -> None: ...

    def preloaded(self, model: str, trigger: str) -> None: ...

    def preload_hit(self, model: str) -> None: ...

    def preload_wasted(self, model: str) -> None: ...

    def forecast_error(self, seconds: float) -> None: ...

    def history_dropped(self, count: int) -> None: ...

    def swap_wait(self, model: str, seconds: float) -> None:
        """A request waited this long because its model was being swapped (should stay 0)."""

    # -- the lifecycle --------------------------------------------------------------------------
    def promotion_finished(self, model: str, outcome: str) -> None:
        """committed | rejected | rolled_back | held."""

    def rolled_back(self, model: str, reason: str) -> None:
        """``reason``: errors | latency | drift | crash | operator."""

    # -- updates --------------------------------------------------------------------------------
    def update_started(self) -> None: ...

    def update_finished(self) -> None: ...

    def update_bytes(self, count: int) -> None: ...

    def update_applied(self, seconds: float) -> None: ...

    def update_rejected(self, reason: str) -> None: ...


class NoEvents:
    """Nobody listening: every event is dropped."""

    def request_finished(self, model: str, version: str, ok: bool, seconds: float) -> None:
        pass

    def served(self, model: str, quality: float) -> None:
        pass

    def confidences(
        self,
        model: str,
        variant: str,
        values: Sequence[float],
        margins: Sequence[float],
        entropies: Sequence[float],
    ) -> None:
        pass

    def escalated(self, model: str, escalated: bool, saved: float) -> None:
        pass

    def loaded(self, model: str, variant: str, seconds: float) -> None:
        pass

    def cold_load(self, model: str) -> None:
        pass

    def evicted(self, reason: str) -> None:
        pass

    def downgraded(self, reason: str) -> None:
        pass

    def upgraded(self, model: str) -> None:
        pass

    def preloaded(self, model: str, trigger: str) -> None:
        pass

    def preload_hit(self, model: str) -> None:
        pass

    def preload_wasted(self, model: str) -> None:
        pass

    def forecast_error(self, seconds: float) -> None:
        pass

    def history_dropped(self, count: int) -> None:
        pass

    def swap_wait(self, model: str, seconds: float) -> None:
        pass

    def promotion_finished(self, model: str, outcome: str) -> None:
        pass

    def rolled_back(self, model: str, reason: str) -> None:
        pass

    def update_started(self) -> None:
        pass

    def update_finished(self) -> None:
        pass

    def update_bytes(self, count: int) -> None:
        pass

    def update_applied(self, seconds: float) -> None:
        pass

    def update_rejected(self, reason: str) -> None:
        pass
