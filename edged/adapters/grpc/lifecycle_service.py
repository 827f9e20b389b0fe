"""edged.v1.Lifecycle: versions and their states, activate, roll back, lineage."""

from __future__ import annotations

from typing import Any

import grpc

from edged.adapters.grpc.access import Access
from edged.adapters.grpc.status import mapped_errors
from edged.api import lifecycle_pb2 as pb
from edged.api import lifecycle_pb2_grpc as pb_grpc
from edged.serving import LifecycleService
from edged.serving.views import LineageView, VersionStateView

Context = grpc.aio.ServicerContext[Any, Any]


def _lineage(view: LineageView) -> pb.LineageInfo:
    return pb.LineageInfo(
        parent=view.parent,
        teacher=view.teacher,
        dataset=view.dataset,
        compression=view.compression,
        finetune_dataset=view.finetune_dataset,
    )


def _version(view: VersionStateView) -> pb.VersionInfo:
    return pb.VersionInfo(
        version=view.version,
        state=view.state,
        phase=view.phase,
        reason=view.reason,
        serving=view.serving,
        since=view.since,
        requested=view.requested,
        figures=view.figures,
        lineage=_lineage(view.lineage),
    )


class LifecycleServicer(pb_grpc.LifecycleServicer):
    def __init__(self, lifecycle: LifecycleService, access: Access) -> None:
        self.lifecycle = lifecycle
        self.access = access

    @mapped_errors
    async def Versions(self, request: pb.VersionsRequest, context: Context) -> Any:
        return pb.VersionsResponse(
            versions=[_version(v) for v in self.lifecycle.versions(request.model)]
        )

    @mapped_errors
    async def Activate(self, request: pb.ActivateRequest, context: Context) -> Any:
        self.access.require(context, "operate", "Activate")
        view = self.lifecycle.activate(request.model, request.version)
        return pb.ActivateResponse(version=_version(view))

    @mapped_errors
    async def Rollback(self, request: pb.RollbackRequest, context: Context) -> Any:
        self.access.require(context, "operate", "Rollback")
        result = await self.lifecycle.rollback(request.model, request.to, request.undo)
        return pb.RollbackResponse(version=result.version, reason=result.reason)

    @mapped_errors
    async def Lineage(self, request: pb.LineageRequest, context: Context) -> Any:
        nodes = self.lifecycle.lineage(request.model)
        return pb.LineageResponse(
            nodes=[
                pb.LineageNode(
                    version=n.version,
                    parent=n.parent,
                    state=n.state,
                    serving=n.serving,
                    changes=list(n.changes),
                    lineage=_lineage(n.lineage),
                )
                for n in nodes
            ]
        )
