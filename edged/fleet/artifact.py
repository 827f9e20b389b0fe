"""A model version as an OCI artifact (docs/fleet.md): what the controller publishes, what a node
reads. Pure: no I/O.

One OCI image manifest per version, in the repository ``<prefix>/<model>``, tagged ``v<version>``
(and with channel tags such as ``stable``)::

    config   application/vnd.edged.model.manifest.v1+json   the version's manifest.json
    layers   application/vnd.edged.update.v1+json           a signed update manifest, one per base
                 annotations: org.edged.base-version ("" for the whole-file update),
                              org.edged.signature (the detached signature document, base64)
             application/vnd.edged.variant.v1               each variant file, whole
             application/vnd.edged.patch.v1                 each patch, from each of the last K
                                                            published versions
             application/vnd.edged.root.v1+json             root documents newer than a node may
                                                            hold, oldest first (optional)

Blobs are addressed by digest: a file unchanged between versions, or a patch shared by two
updates, is stored and downloaded once. A node picks the update whose base it holds (the one it
serves first), verifies its signature with its trusted keys, and fetches the blob each of its
transfers names (transfer.sha256 is the blob's digest). Root documents travel as they do in a
push (PushHeader.roots): a node with [updates] root applies the ones newer than its own, each
checked against the one before, before it verifies the update with the keys they name.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
from collections.abc import Iterable
from typing import Any

from edged.errors import EdgedError, ErrorCode

ARTIFACT_TYPE = "application/vnd.edged.model.v1"
MODEL_MANIFEST = "application/vnd.edged.model.manifest.v1+json"
UPDATE = "application/vnd.edged.update.v1+json"
VARIANT = "application/vnd.edged.variant.v1"
PATCH = "application/vnd.edged.patch.v1"
ROOT = "application/vnd.edged.root.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"

BASE = "org.edged.base-version"
SIGNATURE = "org.edged.signature"
VARIANT_ID = "org.edged.variant"
MODEL = "org.edged.model"
VERSION = "org.edged.version"
TITLE = "org.opencontainers.image.title"

MAX_UPDATE_MANIFEST_BYTES = 1 << 20
MAX_ROOT_BYTES = 64 << 10
MAX_ROOTS = 16


class ArtifactError(EdgedError):
    """An artifact manifest that is not one edged published."""

    def __init__(self, message: str, reason: str = "bad_artifact") -> None:
        super().__init__(message, ErrorCode.FAILED_PRECONDITION)
        self.reason = reason


def version_tag(version: str) -> str:
    return f"v{version}"


def descriptor(
    media_type: str, digest: str, size: int, annotations: dict[str, str] | None = None
) -> dict[str, Any]:
    d: dict[str, Any] = {"mediaType": media_type, "digest": digest, "size": size}
    if annotations:
        d["annotations"] = annotations
    return d


def manifest_bytes(
    model: str, version: str, config: dict[str, Any], layers: Iterable[dict[str, Any]]
) -> bytes:
    """The OCI image manifest of one published version (canonical JSON: the same inputs give
    the same digest, so publishing twice is a no-op)."""
    document = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": ARTIFACT_TYPE,
        "config": config,
        "layers": list(layers),
        "annotations": {MODEL: model, VERSION: version},
    }
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


@dataclasses.dataclass(frozen=True)
class UpdateRef:
    """One signed update inside an artifact: its base version ("" = whole files)."""

    base_version: str
    digest: str
    size: int
    signature: bytes


@dataclasses.dataclass(frozen=True)
class Artifact:
    model: str
    version: str
    config_digest: str
    updates: tuple[UpdateRef, ...]
    blobs: dict[str, int]  # digest -> size of every variant and patch layer
    variants: dict[str, str]  # variant id -> digest of its whole file
    roots: tuple[tuple[str, int], ...] = ()  # (digest, size) of each root document, oldest first

    def update_for(self, held: Iterable[str]) -> UpdateRef | None:
        """The update to fetch for a node holding ``held`` versions (in order of preference: the
        one it serves first): a patch from the first one with an update, else the whole files."""
        by_base = {u.base_version: u for u in self.updates}
        for version in held:
            if version in by_base and version:
                return by_base[version]
        return by_base.get("")


def parse(data: bytes) -> Artifact:
    """Read an artifact manifest; an error names what is missing or malformed."""
    try:
        document = json.loads(data)
    except ValueError as e:
        raise ArtifactError(f"artifact manifest: not JSON ({e})") from None
    if not isinstance(document, dict) or document.get("artifactType") != ARTIFACT_TYPE:
        raise ArtifactError(f"artifact manifest: artifactType is not {ARTIFACT_TYPE}")
    notes = document.get("annotations") or {}
    model, version = notes.get(MODEL), notes.get(VERSION)
    config = document.get("config") or {}
    if not isinstance(model, str) or not isinstance(version, str):
        raise ArtifactError(f"artifact manifest: no {MODEL} / {VERSION} annotations")
    updates: list[UpdateRef] = []
    blobs: dict[str, int] = {}
    variants: dict[str, str] = {}
    roots: list[tuple[str, int]] = []
    for layer in document.get("layers") or []:
        try:
            media, digest, size = layer["mediaType"], layer["digest"], int(layer["size"])
        except (KeyError, TypeError, ValueError):
            raise ArtifactError(
                "artifact manifest: a layer without mediaType/digest/size"
            ) from None
        notes = layer.get("annotations") or {}
        if media == UPDATE:
            try:
                signature = base64.b64decode(notes.get(SIGNATURE, ""), validate=True)
            except (binascii.Error, ValueError):
                raise ArtifactError(
                    "artifact manifest: an update's signature is not base64"
                ) from None
            if size > MAX_UPDATE_MANIFEST_BYTES:
                raise ArtifactError("artifact manifest: an update manifest is too large")
            updates.append(UpdateRef(str(notes.get(BASE, "")), digest, size, signature))
        elif media == ROOT:
            if size > MAX_ROOT_BYTES or len(roots) >= MAX_ROOTS:
                raise ArtifactError(
                    f"artifact manifest: root documents are limited to {MAX_ROOTS} of "
                    f"{MAX_ROOT_BYTES} bytes"
                )
            roots.append((digest, size))
        elif media in (VARIANT, PATCH):
            blobs[digest] = size
            if media == VARIANT and isinstance(notes.get(VARIANT_ID), str):
                variants[notes[VARIANT_ID]] = digest
    if not updates:
        raise ArtifactError("artifact manifest: no signed update in it")
    return Artifact(
        model,
        version,
        str(config.get("digest", "")),
        tuple(updates),
        blobs,
        variants,
        tuple(roots),
    )
