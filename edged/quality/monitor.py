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
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from edged.events import Events
from edged.portfolio.slot import Handle
from edged.quality.compare import confidence, output_kinds
from edged.quality.labels import Answer, LabelBook, Score
from edged.quality.strata import Strata, load_all, save_all
from edged.settings import QualitySettings
from edged.store import atomic
from edged.store.lineage import OutputKind
from edged.tensors import Array

log = logging.getLogger(__name__)

FLUSH_SECONDS = 0.05

# (model, version, variant, request id, outputs, kinds, confidences given by the runtime)
Noted = tuple[
    str,
    str,
    str,
    str,
    Sequence[tuple[str, Array]],
    Mapping[str, OutputKind],
    Sequence[float] | None,
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
    ) -> None:
        self._pending.append((model, version, variant, request_id, outputs, kinds, given))
        if self._timer is None:
            try:
                self._timer = asyncio.get_running_loop().call_later(FLUSH_SECONDS, self.flush)
            except RuntimeError:  # no loop (a caller outside the daemon): at once
                self.flush()

    # -- off the request path --------------------------------------------------------------------

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        pending, self._pending = self._pending, []
        now = self.clock()
        for model, version, variant, request_id, outputs, kinds, given in pending:
            answer = dict(outputs)
            confidences = list(given) if given is not None else confidence(kinds, answer)
            if not confidences:
                continue
            strata = self.strata.setdefault(model, Strata())
            strata.observe(confidences)
            for c in confidences:
                self.events.confidence(model, variant, c)
            if request_id:
                self.book.note(
                    model,
                    request_id,
                    Answer(
                        version,
                        variant,
                        strata.stratum(min(confidences)),
                        _predicted(kinds, answer),
                        tuple(confidences),
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


def _predicted(kinds: Mapping[str, OutputKind], outputs: Mapping[str, Array]) -> tuple[int, ...]:
    for name, kind in kinds.items():
        if kind.kind == "class_scores" and name in outputs:
            array = np.asarray(outputs[name])
            return tuple(int(x) for x in array.reshape(-1, array.shape[-1]).argmax(axis=-1))
    return ()
