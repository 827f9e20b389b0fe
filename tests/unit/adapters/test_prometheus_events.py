"""Request metrics kept as plain counts on the request path and exposed at scrape time."""

from __future__ import annotations

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from edged.adapters.prometheus import Metrics


def _samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(metrics.registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_requests_latency_and_quality_as_prometheus_sees_them() -> None:
    metrics = Metrics()
    a = metrics.for_model("a")
    a.record(True, 0.0005)  # exactly on a bound: "le" buckets are inclusive
    a.record(True, 0.003)
    a.record(True, 20.0)  # beyond the last bound: only +Inf
    a.record(False, 1.0)  # failures are counted, not timed
    metrics.for_model("b")
    metrics.served_quality(0.5)
    metrics.served_quality(1.0)

    s = _samples(metrics)
    assert s[("edged_requests_total", (("code", "ok"), ("model", "a")))] == 3
    assert s[("edged_requests_total", (("code", "error"), ("model", "a")))] == 1
    assert s[("edged_requests_total", (("code", "ok"), ("model", "b")))] == 0

    def bucket(le: str) -> float:
        return s[("edged_request_seconds_bucket", (("le", le), ("model", "a")))]

    assert bucket("0.0005") == 1
    assert bucket("0.001") == 1
    assert bucket("0.005") == 2
    assert bucket("10.0") == 2
    assert bucket("+Inf") == 3
    assert s[("edged_request_seconds_count", (("model", "a"),))] == 3
    assert s[("edged_request_seconds_sum", (("model", "a"),))] == 0.0005 + 0.003 + 20.0
    assert s[("edged_served_quality_count", ())] == 2
    assert s[("edged_served_quality_sum", ())] == 1.5
