"""Probation: the window after the flip in which a new version is watched and taken back at the
first sign of a regression (docs/lifecycle.md).

Watched: runtime errors (each one answered by the previous version kept warm, so no request
fails), live latency against the previous version's, the drift of the top-1 confidence of its
answers against the previous version's on the same recent traffic (PSI, with the
Kolmogorov-Smirnov statistic beside it), and delayed labels when enough come in for both.
Crashes are the crash journal's: a daemon that died while the new version served comes back
serving the committed one.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence

from edged.lifecycle.statistics import (
    Outcome,
    ks_critical,
    ks_statistic,
    less_accurate,
    percentiles,
    psi,
)
from edged.portfolio.slot import Handle
from edged.quality.compare import confidence
from edged.quality.labels import Score
from edged.settings import LifecycleSettings
from edged.store.lineage import OutputKind
from edged.tensors import Array

MIN_ERROR_REQUESTS = 20  # requests before an error *rate* is judged (3 errors fail at once)
MAX_ERRORS = 3
MIN_LATENCY_SAMPLES = 100
MIN_DRIFT_SAMPLES = 100
DRIFT_ALPHA = 0.001
CONFIDENCE_EVERY = 1  # one answer in this many has its confidence noted


@dataclasses.dataclass(frozen=True)
class Verdict:
    outcome: Outcome
    reason: str = ""
    kind: str = ""  # errors | latency | drift (the rollbacks metric's label)
    figures: dict[str, float] = dataclasses.field(default_factory=dict)


class Probation:
    """An Observer of the new version's live requests."""

    def __init__(
        self,
        handle: Handle,
        kinds: Mapping[str, OutputKind],
        baseline: Sequence[float],
        gate_ms: tuple[float, float, float] | None,
        live_baseline_ms: Sequence[float],
        settings: LifecycleSettings,
        clock: Callable[[], float] = time.monotonic,
        labels: Callable[[], tuple[Score, Score]] | None = None,
    ) -> None:
        self.handle = handle
        self.kinds = dict(kinds)
        self.baseline = list(baseline)
        self.gate_ms = gate_ms
        # The previous version's live latency on the same traffic just before the flip (the
        # shadow phase's); without it, the gate's run times.
        self.live_baseline = percentiles(live_baseline_ms) if len(live_baseline_ms) >= 50 else None
        self._began = time.perf_counter()
        self._next_drift_look = MIN_DRIFT_SAMPLES
        # (this version's labelled answers, the previous version's): delayed labels that came
        # in meanwhile.
        self.labels = labels
        self.settings = settings
        self.clock = clock
        self.started = clock()
        self.served_count = 0
        self.errors = 0
        self.first_error = ""
        self.latencies_ms: list[float] = []
        self.confidences: list[float] = []
        self._loop = asyncio.get_running_loop()

    # -- Observer (the request path) -------------------------------------------------------------

    def served(
        self, handle: Handle, inputs: Mapping[str, Array], outputs: dict[str, Array], ns: int
    ) -> None:
        if handle is not self.handle:
            return  # answered by the previous version (a fallback)
        if ns > (time.perf_counter() - self._began) * 1e9:
            return  # arrived before the flip (held by a swap, or leased before): not its doing
        self.served_count += 1
        self.latencies_ms.append(ns / 1e6)
        if self.served_count % CONFIDENCE_EVERY == 0 and self.baseline:
            # After the response is on its way, not before.
            self._loop.call_soon(self._note_confidence, outputs)

    def failed(self, handle: Handle, error: BaseException) -> None:
        if handle is not self.handle:
            return
        self.served_count += 1
        self.errors += 1
        self.first_error = self.first_error or str(error)[:300]

    def _note_confidence(self, outputs: dict[str, Array]) -> None:
        self.confidences.extend(confidence(self.kinds, outputs))

    # -- the verdict -----------------------------------------------------------------------------

    def _labels(self) -> Verdict | None:
        """Labels, when enough have come for both versions: a one-sided two-proportion z-test
        of this version's accuracy against the previous one's (z > 2.33, p < 0.01)."""
        if self.labels is None:
            return None
        new, old = self.labels()
        if not less_accurate(new.correct, new.labels, old.correct, old.labels):
            return None
        return Verdict(
            Outcome.FAIL,
            f"labels: accuracy {new.accuracy:.1%} on {new.labels} labelled answers against "
            f"{old.accuracy:.1%} on {old.labels} for the previous version",
            "labels",
            {"probation_label_accuracy": new.accuracy, "previous_label_accuracy": old.accuracy},
        )

    def _latency_reference(
        self,
    ) -> tuple[tuple[float, float, float] | None, str, tuple[float, float]]:
        """What live latency is compared to, and the slack (p50, p99) on top of the factor.
        Against the previous version's live requests: a little (the same path around the
        run); against the gate's bare run times: more (the protocol and the event loop)."""
        if self.live_baseline is not None:
            return self.live_baseline, "the previous version's live requests", (1.0, 10.0)
        return self.gate_ms, "the gate's run times", (5.0, 25.0)

    def verdict(self) -> Verdict:
        s = self.settings
        n = self.served_count
        if self.errors >= MAX_ERRORS or (
            n >= MIN_ERROR_REQUESTS and self.errors / n > s.probation_max_error_rate
        ):
            return Verdict(
                Outcome.FAIL,
                f"runtime errors on {self.errors} of {n} requests in probation "
                f"(first: {self.first_error}); each was answered by the previous version",
                "errors",
                {"probation_errors": float(self.errors), "probation_requests": float(n)},
            )
        reference, against, slacks = self._latency_reference()
        if reference is not None and len(self.latencies_ms) >= MIN_LATENCY_SAMPLES:
            p50, _, p99 = percentiles(self.latencies_ms[-1000:])
            factor = s.probation_latency_factor
            for label, live, before, slack in (
                ("p50", p50, reference[0], slacks[0]),
                ("p99", p99, reference[2], slacks[1]),
            ):
                if live > before * factor + slack:
                    return Verdict(
                        Outcome.FAIL,
                        f"live {label} {live:.2f} ms over {factor:g} x {against}'s "
                        f"{before:.2f} ms (+{slack:g} ms)",
                        "latency",
                        {f"probation_{label}_ms": live},
                    )
        if (
            len(self.confidences) >= self._next_drift_look
            and len(self.baseline) >= MIN_DRIFT_SAMPLES // 2
        ):
            # Looked at when the sample doubles (100, 200, 400, ...), not at every poll: a
            # handful of looks at alpha 0.001 each keeps false alarms under ~0.5% per
            # probation, where peeking every 0.1 s would not.
            self._next_drift_look *= 2
            shift = psi(self.baseline, self.confidences)
            ks = ks_statistic(self.baseline, self.confidences)
            # Both: PSI says how far, KS that it is more than the samples' own noise.
            critical = ks_critical(len(self.baseline), len(self.confidences), DRIFT_ALPHA)
            if shift > s.probation_max_psi and ks > critical:
                return Verdict(
                    Outcome.FAIL,
                    f"output drift: PSI {shift:.3f} of the top-1 confidence over "
                    f"{len(self.confidences)} answers against the previous version's "
                    f"(limit {s.probation_max_psi:g}; KS {ks:.3f}, critical {critical:.3f})",
                    "drift",
                    {"probation_psi": shift, "probation_ks": ks},
                )
        labelled = self._labels()
        if labelled is not None:
            return labelled
        elapsed = self.clock() - self.started
        if elapsed >= s.probation_seconds and (
            n >= s.probation_requests or elapsed >= 2 * s.probation_seconds
        ):
            return Verdict(
                Outcome.PASS,
                f"{n} requests over {elapsed:.0f} s in probation, {self.errors} errors",
                figures={"probation_requests": float(n)},
            )
        return Verdict(Outcome.UNDECIDED)
