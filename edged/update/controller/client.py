"""The controller's side: build a signed update from two model versions, and push it to a node.

``build`` compares an old and a new model directory (each with manifest.json) and writes, per
variant, a patch, the whole file (when a patch would not be smaller, or there is no base), or
nothing (the file did not change); then the new manifest with its ``update`` section, signed.
``push`` sends it over edged.v1.Updates, resuming from what the node already holds.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from edged.errors import EdgedError, ManifestError
from edged.store.chunks import file_chunks
from edged.store.manifest import Manifest, Transfer, Variant, loads
from edged.update import patch as patch_mod
from edged.update import signing
from edged.update.protocol import update_id

CHUNK_BYTES = 1 << 20


def _read_manifest(directory: Path) -> Manifest:
    try:
        return loads((directory / "manifest.json").read_bytes())
    except FileNotFoundError:
        raise ManifestError(f"{directory}: no manifest.json") from None


def _base_for(variant: Variant, base: Manifest) -> Variant | None:
    same_id = [v for v in base.variants if v.id == variant.id and v.format == variant.format]
    same_format = [v for v in base.variants if v.format == variant.format]
    candidates = same_id or same_format
    return candidates[0] if candidates else None


@dataclasses.dataclass(frozen=True)
class Freshness:
    """What a built update says of its own freshness (edged/update/node/freshness.py): its
    sequence (default: the build's time in milliseconds, which moves forward on one
    controller), how long it stays valid, and the devices or groups it is meant for."""

    sequence: int | None = None
    valid_seconds: float = 7 * 86400.0
    devices: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()

    def fields(self) -> dict[str, Any]:
        now = time.time()
        out: dict[str, Any] = {
            "sequence": self.sequence if self.sequence is not None else int(now * 1000),
            "expires": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now + self.valid_seconds)),
        }
        if self.devices or self.groups:
            out["targets"] = {"devices": list(self.devices), "groups": list(self.groups)}
        return out


def build_whole(
    target_dir: Path,
    out: Path,
    key: Path,
    *,
    activate: str = "manual",
    freshness: Freshness = Freshness(),
) -> Manifest:
    """Write a signed update with no base: every variant file travels whole (for a node that
    holds none of the versions a patch was made from). Files are not copied: the sender reads
    them from ``target_dir``."""
    target = _read_manifest(target_dir)
    out.mkdir(parents=True, exist_ok=True)
    raw = dict(target.raw)
    raw["update"] = {
        "activate": activate,
        "variants": {
            v.id: {"method": "full", "sha256": v.sha256, "size": v.size} for v in target.variants
        },
        **freshness.fields(),
    }
    manifest_path = out / "manifest.json"
    manifest_path.write_text(json.dumps(raw, indent=2, sort_keys=True) + "\n")
    signing.sign_file(manifest_path, key)
    return loads(manifest_path.read_bytes())


def build(
    base_dir: Path,
    target_dir: Path,
    out: Path,
    key: Path,
    *,
    activate: str = "manual",
    level: int = patch_mod.DEFAULT_LEVEL,
    progress: Callable[[str, int], Callable[[int], None] | None] | None = None,
    freshness: Freshness = Freshness(),
) -> Manifest:
    """Write ``out/manifest.json``, its signature and the files to send; returns the manifest."""
    base, target = _read_manifest(base_dir), _read_manifest(target_dir)
    if base.name != target.name:
        raise ManifestError(f"name: base is {base.name!r}, target is {target.name!r}")
    out.mkdir(parents=True, exist_ok=True)
    transfers: dict[str, dict[str, Any]] = {}
    for variant in target.variants:
        source = target_dir / variant.file
        match = _base_for(variant, base)
        if any(v.sha256 == variant.sha256 for v in base.variants):
            transfers[variant.id] = {"method": "reuse"}
            continue
        if match is not None:
            patch_path = out / f"{variant.id}.patch"
            bar = progress(f"diff {variant.id}", variant.size) if progress else None
            header = patch_mod.create(
                base_dir / match.file, source, patch_path, level=level, progress=bar
            )
            size = patch_path.stat().st_size
            if size < variant.size:
                digest, _ = patch_mod.sha256_file(patch_path)
                transfers[variant.id] = {
                    "method": "patch",
                    "base_sha256": header.base_sha256,
                    "sha256": digest,
                    "size": size,
                }
                continue
            patch_path.unlink()
        shutil.copyfile(source, out / f"{variant.id}.full")
        transfers[variant.id] = {"method": "full", "sha256": variant.sha256, "size": variant.size}
    raw = dict(target.raw)
    raw["update"] = {
        "base_version": base.version,
        "activate": activate,
        "variants": transfers,
        **freshness.fields(),
    }
    manifest_path = out / "manifest.json"
    manifest_path.write_text(json.dumps(raw, indent=2, sort_keys=True) + "\n")
    signing.sign_file(manifest_path, key)
    return loads(manifest_path.read_bytes())


@dataclasses.dataclass(frozen=True)
class PushFile:
    variant: str
    path: Path
    transfer: Transfer


def files_to_push(manifest_path: Path, extra: Sequence[Path] = ()) -> list[PushFile]:
    """The file behind each transfer: one of ``extra`` with the right digest, else the file
    ``build`` wrote beside the manifest (<variant>.patch or <variant>.full)."""
    manifest = loads(manifest_path.read_bytes())
    if manifest.update is None:
        raise ManifestError(f"{manifest_path}: no 'update' section (build it with edged update)")
    by_digest = {patch_mod.sha256_file(p)[0]: p for p in extra}
    files = []
    for vid, transfer in sorted(manifest.update.transfers.items()):
        if transfer.method == "reuse":
            continue
        suffix = "patch" if transfer.method == "patch" else "full"
        path = by_digest.get(transfer.sha256, manifest_path.parent / f"{vid}.{suffix}")
        if not path.is_file():
            raise EdgedError(f"variant {vid}: no {transfer.method} file given or at {path}")
        files.append(PushFile(vid, path, transfer))
    return files


def chunks_of(
    files: list[PushFile], held: dict[str, int], sent: Callable[[int], None] | None
) -> Iterator[Any]:
    from edged.api import updates_pb2 as pb

    for f in files:
        for offset, chunk in file_chunks(f.path, CHUNK_BYTES, held.get(f.variant, 0)):
            yield pb.PushRequest(chunk=pb.PushChunk(variant=f.variant, offset=offset, data=chunk))
            if sent:
                sent(len(chunk))


def push(
    channel: Any,
    manifest_path: Path,
    files: list[PushFile],
    *,
    retries: int = 5,
    timeout: float = 3600.0,
    progress: Callable[[int, int], Callable[[int], None] | None] | None = None,
    roots: Sequence[bytes] = (),
) -> Any:
    """Push (resuming from Status) until the node has the version; returns the PushResponse.
    ``roots``: newer root documents the node moves to first (edged/update/root.py)."""
    import grpc

    from edged.api import updates_pb2 as pb
    from edged.api import updates_pb2_grpc as pb_grpc

    manifest = manifest_path.read_bytes()
    signature_path = manifest_path.with_name(manifest_path.name + ".sig")
    signature = signature_path.read_bytes() if signature_path.is_file() else b""
    uid = update_id(manifest)
    stub = pb_grpc.UpdatesStub(channel)
    total = sum(f.transfer.size for f in files)
    header = pb.PushRequest(
        header=pb.PushHeader(manifest=manifest, signature=signature, roots=list(roots))
    )
    retriable = {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
    }
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(min(30.0, 0.5 * 2**attempt))
        try:
            status = stub.Status(pb.UpdateStatusRequest(update_id=uid), timeout=30)
            held = {f.variant: f.held for f in status.files}
            bar = progress(total, sum(held.values())) if progress else None
            chunks = chunks_of(files, held, bar)
            response = stub.Push(itertools.chain([header], chunks), timeout=timeout)
            if response.state != "receiving":
                return response
        except grpc.RpcError as e:
            if e.code() not in retriable or attempt == retries:
                raise
    raise EdgedError(f"update {uid}: still incomplete after {retries} retries")
