"""Prometheus metrics on a registry that is passed in, never the global one."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from edged.portfolio.portfolio import Portfolio

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.requests = Counter(
            "edged_requests",
            "Inference requests by model and outcome",
            ["model", "code"],
            registry=self.registry,
        )
        self.request_seconds = Histogram(
            "edged_request_seconds",
            "Inference latency inside the daemon",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.loads = Counter(
            "edged_loads",
            "Variant loads by model and variant",
            ["model", "variant"],
            registry=self.registry,
        )

    def watch(self, portfolio: Portfolio) -> None:
        self.registry.register(_PortfolioCollector(portfolio))

    def serve(self, address: str) -> None:
        host, _, port = address.rpartition(":")
        start_http_server(int(port), addr=host.strip("[]"), registry=self.registry)


class _PortfolioCollector(Collector):
    """Values read at scrape time, so the request path does not maintain them."""

    def __init__(self, portfolio: Portfolio) -> None:
        self._portfolio = portfolio

    def collect(self) -> Iterator[GaugeMetricFamily]:
        resident = GaugeMetricFamily(
            "edged_resident_bytes", "Bytes held by resident variants", labels=["model", "variant"]
        )
        for slot in list(self._portfolio.slots.values()):
            handle = slot.handle
            if handle is not None:
                resident.add_metric([slot.name, handle.variant.id], handle.load_stats.memory_bytes)
        yield resident
        budget = GaugeMetricFamily("edged_budget_bytes", "Memory budget for resident variants")
        budget.add_metric([], self._portfolio.settings.budget_bytes)
        yield budget
