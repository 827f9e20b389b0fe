"""The on-device latency gate: a candidate's p50/p95/p99, measured here on inputs shaped like
this device's traffic, against the latency budget its manifest declares for the variant.

The candidate and the serving version run the same inputs, interleaved (alternating which goes
first), on the lifecycle's background thread, so whatever else loads the machine weighs on both
alike. When the serving version declares a budget too, what it measures over its own budget is
the machine's slowdown right now, and the candidate's budget is allowed that much more, quantile
by quantile. Too few paired runs within the time allowed is an explicit *inconclusive*.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Mapping, Sequence

from edged.lifecycle.statistics import Outcome, percentiles
from edged.portfolio.slot import Handle
from edged.quality.compare import confidence
from edged.store.lineage import OutputKind
from edged.store.manifest import LatencyBudget
from edged.tensors import Array, GenerationParams, prompt_text

# Past the minimum, the gate keeps measuring for this long or this many pairs (a p99 of 30 runs
# is their maximum; more runs make it a percentile).
EXTRA_SECONDS = 3.0
MAX_PAIRS = 500
# A percentile is judged only when at least this many runs lie beyond it: p50 from 10 runs,
# p95 from 100, p99 from 500 (the p99 of 30 runs is their maximum: one stall decides it).
RUNS_BEYOND = 5
# How far apart the same version's percentiles land in two sets of interleaved runs on a busy
# machine (measured under bench/swap.py's load: up to ~20% at p95).
PAIRED_NOISE = 1.25


@dataclasses.dataclass(frozen=True)
class GateResult:
    outcome: Outcome
    reason: str
    samples: int
    candidate_ms: tuple[float, float, float]
    incumbent_ms: tuple[float, float, float] | None
    budget: LatencyBudget | None
    # Top-1 confidences of each version on the gate's inputs (the drift baseline of probation).
    incumbent_confidence: tuple[float, ...] = ()
    candidate_confidence: tuple[float, ...] = ()
    run_times_ms: tuple[float, ...] = ()  # the candidate's, as measured

    def figures(self) -> dict[str, float]:
        out = {"gate_samples": float(self.samples)}
        for label, values in (("gate", self.candidate_ms), ("incumbent", self.incumbent_ms)):
            if values is not None:
                keys = (f"{label}_p50_ms", f"{label}_p95_ms", f"{label}_p99_ms")
                out.update(zip(keys, values, strict=True))
        if self.budget is not None:
            out.update(budget_p50_ms=self.budget.p50, budget_p99_ms=self.budget.p99)
        return {k: v for k, v in out.items() if not math.isnan(v)}


def _runner(handle: Handle) -> Callable[[Mapping[str, Array]], dict[str, Array]]:
    runtime = handle.runtime
    if not runtime.generative:
        return runtime.infer
    name = runtime.inputs[0].name
    params = GenerationParams(max_tokens=8, temperature=0.0)

    def generate(inputs: Mapping[str, Array]) -> dict[str, Array]:
        import numpy as np

        text = "".join(runtime.generate(prompt_text(inputs[name], name), params, lambda: False))
        return {runtime.outputs[0].name: np.array([text.encode()], dtype=object)}

    return generate


def measure(
    candidate: Handle,
    incumbent: Handle | None,
    inputs: Sequence[Mapping[str, Array]],
    kinds: Mapping[str, OutputKind],
    min_samples: int,
    max_seconds: float,
    clock: Callable[[], float] = time.monotonic,
    extra_seconds: float = EXTRA_SECONDS,
) -> GateResult:
    """Run the gate (blocking: call it on a background thread). Past ``min_samples`` it goes
    on for ``extra_seconds`` (0: stop there)."""
    run_candidate = _runner(candidate)
    run_incumbent = _runner(incumbent) if incumbent is not None else None
    cand_ms: list[float] = []
    inc_ms: list[float] = []
    cand_conf: list[float] = []
    inc_conf: list[float] = []
    start = clock()
    i = 0
    while True:
        elapsed = clock() - start
        if len(cand_ms) >= MAX_PAIRS or elapsed >= max_seconds:
            break
        if len(cand_ms) >= min_samples and elapsed >= extra_seconds:
            break
        sample = inputs[i % len(inputs)]
        pair: list[tuple[str, Callable[[Mapping[str, Array]], dict[str, Array]]]] = [
            ("candidate", run_candidate)
        ]
        if run_incumbent is not None:
            pair.insert(i % 2, ("incumbent", run_incumbent))
        for who, run in pair:
            began = time.perf_counter()
            try:
                outputs = run(sample)
            except Exception as exc:
                if who == "incumbent":
                    run_incumbent = None  # it cannot pair on these inputs: measure alone
                    continue
                return GateResult(
                    Outcome.FAIL,
                    f"the candidate failed on a recent request's inputs: {exc}",
                    len(cand_ms),
                    percentiles(cand_ms),
                    percentiles(inc_ms) if inc_ms else None,
                    candidate.variant.latency_ms,
                )
            took = (time.perf_counter() - began) * 1e3
            first_pass = i < len(inputs)  # confidences once per distinct input, not per run
            if who == "candidate":
                cand_ms.append(took)
                if first_pass:
                    cand_conf.extend(confidence(kinds, outputs))
            else:
                inc_ms.append(took)
                if first_pass:
                    inc_conf.extend(confidence(kinds, outputs))
        i += 1
    return decide(
        candidate.variant.latency_ms,
        incumbent.variant.latency_ms if incumbent is not None else None,
        cand_ms,
        inc_ms,
        min_samples,
        clock() - start,
        tuple(inc_conf),
        tuple(cand_conf),
    )


def decide(
    budget: LatencyBudget | None,
    incumbent_budget: LatencyBudget | None,
    cand_ms: Sequence[float],
    inc_ms: Sequence[float],
    min_samples: int,
    seconds: float,
    incumbent_confidence: tuple[float, ...] = (),
    candidate_confidence: tuple[float, ...] = (),
) -> GateResult:
    """The gate's verdict on measured latencies (pure: tests feed it numbers)."""
    cand = percentiles(cand_ms)
    inc = percentiles(inc_ms) if inc_ms else None

    def result(outcome: Outcome, reason: str) -> GateResult:
        return GateResult(
            outcome,
            reason,
            len(cand_ms),
            cand,
            inc,
            budget,
            incumbent_confidence,
            candidate_confidence,
            tuple(cand_ms),
        )

    shown = f"p50 {cand[0]:.2f} ms, p95 {cand[1]:.2f} ms, p99 {cand[2]:.2f} ms"
    if len(cand_ms) < min_samples:
        return result(
            Outcome.INCONCLUSIVE,
            f"latency gate inconclusive: {len(cand_ms)} of {min_samples} runs in {seconds:.0f} s",
        )
    if budget is None:
        return result(Outcome.PASS, f"no latency budget declared; measured {shown}")
    declared = (budget.p50, budget.p95, budget.p99)
    allowance = (1.0, 1.0, 1.0)
    # What the candidate would measure now if it were exactly as fast, relative to its budget,
    # as the serving version is relative to its own: the paired comparison.
    expected: tuple[float, ...] | None = None
    if inc is not None and incumbent_budget is not None:
        inc_declared = (incumbent_budget.p50, incumbent_budget.p95, incumbent_budget.p99)
        allowance = tuple(  # type: ignore[assignment]
            max(1.0, m / d) if d > 0 else 1.0 for m, d in zip(inc, inc_declared, strict=True)
        )
        expected = tuple(
            m * c / d if d > 0 else math.inf
            for m, c, d in zip(inc, declared, inc_declared, strict=True)
        )
    limits = tuple(d * a for d, a in zip(declared, allowance, strict=True))
    beside = (
        f"; the serving version measured p99 {inc[2]:.2f} ms beside it"
        + (f" (machine slowdown x{allowance[2]:.2f} allowed)" if allowance[2] > 1 else "")
        if inc is not None
        else ""
    )
    declared_all = f"budget p50 {budget.p50:g} / p95 {budget.p95:g} / p99 {budget.p99:g} ms"
    for i, (label, q) in enumerate((("p50", 0.50), ("p95", 0.95), ("p99", 0.99))):
        measured = cand[i]
        if measured <= limits[i] or len(cand_ms) * (1 - q) < RUNS_BEYOND:
            continue
        # Two sets of runs on a busy machine differ by chance in their tails: over its budget
        # is a failure only when also over what the serving version's pace predicts, by more
        # than the noise of such pairs.
        if expected is not None and measured <= expected[i] * PAIRED_NOISE:
            continue
        return result(
            Outcome.FAIL,
            f"too slow: measured {label} {measured:.2f} ms over its budget "
            f"{declared[i]:.2f} ms ({shown} on {len(cand_ms)} runs; {declared_all}{beside})",
        )
    return result(Outcome.PASS, f"within its budget (p99 {budget.p99:.2f} ms): {shown}{beside}")
