"""The quality monitor: what every answer's confidence was, which stratum it fell in, and — when
the application reports the truth — how often each version and variant was right.

The request path only notes what it answered (a tuple in a list; nothing is computed there).
Every ``FLUSH_SECONDS`` the noted answers are processed together, off the request path:
confidences from the class scores (or, for generated text, from the tokens' log-probabilities
the runtime reported), the model's strata learned from them, the answers to requests with an id
kept for their labels, the confidence histogram emitted. State (strata, scores) is persisted in
the store's state directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from edged.events import Events
from edged.portfolio.slot import Handle
from edged.quality.compare import measures, output_kinds
from edged.quality.labels import Answer, LabelBook, Score
from edged.quality.strata import Strata, load_all, save_all
from edged.settings import QualitySettings
from edged.store import atomic
from edged.store.lineage import OutputKind
from edged.tensors import Array

log = logging.getLogger(__name__)

FLUSH_SECONDS = 0.05
FLUSH_CHUNK = 64  # answers scored per loop callback (~1 ms here)

# (model, version, variant, request id, outputs, kinds, confidences given by the runtime,
# stratum known on the request path)
Noted = tuple[
    str,
    str,
    str,
    str,
    Sequence[tuple[str, Array]],
    Mapping[str, OutputKind],
    Sequence[float] | None,
    int | None,
]


class QualityMonitor:
    def __init__(
        self,
        settings: QualitySettings,
        state: Path | None,
        events: Events,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.state = state  # None: nothing persisted
        self.events = events
        self.clock = clock
        self.strata: dict[str, Strata] = load_all(state / "strata.json") if state else {}
        self.book = LabelBook(settings.label_retention_seconds, settings.label_capacity)
        if state is not None:
            with contextlib.suppress(OSError):
                self.book.load_json((state / "scores.json").read_text())
        self._pending: list[Noted] = []
        self._timer: asyncio.TimerHandle | None = None

    # -- the request path ------------------------------------------------------------------------

    def note(
        self,
        model: str,
        version: str,
        variant: str,
        request_id: str,
        outputs: Sequence[tuple[str, Array]],
        kinds: Mapping[str, OutputKind],
        given: Sequence[float] | None = None,
        stratum: int | None = None,
    ) -> None:
        self._pending.append((model, version, variant, request_id, outputs, kinds, given, stratum))
        if self._timer is None:
            try:
                self._timer = asyncio.get_running_loop().call_later(FLUSH_SECONDS, self._flush_some)
            except RuntimeError:  # no loop (a caller outside the daemon): at once
                self.flush()

    # -- off the request path --------------------------------------------------------------------

    def _flush_some(self) -> None:
        """The timer's flush: at most ``FLUSH_CHUNK`` answers per loop callback, so that a burst
        never holds the loop (and the requests waiting on it) for more than a few ms."""
        self._timer = None
        self._score(self._pending[:FLUSH_CHUNK])
        del self._pending[:FLUSH_CHUNK]
        if self._pending:
            self._timer = asyncio.get_running_loop().call_later(0, self._flush_some)

    def flush(self) -> None:
        """Score everything noted so far (before a label is looked up, or a save)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        pending, self._pending = self._pending, []
        self._score(pending)

    def _score(self, pending: Sequence[Noted]) -> None:
        if not pending:
            return
        now = self.clock()
        scored = _score_all(pending)
        by_model: dict[str, list[float]] = {}
        for noted, answer in zip(pending, scored, strict=True):
            by_model.setdefault(noted[0], []).extend(answer.confidence)
        for model, confidences in by_model.items():  # the strata learn before answers go in them
            self.strata.setdefault(model, Strata()).observe(confidences)
        for noted, answer in zip(pending, scored, strict=True):
            model, version, variant, request_id = noted[:4]
            if not answer.confidence:
                continue
            self.events.confidences(
                model, variant, answer.confidence, answer.margin, answer.entropy
            )
            if request_id:
                strata = self.strata[model]
                self.book.note(
                    model,
                    request_id,
                    Answer(
                        version,
                        variant,
                        strata.stratum(min(answer.confidence)) if noted[7] is None else noted[7],
                        answer.predicted,
                        tuple(answer.confidence),
                        now,
                    ),
                )

    @staticmethod
    def kinds(handle: Handle) -> Mapping[str, OutputKind]:
        """How ``handle``'s outputs are scored (worked out once per handle)."""
        kinds = handle.kinds
        if kinds is None:
            kinds = handle.kinds = output_kinds(handle.manifest.outputs, handle.runtime.outputs)
        return kinds

    def stratum(self, model: str, confidences: Sequence[float]) -> int:
        strata = self.strata.get(model)
        return strata.stratum(min(confidences)) if strata is not None and confidences else -1

    def label(self, model: str, request_id: str, labels: Sequence[int]) -> Answer:
        self.flush()
        return self.book.label(model, request_id, labels, self.clock())

    def score(self, model: str, version: str | None = None, variant: str | None = None) -> Score:
        return self.book.total(model, version, variant)

    def measured_quality(self, model: str, variant: str, prior: float) -> float:
        """The manifest's quality as a prior worth ``label_prior_weight`` labels, moved by the
        labels this variant has had on this device (any version: a variant's id names the same
        recipe across versions, the estimate carries over until new labels say otherwise)."""
        score = self.book.total(model, variant=variant)
        k = self.settings.label_prior_weight
        return (prior * k + score.correct) / (k + score.labels)

    def save(self) -> None:
        """Flush, then persist (on the event loop's thread)."""
        self.flush()
        self.persist()

    def persist(self) -> None:
        """Write the strata and the scores (safe from another thread: flush first)."""
        if self.state is None:
            return
        try:
            save_all(self.state / "strata.json", self.strata)
            atomic.write_text(self.state / "scores.json", self.book.to_json())
        except OSError as exc:
            log.warning("could not persist the quality state: %s", exc)


