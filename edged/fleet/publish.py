"""The controller's side of the registry: publish a model version as an OCI artifact.

The patches come from the registry itself: the last ``keep`` published versions of the model are
fetched (their manifest and whole files, which every artifact carries) into a work directory and
diffed against the new version, so a controller needs nothing but the new version's directory,
the signing key and the registry. Blobs the registry already holds are not uploaded again, so a
publish interrupted half-way is finished by running it again.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import logging
import time
from pathlib import Path

from edged.errors import ManifestError
from edged.fleet import artifact as art
from edged.fleet.oci import Registry, RegistryError
from edged.names import version_key
from edged.store.manifest import Manifest, loads
from edged.update.controller import client

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Published:
    repository: str
    version: str
    digest: str
    tags: tuple[str, ...]
    bases: tuple[str, ...]  # versions a patch was made from
    patch_bytes: dict[str, int]  # base version -> bytes a node at it downloads
    whole_bytes: int  # bytes a node at none of them downloads


def repository_of(prefix: str, model: str) -> str:
    return f"{prefix.strip('/')}/{model}" if prefix else model


def _read(directory: Path) -> Manifest:
    try:
        return loads((directory / "manifest.json").read_bytes())
    except FileNotFoundError:
        raise ManifestError(f"{directory}: no manifest.json") from None


async def published_versions(registry: Registry, repository: str) -> list[str]:
    """The versions with a ``v<version>`` tag, oldest first."""
    tags = await registry.tags(repository)
    return sorted((t[1:] for t in tags if t.startswith("v") and len(t) > 1), key=version_key)


async def fetch_version(registry: Registry, repository: str, version: str, into: Path) -> Path:
    """A published version as a model directory (manifest.json and its files), from the
    registry; every blob checked against its digest."""
    fetched = await registry.manifest(repository, art.version_tag(version))
    artifact = art.parse(fetched.data)
    config = await registry.blob_bytes(repository, artifact.config_digest, 1 << 20)
    manifest = loads(config)
    into.mkdir(parents=True, exist_ok=True)
    for variant in manifest.variants:
        path = into / variant.file
        path.parent.mkdir(parents=True, exist_ok=True)
        digest = "sha256:" + variant.sha256
        h = hashlib.sha256()
        with path.open("wb") as out:
            async for chunk in registry.blob(repository, digest):
                h.update(chunk)
                out.write(chunk)
        if "sha256:" + h.hexdigest() != digest:
            raise RegistryError(
                f"{repository}: blob {digest[:19]} does not match", "digest_mismatch"
            )
    (into / "manifest.json").write_bytes(config)
    return into


async def publish(
    registry: Registry,
    prefix: str,
    model_dir: Path,
    key: Path,
    work: Path,
    *,
    channels: tuple[str, ...] = (),
    keep: int = 3,
    roots: tuple[Path, ...] = (),
) -> Published:
    target = _read(model_dir)
    repository = repository_of(prefix, target.name)
    older = [
        v
        for v in await published_versions(registry, repository)
        if version_key(v) < version_key(target.version)
    ]
    bases = older[-keep:] if keep > 0 else []
    layers: dict[str, dict[str, object]] = {}  # by digest: each blob once
    updates: list[dict[str, object]] = []
    patch_bytes: dict[str, int] = {}

    async def add_update(base: str, out: Path) -> int:
        manifest_path = out / "manifest.json"
        data = manifest_path.read_bytes()
        signature = (out / "manifest.json.sig").read_bytes()
        digest = await registry.push_blob(repository, data=data)
        updates.append(
            art.descriptor(
                art.UPDATE,
                digest,
                len(data),
                {art.BASE: base, art.SIGNATURE: base64.b64encode(signature).decode()},
            )
        )
        section = loads(data).update
        assert section is not None
        for vid, transfer in section.transfers.items():
            if transfer.method != "patch":
                continue
            patch = out / f"{vid}.patch"
            patch_digest = await registry.push_blob(repository, path=patch)
            layers.setdefault(
                patch_digest,
                art.descriptor(
                    art.PATCH, patch_digest, transfer.size, {art.VARIANT_ID: vid, art.BASE: base}
                ),
            )
        return section.bytes_to_send

    # The version's own files, whole: what a node at no base fetches, and a later version's base.
    for variant in target.variants:
        digest = await registry.push_blob(repository, path=model_dir / variant.file)
        layers.setdefault(
            digest,
            art.descriptor(
                art.VARIANT,
                digest,
                variant.size,
                {art.VARIANT_ID: variant.id, art.TITLE: variant.file},
            ),
        )
    whole = work / "whole"
    # One sequence for the version, whichever of its updates a node pulls.
    freshness = client.Freshness(sequence=int(time.time() * 1000))
    client.build_whole(model_dir, whole, key, freshness=freshness)
    whole_bytes = await add_update("", whole)
    for base in bases:
        base_dir = await fetch_version(registry, repository, base, work / "bases" / base)
        out = work / "updates" / base
        client.build(base_dir, model_dir, out, key, freshness=freshness)
        patch_bytes[base] = await add_update(base, out)
        log.info(
            "%s: update from version %s: %d bytes to fetch", repository, base, patch_bytes[base]
        )
    # Root documents (edged root sign), oldest first: a node that pulls and holds an older root
    # moves to them before it checks the update's signature.
    root_layers = []
    for path in roots:
        data = path.read_bytes()
        digest = await registry.push_blob(repository, data=data)
        root_layers.append(art.descriptor(art.ROOT, digest, len(data), {art.TITLE: path.name}))
    config_data = (model_dir / "manifest.json").read_bytes()
    config_digest = await registry.push_blob(repository, data=config_data)
    document = art.manifest_bytes(
        target.name,
        target.version,
        art.descriptor(art.MODEL_MANIFEST, config_digest, len(config_data)),
        [*updates, *layers.values(), *root_layers],
    )
    tags = (art.version_tag(target.version), *channels)
    for tag in tags:
        digest = await registry.put_manifest(repository, tag, document)
    log.info(
        "published %s version %s as %s (%s)", repository, target.version, digest, json.dumps(tags)
    )
    return Published(
        repository, target.version, digest, tags, tuple(bases), patch_bytes, whole_bytes
    )


async def tag(registry: Registry, repository: str, version: str, channel: str) -> str:
    """Point ``channel`` at a published version."""
    fetched = await registry.manifest(repository, art.version_tag(version))
    return await registry.put_manifest(repository, channel, fetched.data)
