"""Where a model version came from, and what its outputs mean: the manifest's ``lineage`` and
``outputs`` sections, typed and validated (every error names the field).

    "lineage": {
      "parent": "2",                                   # a version of the same model, or null
      "teacher": {"name": "ocr-teacher", "version": "3"},   # or null (not distilled)
      "dataset": "receipts-2026-10",                   # the training data snapshot
      "compression": {"method": "int8-dynamic", "settings": {"per_channel": true}},
      "finetune_dataset": "receipts-de-2026-11"        # or null
    }

    "outputs": {"logits": {"kind": "class_scores"}, "boxes": {"kind": "tensor", "tolerance": 0.01}}

Three parts of a lineage are what a rollback can undo one at a time (``PARTS``): the teacher, the
dataset (with the fine-tune dataset) and the compression.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from typing import Any

from edged.errors import ManifestError
from edged.names import check_name, check_version
from edged.tensors import TensorSpec

PARTS = ("teacher", "dataset", "compression")
OUTPUT_KINDS = ("class_scores", "tensor", "text")
_LINEAGE_KEYS = {"parent", "teacher", "dataset", "compression", "finetune_dataset"}


@dataclasses.dataclass(frozen=True)
class Teacher:
    name: str
    version: str

    def __str__(self) -> str:
        return f"{self.name} {self.version}"


@dataclasses.dataclass(frozen=True)
class Compression:
    method: str
    settings: tuple[tuple[str, str], ...] = ()  # (key, JSON value), sorted: comparable

    def __str__(self) -> str:
        if not self.settings:
            return self.method
        return f"{self.method} ({', '.join(f'{k}={v}' for k, v in self.settings)})"


@dataclasses.dataclass(frozen=True)
class Lineage:
    parent: str | None = None
    teacher: Teacher | None = None
    dataset: str | None = None
    compression: Compression | None = None
    finetune_dataset: str | None = None

    def part(self, name: str) -> object:
        """The value of one undoable part (the dataset part includes the fine-tune dataset)."""
        if name == "teacher":
            return self.teacher
        if name == "dataset":
            return (self.dataset, self.finetune_dataset)
        if name == "compression":
            return self.compression
        raise ValueError(f"unknown lineage part {name!r} (one of {', '.join(PARTS)})")

    def describe(self, name: str) -> str:
        value = self.part(name)
        if name == "dataset":
            base, tuned = self.dataset, self.finetune_dataset
            return f"{base or '?'}" + (f" + fine-tune {tuned}" if tuned else "")
        return str(value) if value is not None else "none"


def _optional_str(raw: dict[str, Any], key: str) -> str | None:
    value = raw.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise ManifestError(f"lineage.{key}: expected a non-empty string or null, got {value!r}")
    return value


def parse_lineage(raw: Any) -> Lineage:
    if raw is None:
        return Lineage()
    if not isinstance(raw, dict):
        raise ManifestError("lineage: expected an object")
    unknown = sorted(set(raw) - _LINEAGE_KEYS)
    if unknown:
        raise ManifestError(
            f"lineage.{unknown[0]}: unknown key (lineage has {', '.join(sorted(_LINEAGE_KEYS))})"
        )
    parent = raw.get("parent")
    if parent is not None:
        parent = check_version(parent, "lineage.parent")
    teacher = None
    if raw.get("teacher") is not None:
        t = raw["teacher"]
        if not isinstance(t, dict) or not isinstance(t.get("version"), str):
            raise ManifestError(
                f"lineage.teacher: expected {{'name': ..., 'version': ...}} or null, got {t!r}"
            )
        teacher = Teacher(
            check_name(t.get("name"), "lineage.teacher.name"),
            check_version(t["version"], "lineage.teacher.version"),
        )
    dataset = raw.get("dataset")
    if isinstance(dataset, dict):  # {"snapshot": "..."}
        dataset = dataset.get("snapshot")
    if dataset is not None and (not isinstance(dataset, str) or not dataset):
        raise ManifestError(
            "lineage.dataset: expected a snapshot name (a string or {'snapshot': ...})"
        )
    compression = None
    if raw.get("compression") is not None:
        c = raw["compression"]
        if not isinstance(c, dict) or not isinstance(c.get("method"), str) or not c["method"]:
            raise ManifestError(
                f"lineage.compression: expected {{'method': ..., 'settings': {{...}}}}, got {c!r}"
            )
        settings = c.get("settings", {})
        if not isinstance(settings, dict):
            raise ManifestError("lineage.compression.settings: expected an object")
        # Older manifests put settings beside the method ({"method": ..., "bits": 8}).
        merged = {**{k: v for k, v in c.items() if k not in ("method", "settings")}, **settings}
        compression = Compression(
            c["method"],
            tuple(sorted((k, json.dumps(v, sort_keys=True)) for k, v in merged.items())),
        )
    return Lineage(parent, teacher, dataset, compression, _optional_str(raw, "finetune_dataset"))


@dataclasses.dataclass(frozen=True)
class OutputKind:
    """How an output is compared between two versions (docs/lifecycle.md)."""

    kind: str  # class_scores: top-1 agreement; tensor: relative error; text: greedy tokens
    tolerance: float = 0.01  # for tensors: the largest relative error that still agrees


def parse_outputs(raw: Any) -> dict[str, OutputKind]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ManifestError("outputs: expected an object of output name -> {'kind': ...}")
    out = {}
    for name, spec in raw.items():
        where = f"outputs.{name}"
        if not isinstance(spec, dict) or spec.get("kind") not in OUTPUT_KINDS:
            raise ManifestError(f"{where}.kind: expected one of {', '.join(OUTPUT_KINDS)}")
        tolerance = spec.get("tolerance", 0.01)
        if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)):
            raise ManifestError(f"{where}.tolerance: expected a number")
        if not 0 <= tolerance < 1e6:
            raise ManifestError(f"{where}.tolerance: must be >= 0, got {tolerance}")
        unknown = sorted(set(spec) - {"kind", "tolerance"})
        if unknown:
            raise ManifestError(f"{where}.{unknown[0]}: unknown key")
        out[str(name)] = OutputKind(spec["kind"], float(tolerance))
    return out


_CLASS_HINTS = ("logit", "prob", "score", "class")


def output_kinds(
    declared: Mapping[str, OutputKind], outputs: Sequence[TensorSpec]
) -> dict[str, OutputKind]:
    """Each output's kind: as declared, else class scores for a float output of rank 2 whose name
    says so (logits, probs, scores, classes), text for BYTES, a tensor otherwise."""
    kinds = {}
    for spec in outputs:
        if spec.name in declared:
            kinds[spec.name] = declared[spec.name]
        elif spec.datatype == "BYTES":
            kinds[spec.name] = OutputKind("text")
        elif (
            spec.datatype in ("FP32", "FP16", "FP64")
            and len(spec.shape) == 2
            and any(h in spec.name.lower() for h in _CLASS_HINTS)
        ):
            kinds[spec.name] = OutputKind("class_scores")
        else:
            kinds[spec.name] = OutputKind("tensor")
    return kinds
