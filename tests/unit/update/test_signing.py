"""Ed25519 signatures on update manifests: accepted only from trusted keys, on the exact bytes."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from edged.errors import EdgedError
from edged.update import signing


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, Path]:
    signing.keygen(tmp_path / "ops.key")
    signing.keygen(tmp_path / "other.key")
    trusted = tmp_path / "trusted.d"
    trusted.mkdir()
    (trusted / "ops.pub").write_bytes((tmp_path / "ops.key.pub").read_bytes())
    return {"ops": tmp_path / "ops.key", "other": tmp_path / "other.key", "trusted": trusted}


def test_keygen_protects_the_private_key_and_never_overwrites(keys: dict[str, Path]) -> None:
    assert stat.S_IMODE(os.stat(keys["ops"]).st_mode) == 0o600
    with pytest.raises(EdgedError, match="already exists"):
        signing.keygen(keys["ops"])


def test_signed_manifest_verifies_with_the_trusted_key(keys: dict[str, Path]) -> None:
    manifest = b'{"name": "m", "version": "2"}'
    signature = signing.sign(manifest, signing.load_private(keys["ops"]))
    trusted = signing.TrustedKeys.load([keys["trusted"]])
    kid = trusted.verify(manifest, signature)
    assert kid == json.loads(signature)["key_id"]


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("unsigned", "unsigned"),
        ("stranger", "untrusted_key"),
        ("altered", "bad_signature"),
        ("garbage", "bad_signature"),
        ("wrong-algorithm", "bad_signature"),
    ],
)
def test_bad_signatures_are_refused(keys: dict[str, Path], case: str, reason: str) -> None:
    manifest = b'{"name": "m", "version": "2"}'
    trusted = signing.TrustedKeys.load([keys["trusted"]])
    good = signing.sign(manifest, signing.load_private(keys["ops"]))
    signature, signed = good, manifest
    if case == "unsigned":
        signature = b""
    elif case == "stranger":
        signature = signing.sign(manifest, signing.load_private(keys["other"]))
    elif case == "altered":
        signed = manifest.replace(b'"2"', b'"3"')
    elif case == "garbage":
        signature = b"\\x00not json"
    else:
        document = json.loads(good)
        document["algorithm"] = "rsa"
        signature = json.dumps(document).encode()
    with pytest.raises(signing.SignatureError) as err:
        trusted.verify(signed, signature)
    assert err.value.reason == reason


def test_no_trusted_keys_refuses_everything(keys: dict[str, Path], tmp_path: Path) -> None:
    manifest = b"{}"
    signature = signing.sign(manifest, signing.load_private(keys["ops"]))
    nobody = signing.TrustedKeys.load([tmp_path / "missing.d"])
    with pytest.raises(signing.SignatureError, match=r"not in updates\.trusted_keys"):
        nobody.verify(manifest, signature)
    with pytest.raises(EdgedError, match="cannot read a public key"):
        signing.TrustedKeys.load([tmp_path / "missing.pub"])
