"""The root of trust for updates, after TUF's root role (docs/updates.md).

A root document names the root keys (with a threshold) and the update keys (with a
threshold) that may sign update manifests, has a version and an expiry, and is signed:

    {"signed": {"type": "edged-root", "version": 2, "expires": "2027-12-01T00:00:00Z",
                "keys": {"<key id>": "<PEM public key>", ...},
                "root": {"keyids": [...], "threshold": 2},
                "updates": {"keyids": [...], "threshold": 1}},
     "signatures": [{"key_id": "...", "signature": "<base64 ed25519>"}, ...]}

The signatures cover the canonical JSON of ``signed`` (sorted keys, no spaces). A node is
provisioned with one root (``[updates] root``), which must carry its own threshold of root
signatures. A newer root is accepted only as the next version, signed by a threshold of the
current root's keys *and* a threshold of its own (TUF's rotation rule: neither the old keys
alone nor the new ones alone can move trust), and unexpired. Update manifests are then trusted
when signed by the current root's update keys; an expired root trusts nothing until a newer one
arrives.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import datetime
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edged.errors import ErrorCode, RejectedError
from edged.store import atomic
from edged.update.signing import TrustedKeys, key_id

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
        Ed25519PublicKey,
    )

TYPE = "edged-root"
MAX_ROOT_BYTES = 64 * 1024


class RootError(RejectedError):
    code = ErrorCode.UNAUTHENTICATED


def canonical(signed: dict[str, Any]) -> bytes:
    return json.dumps(signed, sort_keys=True, separators=(",", ":")).encode()


@dataclasses.dataclass(frozen=True)
class Root:
    version: int
    expires: float
    keys: dict[str, Ed25519PublicKey]
    root_ids: frozenset[str]
    root_threshold: int
    update_ids: frozenset[str]
    update_threshold: int
    raw: bytes

    def update_keys(self) -> TrustedKeys:
        return TrustedKeys(self.keys[k] for k in sorted(self.update_ids))


def parse(data: bytes) -> tuple[Root, list[tuple[str, bytes]], bytes]:
    """(the root, its signatures as (key id, raw), the signed bytes); RootError naming the
    field for anything malformed."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    if len(data) > MAX_ROOT_BYTES:
        raise RootError(f"root document: larger than {MAX_ROOT_BYTES} bytes", "bad_root")
    try:
        document = json.loads(data)
        signed, signatures = document["signed"], document["signatures"]
        if signed["type"] != TYPE:
            raise RootError(f"root document: type is {signed['type']!r}, not {TYPE!r}", "bad_root")
        version, expires = signed["version"], signed["expires"]
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise RootError(f"root document: version {version!r} is not >= 1", "bad_root")
        when = datetime.datetime.fromisoformat(str(expires).replace("Z", "+00:00"))
        if when.tzinfo is None:
            raise RootError("root document: expires has no UTC offset", "bad_root")
        keys: dict[str, Ed25519PublicKey] = {}
        for kid, pem in signed["keys"].items():
            key = serialization.load_pem_public_key(str(pem).encode())
            if not isinstance(key, Ed25519PublicKey) or key_id(key) != kid:
                raise RootError(f"root document: key {kid!r} is not its Ed25519 key", "bad_root")
            keys[kid] = key
        roles = {}
        for role in ("root", "updates"):
            ids = frozenset(str(k) for k in signed[role]["keyids"])
            threshold = signed[role]["threshold"]
            if not ids <= set(keys):
                raise RootError(f"root document: {role} names keys it does not hold", "bad_root")
            if isinstance(threshold, bool) or not isinstance(threshold, int):
                raise RootError(f"root document: {role}.threshold is not a number", "bad_root")
            if not 1 <= threshold <= len(ids):
                raise RootError(
                    f"root document: {role}.threshold {threshold} with {len(ids)} keys",
                    "bad_root",
                )
            if role == "updates" and threshold != 1:
                raise RootError(
                    "root document: updates.threshold must be 1 (a manifest carries one "
                    "signature; the root role's threshold guards who may name update keys)",
                    "bad_root",
                )
            roles[role] = (ids, threshold)
        sigs = [
            (str(s["key_id"]), base64.b64decode(s["signature"], validate=True)) for s in signatures
        ]
    except RootError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError, binascii.Error) as e:
        raise RootError(f"root document: malformed ({e})", "bad_root") from None
    root = Root(
        version,
        when.timestamp(),
        keys,
        roles["root"][0],
        roles["root"][1],
        roles["updates"][0],
        roles["updates"][1],
        data,
    )
    return root, sigs, canonical(signed)


def _signers(
    keys: dict[str, Ed25519PublicKey],
    ids: Iterable[str],
    sigs: list[tuple[str, bytes]],
    body: bytes,
) -> set[str]:
    from cryptography.exceptions import InvalidSignature

    allowed = set(ids)
    good = set()
    for kid, raw in sigs:
        key = keys.get(kid)
        if key is None or kid not in allowed:
            continue
        try:
            key.verify(raw, body)
        except InvalidSignature:
            continue
        good.add(kid)
    return good


