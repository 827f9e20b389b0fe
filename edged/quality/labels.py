"""Delayed labels: the application reports the true answer for a request id later, and edged
keeps, per model, version, variant and stratum, the accuracy and the calibration error (ECE) of
what it answered.

What a label needs is noted when the request is answered (its id, who answered, the stratum,
the predicted classes and their confidences), in memory, for ``retention`` seconds and at most
``capacity`` requests (the oldest go first): a label for an id that was never seen, answered
without an id, or has expired gets a clear error. The scores are persisted by the monitor.
"""

from __future__ import annotations

import collections
import dataclasses
import json
from collections.abc import Sequence
from typing import Any

from edged.errors import InvalidInputError, NotFoundError

ECE_BINS = 10


@dataclasses.dataclass(frozen=True)
class Answer:
    """What edged said to one request, kept until its label comes or it expires."""

    version: str
    variant: str
    stratum: int
    predicted: tuple[int, ...]  # per row
    confidence: tuple[float, ...]  # per row
    at: float


@dataclasses.dataclass
class Score:
    """Accuracy and calibration of one (model, version, variant, stratum)."""

    labels: int = 0
    correct: int = 0
    bins: list[list[float]] = dataclasses.field(
        default_factory=lambda: [[0.0, 0.0, 0.0] for _ in range(ECE_BINS)]
    )  # per confidence bin: [count, sum of confidence, correct]

    def add(self, confidence: float, right: bool) -> None:
        self.labels += 1
        self.correct += right
        b = self.bins[min(int(confidence * ECE_BINS), ECE_BINS - 1)]
        b[0] += 1
        b[1] += confidence
        b[2] += right

    def merge(self, other: Score) -> None:
        self.labels += other.labels
        self.correct += other.correct
        for mine, theirs in zip(self.bins, other.bins, strict=True):
            for i in range(3):
                mine[i] += theirs[i]

    @property
    def accuracy(self) -> float:
        return self.correct / self.labels if self.labels else float("nan")

    @property
    def ece(self) -> float:
        """Expected calibration error: the confidence-weighted gap between how sure the model
        said it was and how often it was right, over 10 equal-width bins."""
        if not self.labels:
            return float("nan")
        return sum(abs(b[1] - b[2]) for b in self.bins if b[0]) / self.labels


Key = tuple[str, str, str, int]  # model, version, variant, stratum


class LabelBook:
    def __init__(self, retention: float, capacity: int) -> None:
        self.retention = retention
        self.capacity = capacity
        self._answers: collections.OrderedDict[tuple[str, str], Answer] = collections.OrderedDict()
        self.scores: dict[Key, Score] = {}

    def note(self, model: str, request_id: str, answer: Answer) -> None:
        key = (model, request_id)
        self._answers.pop(key, None)
        self._answers[key] = answer
        while len(self._answers) > self.capacity:
            self._answers.popitem(last=False)

    def expire(self, now: float) -> None:
        while self._answers:
            key, oldest = next(iter(self._answers.items()))
            if now - oldest.at <= self.retention:
                break
            del self._answers[key]

    def label(self, model: str, request_id: str, labels: Sequence[int], now: float) -> Answer:
        """Score a request's answer against its true labels (one per row)."""
        self.expire(now)
        answer = self._answers.pop((model, request_id), None)
        if answer is None:
            raise NotFoundError(
                f"model {model!r} answered no request with id {request_id!r} in the last "
                f"{self.retention:g} s (or {self.capacity} requests): unknown, expired, or sent "
                "without an id"
            )
        if len(labels) != len(answer.predicted):
            self._answers[(model, request_id)] = answer  # the caller can try again
            raise InvalidInputError(
                f"request {request_id!r} had {len(answer.predicted)} rows, "
                f"{len(labels)} labels were given"
            )
        score = self.scores.setdefault(
            (model, answer.version, answer.variant, answer.stratum), Score()
        )
        for predicted, confidence, truth in zip(
            answer.predicted, answer.confidence, labels, strict=True
        ):
            score.add(confidence, predicted == truth)
        return answer

    def total(
        self,
        model: str,
        version: str | None = None,
        variant: str | None = None,
        stratum: int | None = None,
    ) -> Score:
        """Merged over what is not given. ``variant`` "cascade" is every answer a cascade gave
        (noted as "cascade/<stage>")."""
        out = Score()
        for (m, v, var, s), score in self.scores.items():
            if m != model or version not in (None, v) or stratum not in (None, s):
                continue
            if variant is None or var == variant or var.startswith(f"{variant}/"):
                out.merge(score)
        return out

    def to_json(self) -> str:
        return json.dumps(
            [
                {"key": list(k), "labels": s.labels, "correct": s.correct, "bins": s.bins}
                for k, s in self.scores.items()
            ]
        )

    def load_json(self, text: str) -> None:
        try:
            rows: Any = json.loads(text)
            for row in rows:
                m, v, var, stratum = row["key"]
                self.scores[(str(m), str(v), str(var), int(stratum))] = Score(
                    int(row["labels"]),
                    int(row["correct"]),
                    [list(map(float, b)) for b in row["bins"]],
                )
        except (ValueError, KeyError, TypeError):
            self.scores = {}
