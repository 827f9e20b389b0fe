"""Confidence measures and the quality monitor's batched scoring, against direct computation."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence

import numpy as np

from edged.events import NoEvents
from edged.quality import compare
from edged.quality.monitor import FLUSH_CHUNK, QualityMonitor
from edged.settings import QualitySettings
from edged.store.lineage import OutputKind

KINDS = {"logits": OutputKind("class_scores")}


def test_measures_match_their_definitions_for_logits_and_for_distributions() -> None:
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(50, 7)) * 3
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    for scores in (logits.astype(np.float32), probs):  # logits, and rows already distributions
        top1, margin, entropy = compare.measures(scores)
        ordered = np.sort(probs, axis=1)
        np.testing.assert_allclose(top1, ordered[:, -1], rtol=1e-5)
        np.testing.assert_allclose(margin, ordered[:, -1] - ordered[:, -2], rtol=1e-4, atol=1e-6)
        expected = -(probs * np.log(probs)).sum(axis=1) / math.log(7)
        np.testing.assert_allclose(entropy, expected, rtol=1e-4)
    top1, margin, entropy = compare.measures(np.array([[0.0, 1.0, 0.0], [1 / 3, 1 / 3, 1 / 3]]))
    assert top1.tolist() == [1.0, 1 / 3]  # a one-hot row is certain, a uniform one knows nothing
    assert margin[0] == 1.0 and abs(margin[1]) < 1e-12
    assert entropy[0] == 0.0 and abs(entropy[1] - 1.0) < 1e-12


class Recorder(NoEvents):
    def __init__(self) -> None:
        self.rows: list[tuple[str, float, float, float]] = []

    def confidences(
        self,
        model: str,
        variant: str,
        values: Sequence[float],
        margins: Sequence[float],
        entropies: Sequence[float],
    ) -> None:
        self.rows += [(variant, *row) for row in zip(values, margins, entropies, strict=True)]


def test_the_monitor_scores_a_burst_in_chunks_exactly_as_one_answer_at_a_time() -> None:
    """Answers of mixed widths and batch sizes, some with a confidence the runtime gave (a
    cascade): scored in chunks off the request path, every row gets the figures it would get
    alone, in order, and the given confidences stand (margin and entropy unknown)."""
    rng = np.random.default_rng(4)
    answers = []
    for i in range(FLUSH_CHUNK * 2 + 17):
        rows, width = 1 + i % 3, (10, 4)[i % 2]
        answers.append((f"v{i}", rng.normal(size=(rows, width)).astype(np.float32), i % 5 == 0))
    events = Recorder()

    async def burst() -> None:
        monitor = QualityMonitor(QualitySettings(), None, events)
        for variant, logits, given in answers:
            confidences = [0.5] * len(logits) if given else None
            monitor.note("m", "1", variant, "", [("logits", logits)], KINDS, confidences)
        assert events.rows == []  # nothing is computed on the request path
        while monitor._pending:
            await asyncio.sleep(0.01)
        assert len(monitor.strata["m"].edges) == 3  # learned from the burst

    asyncio.run(burst())
    expected = []
    for variant, logits, given in answers:
        if given:
            expected += [(variant, 0.5, math.nan, math.nan)] * len(logits)
        else:
            top1, margin, entropy = compare.measures(logits)
            expected += list(zip([variant] * len(logits), top1, margin, entropy, strict=True))
    assert len(events.rows) == len(expected)
    for got, want in zip(events.rows, expected, strict=True):
        assert got[0] == want[0]
        np.testing.assert_allclose(got[1:], want[1:], rtol=1e-6)
