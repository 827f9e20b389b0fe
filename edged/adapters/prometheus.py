"""Prometheus: the core's events as counters, and a collector over the portfolio's view.

``Metrics`` implements edged.events.Events (the core calls it and never imports this module);
values that describe the state (resident bytes, the budget) are read from the service layer's
portfolio view at scrape time, so the request path does not maintain them. The registry is
passed in, never the global one.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterator, Sequence

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    start_http_server,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
    SummaryMetricFamily,
)
from prometheus_client.registry import Collector

from edged.errors import ConfigError
from edged.serving.lifecycle import LifecycleService
from edged.serving.quality import QualityService
from edged.serving.repository import RepositoryService

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10)
LOAD_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Buckets:
    """A histogram as plain numbers (Prometheus' inclusive "le" bounds, then +Inf): observed
    for every answer on the event loop, read at scrape time."""

    __slots__ = ("bounds", "counts", "le", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.le = (*(repr(float(b)) for b in bounds), "+Inf")  # as prometheus_client writes it
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        # bisect_left: the first bound >= value, as Prometheus' "le" buckets are inclusive.
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value

    def cumulative(self) -> list[tuple[str, float]]:
        out: list[tuple[str, float]] = []
        running = 0
        for bound, count in zip(self.le, list(self.counts), strict=True):
            running += count
            out.append((bound, running))
        return out


class RequestMetrics:
    """One model's request counts, as plain numbers: every request touches them, so they are
    not prometheus_client objects (a lock and several calls each) but fields that the scrape
    reads (``_RequestCollector``). Only the event loop writes them."""

    __slots__ = ("by_version", "latency")

    def __init__(self) -> None:
        # [ok, error] per version that answered ("" when the request failed before one did).
        self.by_version: dict[str, list[int]] = {}
        self.latency = Buckets(LATENCY_BUCKETS)

    def record(self, ok: bool, seconds: float, version: str = "") -> None:
        """A finished request; the latency histogram counts successful ones."""
        counts = self.by_version.get(version)
        if counts is None:
            counts = self.by_version[version] = [0, 0]
        if ok:
            counts[0] += 1
            self.latency.observe(seconds)
        else:
            counts[1] += 1


CONFIDENCE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)
MARGIN_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0)
ENTROPY_BUCKETS = (0.01, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0)
_MEASURES = (
    (
        "edged_confidence",
        "Top-1 confidence of answers (class scores: softmax; text: geometric mean token "
        "probability), by model and the variant that answered",
    ),
    (
        "edged_confidence_margin",
        "Top-1 minus top-2 probability of class-score answers, by model and variant",
    ),
    (
        "edged_confidence_entropy",
        "Entropy of class-score answers over that of the uniform distribution (0: certain, "
        "1: no idea), by model and variant",
    ),
)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry or CollectorRegistry()
        self._per_model: dict[str, RequestMetrics] = {}
        # The quality of the variant that served each request (a summary: sum and count).
        self.quality_sum = 0.0
        self.quality_count = 0
        r.register(_RequestCollector(self))
        self.loads = Counter(
            "edged_loads",
            "Variant loads by model and variant",
            ["model", "variant"],
            registry=r,
        )
        self.cold_loads = Counter(
            "edged_cold_loads", "Loads a request had to wait for, by model", ["model"], registry=r
        )
        self.load_seconds = Histogram(
            "edged_load_seconds",
            "Time to load and warm up a variant",
            buckets=LOAD_BUCKETS,
            registry=r,
        )
        self.evictions = Counter(
            "edged_evictions",
            "Variants unloaded, by reason (memory, pressure, api, shutdown)",
            ["reason"],
            registry=r,
        )
        self.downgrades = Counter(
            "edged_downgrades",
            "Variants replaced by a smaller one, by reason",
            ["reason"],
            registry=r,
        )
        self.upgrades = Counter(
            "edged_upgrades", "Downgraded models moved back to a better variant", registry=r
        )
        self.preloads = Counter(
            "edged_preloads",
            "Variants loaded ahead of demand, by model and trigger",
            ["model", "trigger"],
            registry=r,
        )
        self.preload_hits = Counter(
            "edged_preload_hits",
            "Preloaded variants used before they left memory",
            ["model"],
            registry=r,
        )
        self.preloads_wasted = Counter(
            "edged_preload_wasted",
            "Preloaded variants that left memory unused",
            ["model"],
            registry=r,
        )
        self.forecast_errors = Histogram(
            "edged_forecast_error_seconds",
            "|actual - predicted| time of a model's next request, when one was predicted",
            buckets=(0.1, 1, 5, 15, 60, 300, 900, 3600, 14400),
            registry=r,
        )
        self.history_drops = Counter(
            "edged_history_dropped",
            "Request records dropped because the writer fell behind",
            registry=r,
        )
        self.update_bytes_received = Counter(
            "edged_update_bytes_received",
            "Bytes of patches and files received by Updates.Push",
            registry=r,
        )
        self.patch_apply_seconds = Histogram(
            "edged_patch_apply_seconds",
            "Time to verify and apply one update's files into the store",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 180),
            registry=r,
        )
        self.patches_rejected = Counter(
            "edged_patches_rejected",
            "Pushed updates refused, by reason",
            ["reason"],
            registry=r,
        )
        # Confidence, margin and entropy of every answer: plain counts (as the request
        # counts), read by _QualityCollector at scrape time.
        self.measures: dict[tuple[str, str], tuple[Buckets, Buckets, Buckets]] = {}
        r.register(_QualityCollector(self))
        self.cascade_answers = Counter(
            "edged_cascade_answers",
            "Requests to a cascade, by who answered (first: its first stage; escalated)",
            ["model", "by"],
            registry=r,
        )
        self.cascade_spent = Counter(
            "edged_cascade_compute_spent",
            "Sum over a cascade's requests of the compute spent, in units of its last stage's "
            "(saved = 1 - spent / answers)",
            ["model"],
            registry=r,
        )
        self.swap_waits = Histogram(
            "edged_swap_wait_seconds",
            "Time a request waited because its model was being swapped (should stay 0)",
            buckets=(0.001, 0.01, 0.1, 0.5, 1, 5, 30),
            registry=r,
        )
        self.promotions = Counter(
            "edged_promotions",
            "Promotions of new versions, by outcome (committed, rejected, rolled_back, held)",
            ["outcome"],
            registry=r,
        )
        self.rollbacks = Counter(
            "edged_rollbacks",
            "Versions taken back, by reason (errors, latency, drift, crash, operator)",
            ["reason"],
            registry=r,
        )
        self.updates_in_flight = Gauge(
            "edged_updates_in_flight", "Updates being received or applied", registry=r
        )

    def for_model(self, model: str) -> RequestMetrics:
        """The request series of ``model`` (a known model: names from the network must be
        checked first, or the label set grows without bound)."""
        found = self._per_model.get(model)
        if found is None:
            found = self._per_model[model] = RequestMetrics()
        return found

    def served_quality(self, quality: float) -> None:
        self.quality_sum += quality
        self.quality_count += 1

    def watch(
        self,
        repository: RepositoryService,
        lifecycle: LifecycleService | None = None,
        quality: QualityService | None = None,
    ) -> None:
        """Expose the portfolio's state (the versions' figures, the labels' scores), read at
        each scrape."""
        self.registry.register(_PortfolioCollector(repository, lifecycle, quality))

    def serve(self, address: str) -> None:
        host, _, port = address.rpartition(":")
        try:
            start_http_server(int(port), addr=host.strip("[]"), registry=self.registry)
        except OSError as e:
            raise ConfigError(
                f"metrics.address: cannot listen on {address}: {e.strerror} (in use by another "
                "process, or not an address of this machine)"
            ) from None

    # -- edged.events.Events --------------------------------------------------------------------

    def request_finished(self, model: str, version: str, ok: bool, seconds: float) -> None:
        found = self._per_model.get(model)
        if found is None:
            found = self._per_model[model] = RequestMetrics()
        found.record(ok, seconds, version)

    def served(self, model: str, quality: float) -> None:
        self.quality_sum += quality
        self.quality_count += 1

    def confidences(
        self,
        model: str,
        variant: str,
        values: Sequence[float],
        margins: Sequence[float],
        entropies: Sequence[float],
    ) -> None:
        measures = self.measures.get((model, variant))
        if measures is None:
            measures = self.measures[(model, variant)] = (
                Buckets(CONFIDENCE_BUCKETS),
                Buckets(MARGIN_BUCKETS),
                Buckets(ENTROPY_BUCKETS),
            )
        confidence, margin, entropy = measures
        for value, m, e in zip(values, margins, entropies, strict=True):
            confidence.observe(value)
            if not math.isnan(m):  # class scores (generated text has no margin)
                margin.observe(m)
                entropy.observe(e)

    def escalated(self, model: str, escalated: bool, saved: float) -> None:
        self.cascade_answers.labels(model, "escalated" if escalated else "first").inc()
        self.cascade_spent.labels(model).inc(max(1.0 - saved, 0.0))

    def loaded(self, model: str, variant: str, seconds: float) -> None:
        self.loads.labels(model, variant).inc()
        self.load_seconds.observe(seconds)

    def cold_load(self, model: str) -> None:
        self.cold_loads.labels(model).inc()

    def evicted(self, reason: str) -> None:
        self.evictions.labels(reason).inc()

    def downgraded(self, reason: str) -> None:
        self.downgrades.labels(reason).inc()

    def upgraded(self, model: str) -> None:
        self.upgrades.inc()

    def preloaded(self, model: str, trigger: str) -> None:
        self.preloads.labels(model, trigger).inc()

    def preload_hit(self, model: str) -> None:
        self.preload_hits.labels(model).inc()

    def preload_wasted(self, model: str) -> None:
        self.preloads_wasted.labels(model).inc()

    def forecast_error(self, seconds: float) -> None:
        self.forecast_errors.observe(seconds)

    def history_dropped(self, count: int) -> None:
        self.history_drops.inc(count)

    def swap_wait(self, model: str, seconds: float) -> None:
        self.swap_waits.observe(seconds)

    def promotion_finished(self, model: str, outcome: str) -> None:
        self.promotions.labels(outcome).inc()

    def rolled_back(self, model: str, reason: str) -> None:
        self.rollbacks.labels(reason).inc()

    def update_started(self) -> None:
        self.updates_in_flight.inc()

    def update_finished(self) -> None:
        self.updates_in_flight.dec()

    def update_bytes(self, count: int) -> None:
        self.update_bytes_received.inc(count)

    def update_applied(self, seconds: float) -> None:
        self.patch_apply_seconds.observe(seconds)

    def update_rejected(self, reason: str) -> None:
        self.patches_rejected.labels(reason).inc()


class _RequestCollector(Collector):
    """The request counts, read at scrape time (on the metrics server's thread)."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        m = self._metrics
        requests = CounterMetricFamily(
            "edged_requests",
            "Inference requests by model, the version that answered, and outcome",
            labels=["model", "version", "code"],
        )
        seconds = HistogramMetricFamily(
            "edged_request_seconds", "Inference latency inside the daemon", labels=["model"]
        )
        for model, counts in sorted(list(m._per_model.items())):
            for version, (ok, error) in sorted(list(counts.by_version.items())):
                requests.add_metric([model, version, "ok"], ok)
                requests.add_metric([model, version, "error"], error)
            seconds.add_metric([model], counts.latency.cumulative(), counts.latency.total)
        yield requests
        yield seconds
        yield SummaryMetricFamily(
            "edged_served_quality",
            "Quality of the variant that served each request (sum / count = mean)",
            count_value=m.quality_count,
            sum_value=m.quality_sum,
        )


class _QualityCollector(Collector):
    """The answers' confidence measures, read at scrape time (on the metrics server's thread)."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        families = [
            HistogramMetricFamily(name, help, labels=["model", "variant"])
            for name, help in _MEASURES
        ]
        for (model, variant), measures in sorted(list(self._metrics.measures.items())):
            for family, buckets in zip(families, measures, strict=True):
                cumulative = buckets.cumulative()
                if cumulative[-1][1]:  # a measure this variant never had (text has no margin)
                    family.add_metric([model, variant], cumulative, buckets.total)
        yield from families


class _PortfolioCollector(Collector):
    """Values read at scrape time from the portfolio's view (on the metrics server's thread)."""

    def __init__(
        self,
        repository: RepositoryService,
        lifecycle: LifecycleService | None,
        quality: QualityService | None,
    ) -> None:
        self._repository = repository
        self._lifecycle = lifecycle
        self._quality = quality

    def collect(self) -> Iterator[GaugeMetricFamily]:
        view = self._repository.portfolio_view(refresh=False, versions=False)
        serving = GaugeMetricFamily(
            "edged_serving_version",
            "1 for the version that serves each model",
            labels=["model", "version"],
        )
        for model in view.models:
            serving.add_metric([model.name, model.active_version], 1)
        yield serving
        if self._lifecycle is not None:
            figures = GaugeMetricFamily(
                "edged_version_figure",
                "What the lifecycle measured of a version under evaluation or on probation "
                "(gate_p99_ms, budget_p99_ms, shadow_agreement, ...)",
                labels=["model", "version", "state", "figure"],
            )
            states = GaugeMetricFamily(
                "edged_version_state",
                "1 for each stored version, labelled with its lifecycle state",
                labels=["model", "version", "state"],
            )
            for model in view.models:
                for v in self._lifecycle.versions(model.name):
                    states.add_metric([model.name, v.version, v.state], 1)
                    if v.state in ("candidate", "probation") or v.serving:
                        for name, value in sorted(v.figures.items()):
                            figures.add_metric([model.name, v.version, v.state, name], value)
            yield figures
            yield states
        resident = GaugeMetricFamily(
            "edged_resident_bytes", "Bytes held by resident variants", labels=["model", "variant"]
        )
        for model in view.models:
            if model.resident is not None:
                variant, held = model.resident
                resident.add_metric([model.name, variant], held)
        yield resident
        b = view.budget
        budget = GaugeMetricFamily(
            "edged_budget_bytes",
            "Working memory budget for resident variants",
            labels=["limited_by"],
        )
        budget.add_metric([b.limited_by], b.bytes)
        yield budget
        accounted = GaugeMetricFamily("edged_accounted_bytes", "Bytes held by resident variants")
        accounted.add_metric([], b.accounted_bytes)
        yield accounted
        if b.psi_some_avg10 is not None:
            psi = GaugeMetricFamily("edged_memory_pressure", "Linux PSI memory some avg10 (%)")
            psi.add_metric([], b.psi_some_avg10)
            yield psi
        if self._quality is not None:
            yield from self._scores([m.name for m in view.models])

    def _scores(self, models: list[str]) -> Iterator[GaugeMetricFamily]:
        assert self._quality is not None
        labels = ["model", "version", "variant"]
        count = GaugeMetricFamily("edged_labels", "Labelled answers", labels=labels)
        accuracy = GaugeMetricFamily("edged_label_accuracy", "Accuracy on labels", labels=labels)
        ece = GaugeMetricFamily("edged_label_ece", "Expected calibration error", labels=labels)
        measured = GaugeMetricFamily(
            "edged_measured_quality",
            "The quality residency scores a variant with (prior moved by labels)",
            labels=labels,
        )
        for model in models:
            for row in self._quality.report(model).rows:
                if row.stratum != -1:
                    continue
                key = [model, row.version, row.variant]
                count.add_metric(key, row.labels)
                accuracy.add_metric(key, row.accuracy)
                ece.add_metric(key, row.ece)
                measured.add_metric(key, row.measured_quality)
        yield count
        yield accuracy
        yield ece
        yield measured
