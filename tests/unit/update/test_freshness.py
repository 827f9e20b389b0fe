"""Update freshness (edged/update/node/freshness.py): replays, expiry against a clock that can
be wound back, targeting, and what survives a restart."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from edged.store.manifest import Manifest, UpdateSection
from edged.update.node.freshness import Freshness, StaleUpdateError

NOW = 2_000_000_000.0


def manifest(
    name: str = "m", sequence: int = 10, expires: float = NOW + 3600, **targets: Any
) -> Any:
    section = UpdateSection(
        "1", "manual", {}, sequence, expires, tuple(targets.get("devices", ())),
        tuple(targets.get("groups", ())),
    )  # fmt: skip

    class Stub:
        pass

    stub = Stub()
    stub.name, stub.version, stub.update = name, "2", section  # type: ignore[attr-defined]
    return stub


def refused(fresh: Freshness, m: Manifest) -> str:
    with pytest.raises(StaleUpdateError) as err:
        fresh.check(m)
    return err.value.reason


def test_a_sequence_only_moves_forward_per_model(tmp_path: Path) -> None:
    fresh = Freshness(tmp_path / "f.json", "d1", clock=lambda: NOW)
    fresh.check(manifest(sequence=10))
    fresh.applied(manifest(sequence=10))
    assert refused(fresh, manifest(sequence=10)) == "replayed"  # the same update again
    assert refused(fresh, manifest(sequence=9)) == "replayed"  # an older one
    fresh.check(manifest(sequence=11))
    fresh.check(manifest(name="other", sequence=1))  # per model
    again = Freshness(tmp_path / "f.json", "d1", clock=lambda: NOW)  # after a restart
    assert refused(again, manifest(sequence=10)) == "replayed"


def test_expiry_is_checked_against_a_clock_that_cannot_go_back(tmp_path: Path) -> None:
    clock = [NOW]
    fresh = Freshness(tmp_path / "f.json", "d1", clock=lambda: clock[0])
    assert refused(fresh, manifest(expires=NOW - 1)) == "expired"
    fresh.applied(manifest(sequence=1, expires=NOW + 10))
    clock[0] = NOW - 86400  # the clock wound back a day (a dead RTC battery, or an attacker)
    restarted = Freshness(tmp_path / "f.json", "d1", clock=lambda: clock[0])
    assert restarted.now() == NOW
    assert refused(restarted, manifest(sequence=2, expires=NOW - 60)) == "expired"


def test_an_update_meant_for_other_devices_is_refused(tmp_path: Path) -> None:
    fresh = Freshness(tmp_path / "f.json", "d1", groups=("lab",), clock=lambda: NOW)
    assert refused(fresh, manifest(devices=["d2"])) == "mistargeted"
    assert refused(fresh, manifest(groups=["field"])) == "mistargeted"
    fresh.check(manifest(devices=["d2", "d1"]))
    fresh.check(manifest(groups=["field", "lab"]))
    fresh.check(manifest())  # no targets: every node
