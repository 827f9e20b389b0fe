"""Version lifecycle operations and views: what each version is, promote one, roll back."""

from __future__ import annotations

from edged.lifecycle.manager import Lifecycle, VersionInfo
from edged.serving.views import LineageNodeView, LineageView, RolledBack, VersionStateView
from edged.store.lineage import Lineage


def _lineage(lineage: Lineage) -> LineageView:
    return LineageView(
        lineage.parent or "",
        str(lineage.teacher) if lineage.teacher else "",
        lineage.dataset or "",
        str(lineage.compression) if lineage.compression else "",
        lineage.finetune_dataset or "",
    )


def _view(info: VersionInfo) -> VersionStateView:
    r = info.record
    return VersionStateView(
        info.version,
        str(r.state),
        str(r.phase),
        r.reason,
        info.serving,
        r.since,
        r.requested,
        dict(r.figures),
        _lineage(info.lineage),
    )


class LifecycleService:
    def __init__(self, lifecycle: Lifecycle) -> None:
        self.lifecycle = lifecycle

    def versions(self, model: str) -> list[VersionStateView]:
        return [_view(info) for info in self.lifecycle.versions(model)]

    def activate(self, model: str, version: str) -> VersionStateView:
        return _view(self.lifecycle.activate(model, version))

    async def rollback(self, model: str, to: str = "", undo: str = "") -> RolledBack:
        result = await self.lifecycle.rollback(model, to or None, undo or None)
        return RolledBack(result.version, result.reason)

    async def cancel(self, model: str, reason: str) -> list[str]:
        return await self.lifecycle.cancel(model, reason)

    def lineage(self, model: str) -> list[LineageNodeView]:
        states = {info.version: info for info in self.lifecycle.versions(model)}
        return [
            LineageNodeView(
                node.version,
                node.parent or "",
                str(states[node.version].record.state),
                states[node.version].serving,
                node.changes,
                _lineage(node.lineage),
            )
            for node in self.lifecycle.graph(model)
        ]