@dataclasses.dataclass
class Scored:
    """One answer's per-row confidence (top-1), margin, entropy and predicted class."""

    confidence: list[float]
    margin: list[float]
    entropy: list[float]
    predicted: tuple[int, ...]


def _score_all(pending: Sequence[Noted]) -> list[Scored]:
    """Every noted answer's measures and predicted classes (per row), the class scores of all
    of them stacked by width and scored in one vectorized pass: a flush of thousands of answers
    costs a few numpy calls, not a few per answer. A confidence the runtime gave (a cascade's
    answering stage, a generation's tokens) stands; margin and entropy are then unknown (NaN)."""
    out = [
        Scored(list(p[6]), [math.nan] * len(p[6]), [math.nan] * len(p[6]), ())
        if p[6] is not None
        else Scored([], [], [], ())
        for p in pending
    ]
    by_width: dict[int, list[tuple[int, Array]]] = {}
    for i, (_, _, _, _, outputs, kinds, *_) in enumerate(pending):
        for name, array in outputs:  # the first class-score output in the answer
            kind = kinds.get(name)
            if (
                kind is not None
                and kind.kind == "class_scores"
                and array.ndim
                and array.shape[-1] > 1
            ):
                width = array.shape[-1]
                by_width.setdefault(width, []).append((i, array.reshape(-1, width)))
                break
    for group in by_width.values():
        stacked = np.concatenate([rows for _, rows in group])
        top1, margin, entropy = (m.tolist() for m in measures(stacked))
        argmax = stacked.argmax(axis=-1).tolist()
        at = 0
        for i, rows in group:
            n = len(rows)
            predicted = tuple(argmax[at : at + n])
            if pending[i][6] is None:
                out[i] = Scored(
                    top1[at : at + n], margin[at : at + n], entropy[at : at + n], predicted
                )
            else:
                out[i].predicted = predicted
            at += n
    return out
