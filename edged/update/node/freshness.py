"""Update freshness, after TUF's rules (docs/updates.md): a signature says who made an update,
not that it is still the update to apply. A validly signed old update replayed to a node that
has moved past it must be refused, as must one past its expiry or meant for other devices.

- **Sequence**: every pushed or pulled manifest carries ``update.sequence``, a signed counter
  per model. A node accepts only a sequence above the highest it has applied for that model; a
  replayed or rolled-back manifest is refused (rolling back stays the operator's and the
  probation's, through the lifecycle, not through old updates).
- **Expiry**: ``update.expires`` is checked against the clock, never earlier than a persisted
  floor (the latest time this node has seen), so winding the clock back does not revive an
  expired update.
- **Targeting**: ``update.targets`` names devices and groups; a node that is neither refuses it.

The state (``state/freshness.json``) is written with the crash-safe write, after the update is
applied: a kill -9 before that leaves the update resumable, never half-counted.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from edged.errors import ErrorCode, RejectedError
from edged.store import atomic
from edged.store.manifest import Manifest


class StaleUpdateError(RejectedError):
    code = ErrorCode.FAILED_PRECONDITION


class Freshness:
    def __init__(
        self,
        path: Path,
        device: str,
        groups: Sequence[str] = (),
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = path
        self.device = device
        self.groups = frozenset(groups)
        self.clock = clock
        self._lock = threading.Lock()
        try:
            state = json.loads(path.read_text())
        except (FileNotFoundError, ValueError):
            state = {}
        sequences = state.get("sequences", {})
        self.sequences: dict[str, int] = {
            str(k): int(v) for k, v in sequences.items() if isinstance(v, int)
        }
        floor = state.get("time_floor", 0.0)
        self.floor = float(floor) if isinstance(floor, int | float) else 0.0

    def now(self) -> float:
        """The clock, never earlier than the latest time this node has seen."""
        return max(self.clock(), self.floor)

    def check(self, manifest: Manifest) -> None:
        """StaleUpdateError unless ``manifest`` is newer than what was applied, unexpired and
        meant for this node."""
        section = manifest.update
        assert section is not None
        now = self.now()
        if section.expires <= now:
            raise StaleUpdateError(
                f"update for {manifest.name} version {manifest.version} expired at "
                f"{_iso(section.expires)} (this node's time is {_iso(now)}); build a fresh one",
                "expired",
            )
        applied = self.sequences.get(manifest.name, 0)
        if section.sequence <= applied:
            raise StaleUpdateError(
                f"update for {manifest.name} version {manifest.version} has sequence "
                f"{section.sequence}, not above {applied}, the last one applied for this model: "
                "a replayed or rolled-back update (roll back with edged rollback)",
                "replayed",
            )
        if (section.devices or section.groups) and not (
            self.device in section.devices or self.groups & set(section.groups)
        ):
            raise StaleUpdateError(
                f"update for {manifest.name} version {manifest.version} is meant for devices "
                f"{list(section.devices)} and groups {list(section.groups)}; this node is "
                f"{self.device!r} in groups {sorted(self.groups)}",
                "mistargeted",
            )

    def applied(self, manifest: Manifest) -> None:
        """Record an applied update: its sequence becomes the model's floor, and the time."""
        section = manifest.update
        assert section is not None
        with self._lock:
            name = manifest.name
            self.sequences[name] = max(self.sequences.get(name, 0), section.sequence)
            self.floor = self.now()
            self._save()

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic.write_text(
            self.path,
            json.dumps({"sequences": self.sequences, "time_floor": self.floor}, sort_keys=True),
        )


def _iso(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))
