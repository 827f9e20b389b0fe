"""Comparing two versions' answers to the same request, output by output, in the way that fits
each output's kind (declared in the manifest where the model cannot tell):

- class_scores (logits or probabilities over classes): the top-1 class of each row agrees;
- tensor: the largest absolute difference over the reference's largest magnitude is within the
  declared tolerance (1% by default);
- text (generation): the greedy tokens agree (compared as the generated text, which for greedy
  decoding is the token sequence).

A request agrees when every output agrees. ``confidence`` is the top-1 probability of each row of
class scores: what probation watches for drift (issue 14 builds on it).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from edged.store.lineage import OutputKind, output_kinds
from edged.tensors import Array

__all__ = ["agree", "class_scores", "confidence", "output_kinds", "requests_agree", "softmax_top1"]


def agree(kind: OutputKind, reference: Array, candidate: Array) -> bool:
    if reference.shape != candidate.shape:
        return False
    if kind.kind == "class_scores":
        return bool(np.array_equal(reference.argmax(axis=-1), candidate.argmax(axis=-1)))
    if kind.kind == "text":
        return bool(np.array_equal(reference, candidate))
    ref = reference.astype(np.float64, copy=False)
    scale = float(np.max(np.abs(ref))) if ref.size else 0.0
    diff = (
        float(np.max(np.abs(ref - candidate.astype(np.float64, copy=False)))) if ref.size else 0.0
    )
    return diff <= kind.tolerance * max(scale, 1e-12)


def requests_agree(
    kinds: Mapping[str, OutputKind], reference: Mapping[str, Array], candidate: Mapping[str, Array]
) -> bool:
    """Whether the candidate's answer agrees with the reference's on every output both have."""
    for name, kind in kinds.items():
        if name not in reference:
            continue
        if name not in candidate or not agree(kind, reference[name], candidate[name]):
            return False
    return True


def probabilities(scores: Array) -> Array:
    """Each row as a distribution: a softmax when the row is logits, the row itself when it
    already is one (non-negative, summing to 1 within 1e-3), decided per row in one pass."""
    rows = np.asarray(scores, dtype=np.float64).reshape(-1, scores.shape[-1])
    is_distribution = (rows.min(axis=-1) >= 0) & (np.abs(rows.sum(axis=-1) - 1.0) <= 1e-3)
    exp = np.exp(rows - rows.max(axis=-1, keepdims=True))
    exp /= exp.sum(axis=-1, keepdims=True)
    return np.asarray(np.where(is_distribution[:, None], rows, exp))


def softmax_top1(scores: Array) -> Array:
    """Top-1 probability of each row."""
    return np.asarray(probabilities(scores).max(axis=-1))


def measures(scores: Array) -> tuple[Array, Array, Array]:
    """Per row: the top-1 probability, the margin to the second, and the entropy normalized
    to [0, 1] by that of the uniform distribution over the classes."""
    p = probabilities(scores)
    top2 = np.partition(p, p.shape[-1] - 2, axis=-1)[:, -2:]
    with np.errstate(divide="ignore", invalid="ignore"):
        plogp = np.where(p > 0, p * np.log(p), 0.0)
    entropy = -plogp.sum(axis=-1) / np.log(p.shape[-1])
    return top2[:, 1], top2[:, 1] - top2[:, 0], np.asarray(entropy)


def class_scores(kinds: Mapping[str, OutputKind], outputs: Mapping[str, Array]) -> Array | None:
    """The first class-score output as rows of scores (None when the answer has none)."""
    for name, kind in kinds.items():
        if kind.kind == "class_scores" and name in outputs:
            array = outputs[name]
            if array.ndim >= 1 and array.shape[-1] >= 2:
                return array.reshape(-1, array.shape[-1])
    return None


def confidence(kinds: Mapping[str, OutputKind], outputs: Mapping[str, Array]) -> list[float]:
    """Per row, the top-1 probability of the first class-score output (empty when none)."""
    rows = class_scores(kinds, outputs)
    return [] if rows is None else softmax_top1(rows).tolist()
