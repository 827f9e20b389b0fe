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
    metrics.request_finished("a", "1", True, 0.0005)  # on a bound: "le" buckets are inclusive
    metrics.request_finished("a", "1", True, 0.003)
    metrics.request_finished("a", "2", True, 20.0)  # beyond the last bound: only +Inf
    metrics.request_finished("a", "", False, 1.0)  # failures are counted, not timed
    metrics.request_finished("b", "1", False, 0.1)
    metrics.served("a", 0.5)
    metrics.served("b", 1.0)

    s = _samples(metrics)
    assert s[("edged_requests_total", (("code", "ok"), ("model", "a"), ("version", "1")))] == 2
    assert s[("edged_requests_total", (("code", "ok"), ("model", "a"), ("version", "2")))] == 1
    assert s[("edged_requests_total", (("code", "error"), ("model", "a"), ("version", "")))] == 1
    assert s[("edged_requests_total", (("code", "ok"), ("model", "b"), ("version", "1")))] == 0

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
