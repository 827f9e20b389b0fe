"""A model version's place in its lifecycle, as the store keeps it (docs/lifecycle.md).

    staged -> candidate (validating, loading, warming, gating, shadowing) -> probation -> committed
                 \\-> rejected                                   \\-> rolled_back

Each version's record lives beside its manifest (``models/<name>/<version>/state.json``), written
atomically. The model's ``ACTIVE`` pointer names its committed, serving version: it moves only
when a version is committed (or an operator rolls back), so after a crash at any instant the
daemon serves the last committed version. A version without a record (stores older than the
lifecycle) is committed when ``ACTIVE`` names it or it is older, staged when it is newer.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import time
from typing import Any

from edged.errors import ManifestError


class VersionState(enum.StrEnum):
    STAGED = "staged"  # in the store, not under evaluation
    CANDIDATE = "candidate"  # being evaluated beside the serving version
    PROBATION = "probation"  # serving, watched; the previous committed version is the fallback
    COMMITTED = "committed"  # passed (the serving one is ACTIVE; older ones are history)
    REJECTED = "rejected"  # failed before it served
    ROLLED_BACK = "rolled_back"  # served, then taken back


class Phase(enum.StrEnum):
    """Where a candidate's evaluation is."""

    NONE = ""
    VALIDATING = "validating"
    LOADING = "loading"
    WARMING = "warming"
    GATING = "gating"
    SHADOWING = "shadowing"
    CANARY = "canary"  # answering a share of real requests


@dataclasses.dataclass(frozen=True)
class VersionRecord:
    state: VersionState
    phase: Phase = Phase.NONE
    reason: str = ""
    since: float = 0.0  # wall time of the last change
    requested: bool = False  # a promotion was asked for (staged: the daemon starts it)
    figures: dict[str, float] = dataclasses.field(default_factory=dict)  # gate, shadow, ...

    def moved(
        self,
        state: VersionState,
        reason: str = "",
        *,
        phase: Phase = Phase.NONE,
        requested: bool = False,
        figures: dict[str, float] | None = None,
    ) -> VersionRecord:
        return VersionRecord(
            state,
            phase,
            reason,
            time.time(),
            requested,
            {**self.figures, **(figures or {})},
        )

    def to_json(self) -> str:
        data: dict[str, Any] = dataclasses.asdict(self)
        data["state"], data["phase"] = str(self.state), str(self.phase)
        return json.dumps(data, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> VersionRecord:
        try:
            data = json.loads(text)
            figures = {str(k): float(v) for k, v in dict(data.get("figures", {})).items()}
            return cls(
                VersionState(data["state"]),
                Phase(data.get("phase", "")),
                str(data.get("reason", "")),
                float(data.get("since", 0.0)),
                bool(data.get("requested", False)),
                figures,
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ManifestError(f"state.json: not a version record ({exc})") from None