def verify(data: bytes, trusted: Root | None, now: float) -> Root:
    """The root in ``data`` if it may be trusted: self-signed to its threshold when it is the
    first (``trusted`` None), else the next version signed to both thresholds; unexpired."""
    root, sigs, body = parse(data)
    own = _signers(root.keys, root.root_ids, sigs, body)
    if len(own) < root.root_threshold:
        raise RootError(
            f"root version {root.version}: {len(own)} valid signatures by its own root keys, "
            f"its threshold is {root.root_threshold}",
            "root_threshold",
        )
    if trusted is not None:
        if root.version != trusted.version + 1:
            raise RootError(
                f"root version {root.version}: the node trusts version {trusted.version}, only "
                f"{trusted.version + 1} may follow it",
                "root_version",
            )
        old = _signers(trusted.keys, trusted.root_ids, sigs, body)
        if len(old) < trusted.root_threshold:
            raise RootError(
                f"root version {root.version}: {len(old)} valid signatures by the current root's "
                f"keys, its threshold is {trusted.root_threshold}",
                "root_threshold",
            )
    if root.expires <= now:
        raise RootError(f"root version {root.version}: expired", "root_expired")
    return root


# -- writing (the controller's `edged root`) ---------------------------------------------------


def new(
    version: int,
    expires: str,
    root_keys: Sequence[Ed25519PublicKey],
    root_threshold: int,
    update_keys: Sequence[Ed25519PublicKey],
    update_threshold: int = 1,
) -> bytes:
    from cryptography.hazmat.primitives import serialization

    def pem(key: Ed25519PublicKey) -> str:
        return key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode()

    keys = {key_id(k): pem(k) for k in (*root_keys, *update_keys)}
    signed = {
        "type": TYPE,
        "version": version,
        "expires": expires,
        "keys": keys,
        "root": {"keyids": sorted(key_id(k) for k in root_keys), "threshold": root_threshold},
        "updates": {
            "keyids": sorted(key_id(k) for k in update_keys),
            "threshold": update_threshold,
        },
    }
    return (json.dumps({"signed": signed, "signatures": []}, indent=1) + "\n").encode()


def sign(data: bytes, private: Ed25519PrivateKey) -> bytes:
    """``data`` with one more signature (a key signs once)."""
    document = json.loads(data)
    body = canonical(document["signed"])
    kid = key_id(private.public_key())
    document["signatures"] = [s for s in document["signatures"] if s["key_id"] != kid]
    document["signatures"].append(
        {"key_id": kid, "signature": base64.b64encode(private.sign(body)).decode()}
    )
    return (json.dumps(document, indent=1) + "\n").encode()


def sign_file(path: Path, key: Path) -> None:
    from edged.update.signing import load_private

    atomic.write_bytes(path, sign(path.read_bytes(), load_private(key)))


# -- the node's copy ---------------------------------------------------------------------------


class RootOfTrust:
    """The root a node trusts now, kept in ``state/root.json`` (crash-safe writes)."""

    def __init__(self, state: Path, provisioned: Path | None, clock: Any) -> None:
        self.path = state / "root.json"
        self.clock = clock
        self.current: Root | None = None
        if self.path.is_file():
            self.current = parse(self.path.read_bytes())[0]
        if provisioned is not None:
            try:
                data = provisioned.read_bytes()
            except OSError as e:
                raise RootError(
                    f"updates.root: cannot read {provisioned}: {e.strerror}", "bad_root"
                ) from None
            first, sigs, body = parse(data)
            if self.current is None or first.version > self.current.version:
                # The provisioned file must carry its own threshold; expiry is not checked for
                # it here (a device may be switched on long after it was made).
                if len(_signers(first.keys, first.root_ids, sigs, body)) < first.root_threshold:
                    raise RootError(
                        f"updates.root: {provisioned} lacks its threshold of root signatures",
                        "root_threshold",
                    )
                if self.current is None:
                    self._save(first)
                else:
                    self.rotate([data])

    def rotate(self, documents: Sequence[bytes]) -> None:
        """Move to each newer root in turn; RootError (nothing changed) when one is refused.
        Documents this node already trusts are skipped (a controller resends its chain)."""
        for data in documents:
            candidate = parse(data)[0]
            if self.current is not None and candidate.version <= self.current.version:
                continue
            self._save(verify(data, self.current, self.clock()))

    def _save(self, root: Root) -> None:
        atomic.write_bytes(self.path, root.raw)
        self.current = root

    def update_keys(self) -> TrustedKeys:
        """The keys update manifests must be signed by; none while the root is expired."""
        if self.current is None or self.current.expires <= self.clock():
            return TrustedKeys()
        return self.current.update_keys()
