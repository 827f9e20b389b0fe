"""What the service layer returns: snapshots, never live objects of the core.

Adapters turn these into protobuf messages, metric families or terminal lines; nothing they hold
changes under them, and nothing they do to them reaches the core.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

from edged.tensors import Array, TensorSpec


class Served(NamedTuple):
    """One inference's answer: who answered and what."""

    version: str
    variant: str
    outputs: list[tuple[str, Array]]
    cold: bool  # the request waited for a load
    escalated: bool | None = None  # a cascade's: whether its first stage was unsure
    confidence: float | None = None  # given by the runtime (generated text: its tokens')
    # The request's difficulty stratum when known on the path (a canary's: by the serving
    # version's confidence, not the candidate's that answered).
    stratum: int | None = None


@dataclasses.dataclass(frozen=True)
class BudgetView:
    bytes: int
    limited_by: str
    accounted_bytes: int
    available_bytes: int
    psi_some_avg10: float | None


@dataclasses.dataclass(frozen=True)
class VariantView:
    id: str
    format: str
    quantization: str
    quality: float
    size: int
    state: str  # READY when serving, else the verdict (USABLE, UNUSABLE, UNVALIDATED, ...)
    reason: str
    serving: bool
    resident_bytes: int
    load_seconds: float
    labels: int = 0  # labelled answers of this version's variant (docs/quality.md)
    accuracy: float = float("nan")
    ece: float = float("nan")
    measured_quality: float = float("nan")  # what residency scores it with


@dataclasses.dataclass(frozen=True)
class VersionView:
    version: str
    active: bool
    variants: tuple[VariantView, ...]


@dataclasses.dataclass(frozen=True)
class ModelView:
    name: str
    active_version: str
    state: str  # READY | LOADING | UNAVAILABLE (Triton's index states)
    reason: str
    pinned: bool
    predicted_rate: float
    last_use_seconds_ago: float  # -1 when never used
    versions: tuple[VersionView, ...]
    # What is resident now, if anything: (variant, bytes as accounted).
    resident: tuple[str, int] | None = None


@dataclasses.dataclass(frozen=True)
class PortfolioView:
    budget: BudgetView
    models: tuple[ModelView, ...]


@dataclasses.dataclass(frozen=True)
class IndexEntry:
    name: str
    version: str
    state: str
    reason: str


@dataclasses.dataclass(frozen=True)
class ModelStatistics:
    name: str
    version: str
    last_inference_ms: int
    success_count: int
    success_ns: int
    fail_count: int
    fail_ns: int
    memory_bytes: int  # 0 when not resident


@dataclasses.dataclass(frozen=True)
class ModelMetadata:
    name: str
    versions: tuple[str, ...]
    platform: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]


@dataclasses.dataclass(frozen=True)
class Loaded:
    """What an explicit load made resident."""

    version: str
    variant: str
    resident_bytes: int


@dataclasses.dataclass(frozen=True)
class FileProgress:
    variant: str
    method: str
    held: int
    size: int


@dataclasses.dataclass(frozen=True)
class PushResult:
    update_id: str
    model: str
    version: str
    state: str  # receiving | staged | active
    files: tuple[FileProgress, ...]


@dataclasses.dataclass(frozen=True)
class UpdateStatus:
    update_id: str
    state: str  # unknown | receiving
    model: str = ""
    version: str = ""
    files: tuple[FileProgress, ...] = ()


@dataclasses.dataclass(frozen=True)
class LineageView:
    parent: str
    teacher: str
    dataset: str
    compression: str
    finetune_dataset: str


@dataclasses.dataclass(frozen=True)
class VersionStateView:
    """One stored version as the lifecycle sees it."""

    version: str
    state: str
    phase: str
    reason: str
    serving: bool
    since: float
    requested: bool
    figures: dict[str, float]
    lineage: LineageView


@dataclasses.dataclass(frozen=True)
class LineageNodeView:
    version: str
    parent: str
    state: str
    serving: bool
    changes: tuple[str, ...]
    lineage: LineageView


@dataclasses.dataclass(frozen=True)
class RolledBack:
    version: str
    reason: str
