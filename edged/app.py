"""The daemon as one lifecycle object: start-up, the main loop, shutdown (uvicorn's Server).

This is the composition root: the only module that builds the core (store, portfolio, preloader,
update receiver), the service layer over it and the adapters around that, and wires the events the
core emits to the Prometheus adapter.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import logging
import signal
import socket
import time
from typing import Any

import uvloop
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from edged.adapters import systemd
from edged.adapters.grpc.server import GrpcServer
from edged.adapters.prometheus import Metrics
from edged.forecast.forecaster import Forecaster
from edged.forecast.history import RequestHistory
from edged.lifecycle.manager import Lifecycle
from edged.portfolio.fatal import FatalSignals
from edged.portfolio.journal import CrashJournal
from edged.portfolio.portfolio import Portfolio
from edged.portfolio.preloader import Preloader
from edged.quality.monitor import QualityMonitor
from edged.runtime import warm_runtimes
from edged.runtime.memory import freeze_startup_objects, limit_malloc_arenas
from edged.serving import Serving
from edged.serving.updates import UpdateService
from edged.settings import Settings
from edged.store.store import ModelStore
from edged.update.node.freshness import Freshness
from edged.update.node.receiver import UpdateReceiver
from edged.update.root import RootOfTrust
from edged.update.signing import TrustedKeys

log = logging.getLogger(__name__)
# APScheduler logs every run of every job at INFO: once a second here.
logging.getLogger("apscheduler").setLevel(logging.WARNING)


class Phase(enum.Enum):
    STARTING = "starting"
    SERVING = "serving"
    STOPPING = "stopping"


@dataclasses.dataclass
class _Fleet:
    agent: Any  # edged.adapters.fleet.FleetAgent, imported only when enabled
    task: asyncio.Task[None]

    async def stop(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
        await self.agent.close()


class Daemon:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.store = ModelStore(settings.store.path)
        self.metrics = Metrics()
        self.phase = Phase.STARTING
        self._stop = asyncio.Event()
        self._reload = asyncio.Event()

    # -- building ------------------------------------------------------------------------------

    def _build_portfolio(self) -> Portfolio:
        # Before the portfolio exists: the runtimes' process-wide set-up lands in the baseline
        # (warming after it was built left less memory given back on eviction).
        warm_runtimes({v.format for m in self.store.iter_manifests() for v in m.variants})
        return Portfolio(
            self.store,
            CrashJournal(self.store.state / "journal"),
            self.settings,
            events=self.metrics,
        )

    def _build_preloader(self, portfolio: Portfolio) -> Preloader:
        p = self.settings.preload
        history = RequestHistory(
            self.store.state / "history.sqlite3",
            retention_seconds=p.history_retention_days * 86400.0,
            max_rows=p.history_max_rows,
        )
        preloader = Preloader(
            portfolio,
            Forecaster(
                transition_window=p.transition_window_seconds,
                min_transition_probability=p.min_probability,
            ),
            history,
            p,
            events=self.metrics,
        )
        log.info("request history: %d requests replayed into the forecasters", preloader.restore())
        return preloader

    def _build_updates(self, lifecycle: Lifecycle) -> UpdateService:
        u = self.settings.updates
        fleet = self.settings.fleet
        freshness = Freshness(
            self.store.state / "freshness.json",
            fleet.device_id or socket.gethostname().lower(),
            fleet.groups,
        )
        root = RootOfTrust(self.store.state, u.root, time.time) if u.root is not None else None
        receiver = UpdateReceiver(
            self.store,
            TrustedKeys.load(u.trusted_keys) if root is None else TrustedKeys(),
            u.partial_retention_hours * 3600.0,
            freshness,
            root,
        )
        receiver.recover()
        if root is None and not receiver.trusted.keys:
            log.info("updates.trusted_keys is empty: pushed updates will be refused")
        return UpdateService(receiver, self.metrics, u.bandwidth, lifecycle.changed)

    # -- the lifecycle --------------------------------------------------------------------------

    async def run(self) -> None:
        extender = systemd.StartExtender()
        extender.start()
        try:
            await self._run(extender)
        finally:
            extender.stop()

    async def _run(self, extender: systemd.StartExtender) -> None:
        loop = asyncio.get_running_loop()
        self.store.recover()
        fatal = FatalSignals(self.store.state / "fatal.log")
        dump = fatal.previous()
        if dump:
            log.warning("the last run died of a fatal signal:\n%s", dump)
        fatal.arm()
        portfolio = self._build_portfolio()
        suspects = portfolio.recover_from_crash(fatal_signal=bool(dump))
        if suspects:
            log.warning("previous run ended abnormally; suspects: %s", ", ".join(suspects))
        quality = QualityMonitor(self.settings.quality, self.store.state / "quality", self.metrics)
        lifecycle = Lifecycle(portfolio, self.store, self.settings, self.metrics, quality=quality)
        lifecycle.recover(suspects)
        # Residency scores variants with what labels measured here (the manifest's as prior).
        portfolio.costs.quality_of = lambda model, v: quality.measured_quality(
            model, v.id, v.quality
        )
        portfolio.refresh()
        preloader = self._build_preloader(portfolio)
        serving = Serving.over(
            portfolio,
            self.metrics,
            self._build_updates(lifecycle),
            lifecycle=lifecycle,
            quality=quality,
        )
        self.metrics.watch(serving.repository, serving.lifecycle, serving.quality)
        # The metrics listener first: a port it cannot take is a config error, reported before
        # the gRPC servers exist (a started server left unstopped would spew at exit).
        if self.settings.metrics.address:
            self.metrics.serve(self.settings.metrics.address)
        server = GrpcServer(self.settings.server, serving)
        await server.start()
        await server.set_serving(False)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, self._reload.set)
        watchdog = asyncio.ensure_future(self._watchdog())
        scheduler = AsyncIOScheduler()
        fleet: _Fleet | None = None

        # Pressure is re-read about once a second, so the daemon sheds before the OOM killer acts;
        # forecasts are re-checked every preload.interval_seconds.
        async def save_quality() -> None:
            quality.flush()
            await asyncio.to_thread(quality.persist)

        for job, seconds, name in (
            (portfolio.tick, self.settings.memory.tick_seconds, "residency"),
            (preloader.run_once, self.settings.preload.interval_seconds, "preload"),
            (save_quality, 60.0, "quality"),
        ):
            scheduler.add_job(
                job, "interval", seconds=seconds, max_instances=1, coalesce=True, id=name
            )
        freeze_startup_objects()
        try:
            await portfolio.tick()
            scheduler.start()
            await portfolio.load_all()
            self.phase = Phase.SERVING
            serving.health.ready = True
            await server.set_serving(True)
            extender.stop()
            systemd.notify("READY=1", f"STATUS=serving {len(portfolio.slots)} models")
            log.info("edged ready: %d models", len(portfolio.slots))
            for name, version in lifecycle.start_requested():
                log.info("promoting %s version %s", name, version)
            fleet = self._start_fleet(serving)
            await self._main_loop(portfolio, lifecycle)
        finally:
            self.phase = Phase.STOPPING
            if fleet is not None:
                await fleet.stop()
            systemd.notify("STOPPING=1")
            drain = self.settings.server.drain_seconds
            log.info("stopping: draining requests for up to %.0fs", drain)
            serving.health.ready = False
            await server.set_serving(False)
            await server.stop(drain)
            if scheduler.running:
                scheduler.shutdown(wait=False)
            watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watchdog
            await lifecycle.close()
            quality.save()
            await portfolio.close()
            serving.close()
            preloader.close()
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            log.info("stopped")

    def _start_fleet(self, serving: Serving) -> _Fleet | None:
        if not self.settings.fleet.enabled:
            return None
        assert serving.updates is not None and serving.lifecycle is not None
        # Imported here: httpx and aiomqtt (~9 MB) stay out of a daemon with no fleet.
        from edged.adapters.fleet import FleetAgent

        agent = FleetAgent(
            self.settings.fleet, serving.updates, serving.lifecycle, serving.repository
        )
        return _Fleet(agent, asyncio.ensure_future(agent.run()))

    async def _main_loop(self, portfolio: Portfolio, lifecycle: Lifecycle) -> None:
        """Wait for a stop; on SIGHUP re-read the store and start the promotions it asks for."""
        while not self._stop.is_set():
            reload = asyncio.ensure_future(self._reload.wait())
            stop = asyncio.ensure_future(self._stop.wait())
            await asyncio.wait({reload, stop}, return_when=asyncio.FIRST_COMPLETED)
            reload.cancel()
            stop.cancel()
            if self._reload.is_set():
                self._reload.clear()
                systemd.reloading()
                portfolio.refresh()
                for name, version in lifecycle.start_requested():
                    log.info("promoting %s version %s", name, version)
                systemd.notify("READY=1", "STATUS=store re-read")

    async def _watchdog(self) -> None:
        interval = systemd.watchdog_interval()
        if interval is None:
            return
        # The ping comes from the event loop itself: a wedged loop stops pinging.
        while True:
            systemd.notify("WATCHDOG=1")
            await asyncio.sleep(interval)


def serve(settings: Settings) -> None:
    limit_malloc_arenas()
    # uvloop: the same asyncio API with a libuv loop written in Cython. The request path is
    # mostly event-loop work (gRPC's callbacks, futures, the hop to a worker); measured on the
    # tiny model it takes ~15% of the loop thread's CPU per request (docs/performance.md).
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(Daemon(settings).run())
