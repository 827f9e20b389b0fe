"""A confidence cascade served as one runtime: the cheapest stage answers, and the request goes
on to the last stage when the first one's top-1 confidence is below a threshold.

The threshold is calibrated on this device to keep the cascade's agreement with the last stage at
or above the target: from requests where both stages ran (every escalated request, and a sampled
share of the others, run again by the last stage off the request path and weighted by the
inverse of that share), the lowest threshold whose estimated agreement reaches the target. It is
re-fitted as traffic drifts (every ``REFIT_EVERY`` samples, over the last ``WINDOW``) and kept in
the store's state directory. Until enough samples are in, the publisher's threshold (the
manifest's) is used, else 1.0: everything escalates, which is safe and measures the most.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edged.errors import InvalidInputError
from edged.runtime.base import Array, GenerationParams, Runtime, TensorSpec
from edged.store import atomic
from edged.store.manifest import Warmup

MIN_SAMPLES = 200
REFIT_EVERY = 100
WINDOW = 5000
# The share of first-stage answers the last stage checks again off the request path.
CHECK_SHARE = 0.05


def top1(scores: Array) -> float:
    """The smallest, over rows, top-1 softmax probability of a batch of logits."""
    rows = np.asarray(scores, dtype=np.float64).reshape(-1, scores.shape[-1])
    shifted = rows - rows.max(axis=-1, keepdims=True)
    return float(np.min(1.0 / np.exp(shifted).sum(axis=-1)))


class Calibration:
    """Weighted (confidence of the first stage, agreed with the last) samples, and the
    threshold they give."""

    def __init__(self, target: float) -> None:
        self.target = target
        self.samples: list[tuple[float, bool, float]] = []
        self._since = 0
        self._lock = threading.Lock()

    def add(self, confidence: float, agreed: bool, weight: float) -> bool:
        """Note one; True when the threshold should be fitted again."""
        with self._lock:
            self.samples.append((confidence, agreed, weight))
            if len(self.samples) > WINDOW:
                del self.samples[: len(self.samples) - WINDOW]
            self._since += 1
            due = len(self.samples) >= MIN_SAMPLES and self._since >= REFIT_EVERY
            if due:
                self._since = 0
            return due

    def fit(self) -> float | None:
        """The lowest threshold whose estimated agreement with the last stage reaches the
        target: escalated requests agree by construction, the others as observed."""
        with self._lock:
            samples = sorted(self.samples)
        if len(samples) < MIN_SAMPLES:
            return None
        conf = np.array([c for c, _, _ in samples])
        agreed = np.array([a for _, a, _ in samples], dtype=np.float64)
        weight = np.array([w for _, _, w in samples])
        total = weight.sum()
        # Thresholds at each sample's confidence: escalate everything below it.
        disagree_above = np.cumsum(((1 - agreed) * weight)[::-1])[::-1]  # from i upwards
        for i in range(len(samples)):
            if 1.0 - disagree_above[i] / total >= self.target:
                return float(conf[i])
        return 1.0


class CascadeRuntime:
    platform = "edged_cascade"
    generative = False
    staged = True
    concurrency: int | None = None

    def __init__(
        self,
        stages: Sequence[Runtime],
        names: Sequence[str],
        score_output: str,
        agreement: float,
        threshold: float | None,
        state: Path | None = None,
        costs: Sequence[float] | None = None,
    ) -> None:
        self.stages = list(stages)
        self.names = list(names)
        # Each stage's cost per request (multiply-adds when the manifest says; else 1 each).
        self.costs = list(costs) if costs else [1.0] * len(stages)
        self.score_output = score_output
        self.inputs: tuple[TensorSpec, ...] = stages[0].inputs
        self.outputs: tuple[TensorSpec, ...] = stages[-1].outputs
        self.calibration = Calibration(agreement)
        self.threshold = threshold if threshold is not None else 1.0
        self.calibrated = False  # by this device (else the publisher's, or 1.0)
        self.state = state
        self._load_state()

    # -- serving ---------------------------------------------------------------------------------

    def infer(self, inputs: Mapping[str, Array]) -> dict[str, Array]:
        return self.infer_staged(inputs)[0]

    def infer_staged(self, inputs: Mapping[str, Array]) -> tuple[dict[str, Array], int, float]:
        """(the answer, the stage that gave it, the first stage's confidence)."""
        first = self.stages[0].infer(inputs)
        confidence = top1(first[self.score_output])
        if confidence >= self.threshold:
            return first, 0, confidence
        last = self.stages[-1].infer(inputs)
        self._observe(confidence, self._agree(first, last), 1.0)
        return last, len(self.stages) - 1, confidence

    def check(self, inputs: Mapping[str, Array], first: Mapping[str, Array], share: float) -> None:
        """Off the request path: the last stage's answer to a request the first stage answered
        alone, for calibration (weighted: one in ``1/share`` such requests is checked)."""
        last = self.stages[-1].infer(inputs)
        self._observe(top1(first[self.score_output]), self._agree(first, last), 1.0 / share)

    def _agree(self, first: Mapping[str, Array], last: Mapping[str, Array]) -> bool:
        a, b = first[self.score_output], last[self.score_output]
        return bool(np.array_equal(np.argmax(a, axis=-1), np.argmax(b, axis=-1)))

    def _observe(self, confidence: float, agreed: bool, weight: float) -> None:
        if self.calibration.add(confidence, agreed, weight):
            fitted = self.calibration.fit()
            if fitted is not None:
                self.threshold, self.calibrated = fitted, True
                self._save_state()

    def saved(self, stage: int) -> float:
        """The share of the last stage's compute a request answered at ``stage`` did not spend
        (negative when it escalated: both ran). Costs are the stages' declared multiply-adds."""
        last = self.costs[-1] or 1.0
        spent = sum(self.costs[: stage + 1]) if stage < len(self.stages) - 1 else sum(self.costs)
        return 1.0 - spent / last

    # -- calibration state -----------------------------------------------------------------------

    def _load_state(self) -> None:
        if self.state is None:
            return
        with contextlib.suppress(OSError, ValueError, TypeError, KeyError):
            data = json.loads(self.state.read_text())
            if data["stages"] == self.names:
                self.threshold, self.calibrated = float(data["threshold"]), True

    def _save_state(self) -> None:
        if self.state is None:
            return
        with contextlib.suppress(OSError):
            self.state.parent.mkdir(parents=True, exist_ok=True)
            atomic.write_text(
                self.state, json.dumps({"stages": self.names, "threshold": self.threshold})
            )

    # -- the Runtime protocol --------------------------------------------------------------------

    def generate(
        self,
        prompt: str,
        params: GenerationParams,
        should_stop: Callable[[], bool],
        logprobs: list[float] | None = None,
    ) -> Iterator[str]:
        raise InvalidInputError("a cascade of classifiers does not generate text")

    def warm_up(self, sample: Warmup | None = None) -> None:
        for stage in self.stages:
            stage.warm_up(sample)

    def close(self) -> None:
        for stage in self.stages:
            stage.close()


def describe(runtime: Any) -> str:
    """One line: stages, threshold and whether this device calibrated it."""
    source = "calibrated here" if runtime.calibrated else "the publisher's (or 1.0)"
    return f"{' -> '.join(runtime.names)}, threshold {runtime.threshold:.3f} ({source})"
