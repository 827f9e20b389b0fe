"""What the controller and the node agree on without asking each other: how an update is named."""

from __future__ import annotations

import hashlib

from edged.errors import RejectedError

ID_HEX = 32


def update_id(manifest: bytes) -> str:
    """The first 32 hex digits of sha256(signed manifest bytes)."""
    return hashlib.sha256(manifest).hexdigest()[:ID_HEX]


def check_id(value: str) -> str:
    if len(value) != ID_HEX or any(c not in "0123456789abcdef" for c in value):
        raise RejectedError(
            f"update id {value!r}: expected {ID_HEX} lowercase hex digits", "bad_id"
        )
    return value
