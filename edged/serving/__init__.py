"""The service layer: the only thing adapters call (gRPC servicers, the Prometheus collector,
the CLI's local commands). It speaks in domain types and snapshots (views.py), never protobuf,
and never hands out a live object of the core."""

from __future__ import annotations

import dataclasses

from edged.events import Events
from edged.lifecycle.manager import Lifecycle
from edged.portfolio.portfolio import Portfolio
from edged.quality.monitor import QualityMonitor
from edged.serving.inference import InferenceService, Stream
from edged.serving.lifecycle import LifecycleService
from edged.serving.operations import OperationsService
from edged.serving.quality import QualityService
from edged.serving.repository import Health, RepositoryService
from edged.serving.updates import Chunk, Header, UpdateService

__all__ = [
    "Chunk",
    "Header",
    "Health",
    "InferenceService",
    "LifecycleService",
    "OperationsService",
    "QualityService",
    "RepositoryService",
    "Serving",
    "Stream",
    "UpdateService",
]


@dataclasses.dataclass
class Serving:
    inference: InferenceService
    repository: RepositoryService
    operations: OperationsService
    updates: UpdateService | None
    health: Health
    lifecycle: LifecycleService | None = None
    quality: QualityService | None = None

    @classmethod
    def over(
        cls,
        portfolio: Portfolio,
        events: Events,
        updates: UpdateService | None = None,
        workers: int | None = None,
        lifecycle: Lifecycle | None = None,
        quality: QualityMonitor | None = None,
    ) -> Serving:
        health = Health()
        monitor = quality or QualityMonitor(portfolio.settings.quality, None, events)
        return cls(
            InferenceService(
                portfolio, events, workers or portfolio.settings.server.workers, monitor
            ),
            RepositoryService(portfolio, health, monitor),
            OperationsService(portfolio, lifecycle),
            updates,
            health,
            LifecycleService(lifecycle) if lifecycle is not None else None,
            QualityService(portfolio, monitor),
        )

    def close(self) -> None:
        self.inference.close()
