"""The root of trust (edged/update/root.py): thresholds, rotation by the old keys and the new
together, versions one at a time, expiry, and which update keys a node trusts after."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edged.update import root, signing
from edged.update.root import RootError, RootOfTrust

NOW = 2_000_000_000.0


def keys(tmp_path: Path, *names: str) -> dict[str, Path]:
    out = {}
    for name in names:
        signing.keygen(tmp_path / f"{name}.key")
        out[name] = tmp_path / f"{name}.key"
    return out


def pub(path: Path) -> object:
    return signing.load_public(path.with_name(path.name + ".pub"))


def document(
    k: dict[str, Path], version: int, roots: list[str], threshold: int, update: str, expires: str
) -> bytes:
    return root.new(
        version,
        expires,
        [pub(k[n]) for n in roots],
        threshold,
        [pub(k[update])],  # type: ignore[misc]
    )


def signed(data: bytes, k: dict[str, Path], *by: str) -> bytes:
    for name in by:
        data = root.sign(data, signing.load_private(k[name]))
    return data


def manifest_signed_by(k: dict[str, Path], name: str) -> tuple[bytes, bytes]:
    manifest = b'{"name": "m"}'
    return manifest, signing.sign(manifest, signing.load_private(k[name]))


def test_rotation_needs_the_old_threshold_and_the_new(tmp_path: Path) -> None:
    k = keys(tmp_path, "r1", "r2", "r3", "r4", "ops", "ops2")
    v1 = signed(document(k, 1, ["r1", "r2"], 2, "ops", "2040-01-01T00:00:00Z"), k, "r1", "r2")
    (tmp_path / "root.json").write_bytes(v1)
    state = tmp_path / "state"
    state.mkdir()
    trust = RootOfTrust(state, tmp_path / "root.json", lambda: NOW)
    manifest, by_ops = manifest_signed_by(k, "ops")
    trust.update_keys().verify(manifest, by_ops)

    v2 = document(k, 2, ["r3", "r4"], 2, "ops2", "2040-01-01T00:00:00Z")
    for by, why in (
        (("r3", "r4"), "current root's keys"),  # the new keys alone cannot move trust
        (("r1", "r2"), "its own root keys"),  # nor the old ones alone
        (("r1", "r3", "r4"), "current root's keys"),  # one old signature of two needed
    ):
        with pytest.raises(RootError) as err:
            trust.rotate([signed(v2, k, *by)])
        assert why in err.value.message
        assert trust.current is not None and trust.current.version == 1  # nothing changed
    trust.rotate([signed(v2, k, "r1", "r2", "r3", "r4")])
    assert trust.current is not None and trust.current.version == 2
    with pytest.raises(signing.SignatureError):  # the old update key is no longer trusted
        trust.update_keys().verify(manifest, by_ops)
    manifest, by_ops2 = manifest_signed_by(k, "ops2")
    trust.update_keys().verify(manifest, by_ops2)
    # Persisted: a restart keeps version 2, the provisioned version 1 does not undo it.
    again = RootOfTrust(state, tmp_path / "root.json", lambda: NOW)
    assert again.current is not None and again.current.version == 2


def test_versions_move_one_at_a_time_and_expire(tmp_path: Path) -> None:
    k = keys(tmp_path, "r1", "ops")
    v1 = signed(document(k, 1, ["r1"], 1, "ops", "2040-01-01T00:00:00Z"), k, "r1")
    (tmp_path / "root.json").write_bytes(v1)
    clock = [NOW]
    (tmp_path / "state").mkdir()
    trust = RootOfTrust(tmp_path / "state", tmp_path / "root.json", lambda: clock[0])
    v3 = signed(document(k, 3, ["r1"], 1, "ops", "2040-01-01T00:00:00Z"), k, "r1")
    with pytest.raises(RootError) as err:
        trust.rotate([v3])
    assert "only 2 may follow" in err.value.message
    stale = signed(document(k, 2, ["r1"], 1, "ops", "2030-01-01T00:00:00Z"), k, "r1")
    with pytest.raises(RootError) as err:
        trust.rotate([stale])
    assert "expired" in err.value.message
    v2 = signed(document(k, 2, ["r1"], 1, "ops", "2040-01-01T00:00:00Z"), k, "r1")
    trust.rotate([v2, v3])  # a chain, oldest first
    assert trust.current is not None and trust.current.version == 3
    clock[0] = 2_300_000_000.0  # past 2040: an expired root trusts no update key
    assert trust.update_keys().keys == {}


def test_malformed_and_underpowered_roots_are_refused(tmp_path: Path) -> None:
    k = keys(tmp_path, "r1", "r2", "ops")
    half = signed(document(k, 1, ["r1", "r2"], 2, "ops", "2040-01-01T00:00:00Z"), k, "r1")
    (tmp_path / "root.json").write_bytes(half)
    (tmp_path / "state").mkdir()
    with pytest.raises(RootError) as err:
        RootOfTrust(tmp_path / "state", tmp_path / "root.json", lambda: NOW)
    assert "threshold" in err.value.message
    for bad in (
        b"{}",
        b"not json",
        json.dumps({"signed": {"type": "x"}, "signatures": []}).encode(),
    ):
        with pytest.raises(RootError):
            root.parse(bad)
