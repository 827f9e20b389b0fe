"""Ed25519 signatures over update manifests: keygen, sign, and verification against trusted keys.

A signature is detached (``manifest.json.sig``, JSON): it covers the manifest's exact bytes,
and since the manifest carries the sha256 of every patch and target file, it covers their
contents too. Keys are named by an id (the first 16 hex digits of the sha256 of the raw public
key) so a node with several trusted keys knows which one to try.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from edged.errors import EdgedError, ErrorCode, RejectedError
from edged.store import atomic

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
        Ed25519PublicKey,
    )

# cryptography is imported where a key is read or made, not with this module: a daemon that
# trusts no key yet (an empty device) does not carry its ~7 MB (bench/idle_memory.py).

ALGORITHM = "ed25519"
MAX_SIGNATURE_BYTES = 4096


class SignatureError(RejectedError):
    """A manifest whose signature is missing, malformed, by an unknown key, or wrong."""

    code = ErrorCode.UNAUTHENTICATED


def key_id(public: Ed25519PublicKey) -> str:
    from cryptography.hazmat.primitives import serialization

    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def keygen(path: Path) -> tuple[Path, str]:
    """Write a private key to ``path`` (mode 0600) and its public key to ``path.pub``."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    private = Ed25519PrivateKey.generate()
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public_path = path.with_name(path.name + ".pub")
    if path.exists() or public_path.exists():
        raise EdgedError(f"{path}: a key already exists there; not overwriting it")
    atomic.write_bytes(path, pem, mode=0o600)
    atomic.write_bytes(
        public_path,
        private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
    )
    return public_path, key_id(private.public_key())


def load_private(path: Path) -> Ed25519PrivateKey:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as e:
        raise EdgedError(f"{path}: cannot read a private key ({e})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise EdgedError(f"{path}: not an Ed25519 private key")
    return key


def load_public(path: Path) -> Ed25519PublicKey:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except (OSError, ValueError) as e:
        raise EdgedError(f"{path}: cannot read a public key ({e})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise EdgedError(f"{path}: not an Ed25519 public key")
    return key


def sign(manifest: bytes, private: Ed25519PrivateKey) -> bytes:
    """The detached signature file's content for ``manifest``."""
    document = {
        "algorithm": ALGORITHM,
        "key_id": key_id(private.public_key()),
        "signature": base64.b64encode(private.sign(manifest)).decode(),
    }
    return (json.dumps(document, indent=1) + "\n").encode()


def sign_file(manifest: Path, key: Path) -> Path:
    out = manifest.with_name(manifest.name + ".sig")
    atomic.write_bytes(out, sign(manifest.read_bytes(), load_private(key)))
    return out


class TrustedKeys:
    """The public keys a node accepts updates from."""

    def __init__(self, keys: Iterable[Ed25519PublicKey] = ()) -> None:
        self.keys = {key_id(k): k for k in keys}

    @classmethod
    def load(cls, paths: Iterable[Path]) -> TrustedKeys:
        """Each path is a ``.pub`` file or a directory of them; a directory that does not exist
        holds no keys (a missing key file is an error)."""
        keys: list[Ed25519PublicKey] = []
        for path in paths:
            if not path.exists() and path.suffix != ".pub":
                continue
            files = sorted(path.glob("*.pub")) if path.is_dir() else [path]
            keys.extend(load_public(p) for p in files)
        return cls(keys)

    def verify(self, manifest: bytes, signature: bytes | None) -> str:
        """Return the id of the trusted key that signed ``manifest``; raise SignatureError."""
        if not signature:
            raise SignatureError("the update manifest is not signed (no signature)", "unsigned")
        if len(signature) > MAX_SIGNATURE_BYTES:
            raise SignatureError("the signature document is too large", "bad_signature")
        try:
            document = json.loads(signature)
            algorithm, kid = document["algorithm"], document["key_id"]
            raw = base64.b64decode(document["signature"], validate=True)
        except (ValueError, KeyError, TypeError, binascii.Error):
            raise SignatureError("the signature document is malformed", "bad_signature") from None
        if algorithm != ALGORITHM:
            raise SignatureError(
                f"signature algorithm {algorithm!r} is not ed25519", "bad_signature"
            )
        key = self.keys.get(kid) if isinstance(kid, str) else None
        if key is None:
            raise SignatureError(
                f"the manifest is signed by key {kid!r}, which is not in updates.trusted_keys",
                "untrusted_key",
            )
        from cryptography.exceptions import InvalidSignature

        try:
            key.verify(raw, manifest)
        except InvalidSignature:
            raise SignatureError(
                f"the signature by key {kid} does not match the manifest (altered after signing?)",
                "bad_signature",
            ) from None
        return str(kid)
