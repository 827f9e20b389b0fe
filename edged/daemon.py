"""Wiring and lifecycle: start-up, the main loop, signals, graceful drain."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

import uvloop
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from edged import systemd
from edged.config import Config
from edged.forecast.forecaster import Forecaster
from edged.forecast.history import RequestHistory
from edged.grpc.server import GrpcServer
from edged.grpc.updates_service import UpdatesServicer
from edged.metrics import Metrics
from edged.portfolio.journal import CrashJournal
from edged.portfolio.portfolio import Portfolio, PortfolioSettings
from edged.portfolio.preloader import Preloader, PreloadSettings
from edged.portfolio.residency import BudgetSettings, ScoringWeights
from edged.runtime import warm_runtimes
from edged.runtime.memory import limit_malloc_arenas
from edged.store.store import ModelStore
from edged.update.receiver import UpdateReceiver
from edged.update.signing import TrustedKeys

log = logging.getLogger(__name__)
# APScheduler logs every run of every job at INFO: once a second here.
logging.getLogger("apscheduler").setLevel(logging.WARNING)


class Daemon:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.store = ModelStore(config.store.path)
        self.metrics = Metrics()
        self.ready = [False]
        self._stop = asyncio.Event()
        self._reload = asyncio.Event()

    def _build_portfolio(self) -> Portfolio:
        c = self.config
        settings = PortfolioSettings(
            budget=BudgetSettings(
                configured=c.memory.budget.resolve(),
                reserve=c.memory.reserve,
                available_floor=c.memory.available_floor,
                psi_threshold=c.memory.psi_threshold,
            ),
            weights=ScoringWeights(
                horizon_seconds=c.residency.horizon_seconds,
                latency_weight=c.residency.latency_weight,
                quality_weight=c.residency.quality_weight,
                half_life_seconds=c.residency.half_life_seconds,
            ),
            probe_timeout=c.validation.timeout_seconds,
            quarantine_after=c.validation.quarantine_after,
            drain_seconds=c.server.drain_seconds,
            infer_workers=c.server.workers,
            load_timeout=c.memory.load_timeout_seconds,
            pinned=c.pinned(),
        )
        warm_runtimes()
        return Portfolio(
            self.store, CrashJournal(self.store.state / "journal"), settings, metrics=self.metrics
        )

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        self.store.recover()
        portfolio = self._build_portfolio()
        suspects = portfolio.recover_from_crash()
        if suspects:
            log.warning("previous run ended abnormally; suspects: %s", ", ".join(suspects))
        portfolio.refresh()
        self.metrics.watch(portfolio)
        preloader = self._build_preloader(portfolio)
        server = GrpcServer(
            self.config.server, portfolio, self.metrics, self.ready, self._updates(portfolio)
        )
        await server.start()
        await server.set_serving(False)
        if self.config.metrics.address:
            self.metrics.serve(self.config.metrics.address)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, self._reload.set)
        watchdog = asyncio.ensure_future(self._watchdog())
        scheduler = AsyncIOScheduler()
        # Pressure is re-read about once a second, so the daemon sheds before the OOM killer acts;
        # forecasts are re-checked every preload.interval_seconds.
        for job, seconds, name in (
            (portfolio.tick, self.config.memory.tick_seconds, "residency"),
            (preloader.run_once, self.config.preload.interval_seconds, "preload"),
        ):
            scheduler.add_job(
                job, "interval", seconds=seconds, max_instances=1, coalesce=True, id=name
            )
        try:
            await portfolio.tick()
            scheduler.start()
            await portfolio.load_all()
            self.ready[0] = True
            await server.set_serving(True)
            systemd.notify("READY=1", f"STATUS=serving {len(portfolio.slots)} models")
            log.info("edged ready: %d models", len(portfolio.slots))
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
                    systemd.notify("READY=1", "STATUS=store re-read")
        finally:
            systemd.notify("STOPPING=1")
            log.info(
                "stopping: draining requests for up to %.0fs", self.config.server.drain_seconds
            )
            self.ready[0] = False
            await server.set_serving(False)
            await server.stop(self.config.server.drain_seconds)
            if scheduler.running:
                scheduler.shutdown(wait=False)
            watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watchdog
            await portfolio.close()
            preloader.close()
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            log.info("stopped")

    def _updates(self, portfolio: Portfolio) -> UpdatesServicer:
        u = self.config.updates
        receiver = UpdateReceiver(
            self.store, TrustedKeys.load(u.trusted_keys), u.partial_retention_hours * 3600.0
        )
        receiver.recover()
        if not receiver.trusted.keys:
            log.info("updates.trusted_keys is empty: pushed updates will be refused")
        return UpdatesServicer(receiver, self.metrics, u.bandwidth, portfolio.version_changed)

    def _build_preloader(self, portfolio: Portfolio) -> Preloader:
        p = self.config.preload
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
            PreloadSettings(
                enabled=p.enabled,
                interval=p.interval_seconds,
                lead=p.lead_seconds,
                min_probability=p.min_probability,
                horizon=self.config.residency.horizon_seconds,
            ),
            metrics=self.metrics,
        )
        log.info("request history: %d requests replayed into the forecasters", preloader.restore())
        return preloader

    async def _watchdog(self) -> None:
        interval = systemd.watchdog_interval()
        if interval is None:
            return
        # The ping comes from the event loop itself: a wedged loop stops pinging.
        while True:
            systemd.notify("WATCHDOG=1")
            await asyncio.sleep(interval)


def serve(config: Config) -> None:
    limit_malloc_arenas()
    # uvloop: the same asyncio API with a libuv loop written in Cython. The request path is
    # mostly event-loop work (gRPC's callbacks, futures, the hop to a worker); measured on the
    # tiny model it takes ~15% of the loop thread's CPU per request (docs/performance.md).
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(Daemon(config).run())
