"""The version lifecycle of every model: which promotions run, what a restart finds, what an
operator asks for (activate, roll back) and what they see (versions, lineage).

One promotion per model at a time; a version requested while another is evaluated waits its
turn (the newest request wins). At start, ``recover`` makes the stored records agree with what a
crash may have interrupted (docs/lifecycle.md: a committed version always serves after a restart,
and an interrupted evaluation starts again from the beginning).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from edged.errors import EdgedError, ErrorCode, NotFoundError
from edged.events import Events
from edged.lifecycle import lineage as lineage_mod
from edged.lifecycle.promotion import Context, Promotion
from edged.names import version_key
from edged.portfolio.portfolio import NoRoomError, Portfolio
from edged.portfolio.verdicts import variant_key
from edged.quality.monitor import QualityMonitor
from edged.settings import Settings
from edged.store.lineage import Lineage
from edged.store.store import ModelStore
from edged.store.versions import Phase, VersionRecord, VersionState

log = logging.getLogger(__name__)


def _background_priority() -> None:
    with contextlib.suppress(OSError, AttributeError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)


@dataclasses.dataclass(frozen=True)
class VersionInfo:
    version: str
    record: VersionRecord
    serving: bool
    lineage: Lineage


@dataclasses.dataclass(frozen=True)
class RollbackResult:
    version: str  # what serves now
    reason: str


class Lifecycle:
    def __init__(
        self,
        portfolio: Portfolio,
        store: ModelStore,
        settings: Settings,
        events: Events,
        clock: Callable[[], float] = time.monotonic,
        quality: QualityMonitor | None = None,
    ) -> None:
        self.portfolio = portfolio
        self.store = store
        self.settings = settings
        self.events = events
        self.pool = ThreadPoolExecutor(1, "edged-lifecycle", initializer=_background_priority)
        self.context = Context(portfolio, store, settings, events, self.pool, clock, quality)
        self._running: dict[str, asyncio.Task[VersionRecord]] = {}
        self._next: dict[str, str] = {}

    # -- start-up --------------------------------------------------------------------------------

    def recover(self, suspects: list[str]) -> None:
        """Make the records agree with a restart: the committed version (ACTIVE) serves; a
        version that was on probation goes back to candidate (its evaluation starts again), or
        to rolled back when the daemon died while it ran (the crash journal blames it); an
        evaluation that was under way starts again."""
        blamed = set(suspects)
        for name in self.store.models():
            active = self.store.active(name)
            for version in self.store.versions(name):
                record = self.store.record(name, version)
                if record.state is VersionState.PROBATION:
                    if version == active:  # the pointer moved: the commit happened
                        fixed = record.moved(VersionState.COMMITTED, "committed")
                    elif self._blamed(name, version, blamed):
                        fixed = record.moved(
                            VersionState.ROLLED_BACK,
                            "rolled back: the daemon died while this version served "
                            "(crash journal)",
                        )
                        self.events.rolled_back(name, "crash")
                    else:
                        fixed = record.moved(
                            VersionState.CANDIDATE,
                            "restarted: the daemon stopped during probation",
                            requested=True,
                        )
                elif record.state is VersionState.CANDIDATE:
                    fixed = record.moved(
                        VersionState.CANDIDATE,
                        f"restarted: the daemon stopped while {record.phase or 'evaluating'}",
                        requested=True,
                    )
                else:
                    continue
                self.store.put_record(name, version, fixed)

    def _blamed(self, name: str, version: str, blamed: set[str]) -> bool:
        try:
            manifest = self.store.manifest(name, version)
        except EdgedError:
            return False
        return any(variant_key(v) in blamed for v in manifest.variants)

    def start_requested(self) -> list[tuple[str, str]]:
        """Start the promotions the store asks for (staged with a request, or interrupted);
        per model the newest. Returns what was started."""
        started = []
        for name in self.store.models():
            if name not in self.portfolio.slots:
                continue
            wanted = [
                v
                for v in self.store.versions(name)
                if (r := self.store.record(name, v)).requested
                and r.state in (VersionState.STAGED, VersionState.CANDIDATE)
            ]
            if wanted:
                version = max(wanted, key=version_key)
                self._start(name, version)
                started.append((name, version))
        return started

    # -- promotions ------------------------------------------------------------------------------

    def _start(self, name: str, version: str) -> None:
        if name in self._running:
            self._next[name] = version
            return
        record = self.store.record(name, version)
        if record.state is not VersionState.CANDIDATE:
            self.store.put_record(
                name,
                version,
                record.moved(VersionState.CANDIDATE, "promotion started", phase=Phase.VALIDATING),
            )
        task = asyncio.ensure_future(self._promote(name, version))
        self._running[name] = task

    async def _promote(self, name: str, version: str) -> VersionRecord:
        try:
            return await Promotion(self.context, name, version).run()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("promotion of %s version %s failed", name, version)
            await self._restore(name)
            record = self.store.record(name, version).moved(
                VersionState.REJECTED, f"promotion failed: {exc}"
            )
            self.store.put_record(name, version, record)
            self.events.promotion_finished(name, "rejected")
            return record
        finally:
            self._running.pop(name, None)
            following = self._next.pop(name, None)
            if following is not None:
                self._start(name, following)

    async def _restore(self, name: str) -> None:
        """After a promotion broke off: no candidate left loaded, and the committed version
        serves again if the new one had been flipped to."""
        slot = self.portfolio.slot(name)
        slot.observer = None
        with contextlib.suppress(EdgedError):
            await self.portfolio.release(name, "candidate")
        committed = self.store.active(name)
        if committed is None or slot.version == committed:
            return
        if await self.portfolio.flip_back(name, "the promotion broke off"):
            return
        manifest = self.store.manifest(name, committed)
        try:
            await self.portfolio.load_beside(name, manifest)
            await self.portfolio.flip(name, "the promotion broke off", False)
        except NoRoomError:
            await self.portfolio.swap_in_place(name, manifest, "the promotion broke off")

    def running(self, name: str) -> asyncio.Task[VersionRecord] | None:
        return self._running.get(name)

    async def cancel(self, name: str, reason: str) -> list[str]:
        """Abandon the evaluation under way and the requested ones (a fleet rollout aborted):
        the committed version serves, each abandoned version is staged again, not requested.
        Returns the versions abandoned."""
        self.portfolio.slot(name)
        self._next.pop(name, None)
        task = self._running.get(name)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
            await self._restore(name)
        abandoned = []
        for version in self.store.versions(name):
            record = self.store.record(name, version)
            if record.state in (VersionState.CANDIDATE, VersionState.PROBATION) or (
                record.state is VersionState.STAGED and record.requested
            ):
                self.store.put_record(
                    name, version, record.moved(VersionState.STAGED, reason, requested=False)
                )
                abandoned.append(version)
        return abandoned

    def activate(self, name: str, version: str) -> VersionInfo:
        """Start the promotion of ``version`` (staged, or rejected / rolled back to try again)."""
        self.portfolio.slot(name)
        if version not in self.store.versions(name):
            raise NotFoundError(f"model {name!r} has no version {version!r} in the store")
        if version == self.portfolio.slot(name).version:
            raise EdgedError(
                f"model {name!r} version {version!r} already serves", ErrorCode.ALREADY_EXISTS
            )
        record = self.store.record(name, version).moved(
            VersionState.STAGED, "promotion requested", requested=True
        )
        self.store.put_record(name, version, record)
        self._start(name, version)
        return self.info(name, version)

    def changed(self, name: str) -> None:
        """A version of ``name`` was added with a promotion requested (a push, an import)."""
        self.portfolio.refresh()
        if name in self.portfolio.slots:
            self.start_requested()

    def promote_newest(self, name: str) -> bool:
        """RepositoryModelLoad's meaning for a model with a newer staged version: promote it."""
        slot = self.portfolio.slot(name)
        newer = [
            v
            for v in self.store.versions(name)
            if version_key(v) > version_key(slot.version)
            and self.store.record(name, v).state is VersionState.STAGED
        ]
        if not newer:
            return False
        self.activate(name, max(newer, key=version_key))
        return True

    # -- rollback --------------------------------------------------------------------------------

    async def rollback(
        self, name: str, to: str | None = None, undo: str | None = None
    ) -> RollbackResult:
        """Serve ``to`` (or the version ``undo`` picks) instead of the serving version: loaded
        beside it and flipped to (in place when both cannot fit); it becomes the committed one."""
        slot = self.portfolio.slot(name)
        current = slot.version
        if (to is None) == (undo is None):
            raise EdgedError(
                "rollback: give a version or a lineage part to undo", ErrorCode.INVALID_ARGUMENT
            )
        reason = "operator rollback"
        if undo is not None:
            choice = lineage_mod.undo(self.lineages(name), current, undo)
            if isinstance(choice, lineage_mod.UndoMissing):
                raise EdgedError(choice.reason, ErrorCode.FAILED_PRECONDITION)
            to, reason = choice.version, f"operator rollback (undo {undo}): {choice.reason}"
        assert to is not None
        if to not in self.store.versions(name):
            raise NotFoundError(f"model {name!r} has no version {to!r} in the store")
        if to == current:
            raise EdgedError(
                f"model {name!r} version {to!r} already serves", ErrorCode.ALREADY_EXISTS
            )
        task = self._running.get(name)
        if task is not None:  # an evaluation under way is abandoned
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
            await self.portfolio.release(name, "candidate")
        manifest = self.store.manifest(name, to)
        await self.portfolio.costs.usable(manifest)
        try:
            await self.portfolio.load_beside(name, manifest)
            await self.portfolio.flip(name, f"rolled back to version {to}", False)
        except NoRoomError:
            await self.portfolio.swap_in_place(name, manifest, f"rolled back to version {to}")
        await self.portfolio.release(name, "previous")
        self.store.set_active(name, to)
        self.store.put_record(
            name, to, self.store.record(name, to).moved(VersionState.COMMITTED, reason)
        )
        self.store.put_record(
            name,
            current,
            self.store.record(name, current).moved(
                VersionState.ROLLED_BACK, f"{reason}: replaced by version {to}"
            ),
        )
        self.events.rolled_back(name, "operator")
        return RollbackResult(to, reason)

    # -- views -----------------------------------------------------------------------------------

    def lineages(self, name: str) -> dict[str, Lineage]:
        return {v: self.store.manifest(name, v).lineage for v in self.store.versions(name)}

    def info(self, name: str, version: str) -> VersionInfo:
        slot = self.portfolio.slots.get(name)
        return VersionInfo(
            version,
            self.store.record(name, version),
            slot is not None and slot.version == version,
            self.store.manifest(name, version).lineage,
        )

    def versions(self, name: str) -> list[VersionInfo]:
        self.portfolio.slot(name)
        return [self.info(name, v) for v in self.store.versions(name)]

    def graph(self, name: str) -> list[lineage_mod.Node]:
        self.portfolio.slot(name)
        return lineage_mod.graph(self.lineages(name))

    async def close(self) -> None:
        """Stop the promotions under way (their records say where they were: they start again
        at the next start) and the lifecycle's thread."""
        for task in list(self._running.values()):
            task.cancel()
        for task in list(self._running.values()):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self.pool.shutdown(wait=True)


__all__ = ["Lifecycle", "Phase", "RollbackResult", "VersionInfo"]
