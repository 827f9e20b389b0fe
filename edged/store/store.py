"""The model store: content-addressed blobs, one manifest per model version, an active pointer.

Layout under the store path::

    blobs/sha256/<hex>                 variant files, named by their digest (deduplicated)
    models/<name>/<version>/manifest.json
    models/<name>/<version>/state.json its lifecycle record (store/versions.py)
    models/<name>/ACTIVE               the committed version, which serves after any restart
    state/validation/<hex>.<fmt>.json  subprocess validation results per blob
    state/crashes.json                 variants that were loading or running when the daemon died
    tmp/                               staging; emptied at every start

Writes go blobs -> manifest -> record -> pointer, each atomic, so a crash at any point leaves at
worst an unreferenced blob, never a manifest that points at a missing file or a pointer to a
missing version. The CLI may write while the daemon runs: the daemon re-reads the store on SIGHUP
and RepositoryModelLoad. The first version of a model is committed at once (there is nothing to
evaluate it against); later ones are staged, and the daemon's lifecycle promotes them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import stat
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from edged.errors import ErrorCode, ManifestError, NotFoundError, StoreError
from edged.formats.onnx import external_locations as onnx_external_locations
from edged.names import check_name, check_version, version_key
from edged.store import atomic
from edged.store.manifest import Manifest, Variant, loads
from edged.store.space import is_out_of_space, out_of_space
from edged.store.versions import VersionRecord, VersionState

log = logging.getLogger(__name__)

_CHUNK = 1 << 20


class ModelStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.blobs = root / "blobs" / "sha256"
        self.models_dir = root / "models"
        self.state = root / "state"
        self.tmp = root / "tmp"
        for d in (self.blobs, self.models_dir, self.state / "validation", self.tmp):
            d.mkdir(parents=True, exist_ok=True)

    # -- start-up recovery ----------------------------------------------------------------------

    def recover(self) -> int:
        """Remove staging leftovers of interrupted writes; returns how many were removed."""
        removed = 0
        for entry in self.tmp.iterdir():
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed += 1
        for leftover in self.root.rglob(".*.tmp-*"):
            leftover.unlink(missing_ok=True)
            removed += 1
        if removed:
            log.info("store recovery removed %d staging leftovers", removed)
        return removed

    # -- reading --------------------------------------------------------------------------------

    def models(self) -> list[str]:
        names = []
        for entry in sorted(self.models_dir.iterdir()):
            with contextlib.suppress(ManifestError):
                if entry.is_dir() and self.versions(check_name(entry.name)):
                    names.append(entry.name)
        return names

    def versions(self, name: str) -> list[str]:
        model_dir = self.models_dir / name
        if not model_dir.is_dir():
            return []
        found = [p.name for p in model_dir.iterdir() if (p / "manifest.json").is_file()]
        return sorted(found, key=version_key)

    def manifest(self, name: str, version: str) -> Manifest:
        path = self.models_dir / name / version / "manifest.json"
        try:
            return loads(path.read_bytes())
        except FileNotFoundError:
            raise NotFoundError(f"model {name!r} has no version {version!r} in the store") from None

    def active(self, name: str) -> str | None:
        """The committed version that serves (after any restart)."""
        try:
            version = (self.models_dir / name / "ACTIVE").read_text().strip()
        except FileNotFoundError:
            # A store from before the pointer, or a first import cut short before it: the
            # newest version recorded as committed, else the newest version.
            versions = self.versions(name)
            for candidate in reversed(versions):
                state = self.models_dir / name / candidate / "state.json"
                with contextlib.suppress(OSError, ManifestError):
                    if VersionRecord.from_json(state.read_text()).state is VersionState.COMMITTED:
                        return candidate
            return versions[-1] if versions else None
        return version if (self.models_dir / name / version / "manifest.json").is_file() else None

    def set_active(self, name: str, version: str) -> None:
        check_name(name)
        check_version(version)
        if not (self.models_dir / name / version / "manifest.json").is_file():
            raise NotFoundError(f"model {name!r} has no version {version!r} in the store")
        atomic.write_text(self.models_dir / name / "ACTIVE", version + "\n")

    # -- lifecycle records ----------------------------------------------------------------------

    def record(self, name: str, version: str) -> VersionRecord:
        """The version's lifecycle record (derived for versions from before the lifecycle)."""
        path = self.models_dir / name / version / "state.json"
        try:
            return VersionRecord.from_json(path.read_text())
        except FileNotFoundError:
            pass
        active = self.active(name)
        if active is not None and version_key(version) > version_key(active):
            return VersionRecord(VersionState.STAGED)
        return VersionRecord(VersionState.COMMITTED)

    def put_record(self, name: str, version: str, record: VersionRecord) -> None:
        check_name(name)
        check_version(version)
        directory = self.models_dir / name / version
        if not (directory / "manifest.json").is_file():
            raise NotFoundError(f"model {name!r} has no version {version!r} in the store")
        atomic.write_text(directory / "state.json", record.to_json())

    def blob_path(self, digest: str) -> Path:
        return self.blobs / digest

    def variant_path(self, variant: Variant) -> Path:
        return self.blob_path(variant.sha256)

    # -- import ---------------------------------------------------------------------------------

    def import_dir(self, src: Path, *, activate: bool = True) -> Manifest:
        """Add the model version described by ``src/manifest.json``.

        Every file is hashed and checked before anything under the store's final names changes;
        a refused manifest leaves the store as it was.
        """
        src_root = src.resolve()
        try:
            manifest = loads((src_root / "manifest.json").read_bytes())
        except FileNotFoundError:
            raise ManifestError(f"{src}: no manifest.json in this directory") from None
        if self.has_version(manifest):
            log.info("%s version %s is already in the store", manifest.name, manifest.version)
            return manifest
        staged: list[tuple[Path, Variant]] = []
        try:
            for variant in manifest.variants:
                staged.append((self._stage_variant(src_root, variant), variant))
            for tmp, variant in staged:
                final = self.blob_path(variant.sha256)
                if final.exists():
                    tmp.unlink()
                else:
                    atomic.commit(tmp, final)
        finally:
            for tmp, _ in staged:
                tmp.unlink(missing_ok=True)
        try:
            self.add_version(manifest, activate=activate)
        except OSError as exc:
            if is_out_of_space(exc):
                raise out_of_space(
                    f"import of {manifest.name} version {manifest.version}", self.root
                ) from None
            raise
        log.info(
            "imported %s version %s (%d variants)",
            manifest.name,
            manifest.version,
            len(manifest.variants),
        )
        return manifest

    def add_version(self, manifest: Manifest, *, activate: bool) -> None:
        """Register a version whose blobs are all in the store (the last step of an import or
        an update): manifest, then its record. The first version of a model is committed and
        becomes ACTIVE; a later one is staged, its promotion requested when ``activate``."""
        for variant in manifest.variants:
            if not self.blob_path(variant.sha256).is_file():
                raise StoreError(
                    f"variants[{variant.id}]: blob {variant.sha256} is not in the store"
                )
        parent = manifest.lineage.parent
        if parent is not None and parent not in self.versions(manifest.name):
            raise ManifestError(
                f"lineage.parent: model {manifest.name!r} has no version {parent!r} in the store "
                "(import the parent first, or set parent to null)"
            )
        first = self.active(manifest.name) is None
        path = self.models_dir / manifest.name / manifest.version / "manifest.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic.write_text(path, manifest.to_json())
        atomic.fsync_dir(path.parent.parent)
        if first:
            self.put_record(manifest.name, manifest.version, VersionRecord(VersionState.COMMITTED))
            self.set_active(manifest.name, manifest.version)
        else:
            record = VersionRecord(VersionState.STAGED).moved(
                VersionState.STAGED,
                "promotion requested" if activate else "staged: `edged activate` promotes it",
                requested=activate,
            )
            self.put_record(manifest.name, manifest.version, record)

    def has_version(self, manifest: Manifest) -> bool:
        """True when this exact manifest is already registered (versions are immutable)."""
        path = self.models_dir / manifest.name / manifest.version / "manifest.json"
        if not path.is_file():
            return False
        if loads(path.read_bytes()).raw == manifest.raw:
            return True
        raise StoreError(
            f"model {manifest.name!r} version {manifest.version!r} is already in the store "
            "with a different manifest; versions are immutable, use a new version",
            ErrorCode.ALREADY_EXISTS,
        )

    def _stage_variant(self, src_root: Path, variant: Variant) -> Path:
        where = f"variants[{variant.id}].file"
        candidate = src_root / variant.file
        try:
            resolved = candidate.resolve(strict=True)
        except FileNotFoundError:
            raise ManifestError(f"{where}: {variant.file!r} does not exist in {src_root}") from None
        if not resolved.is_relative_to(src_root):
            raise ManifestError(f"{where}: {variant.file!r} leaves the manifest's directory")
        info = resolved.stat()
        if not stat.S_ISREG(info.st_mode):
            raise ManifestError(f"{where}: {variant.file!r} is not a regular file")
        if info.st_size != variant.size:
            raise ManifestError(
                f"variants[{variant.id}].size: manifest says {variant.size} bytes, "
                f"{variant.file!r} has {info.st_size}"
            )
        if variant.format == "onnx":
            with resolved.open("rb") as f:
                external = onnx_external_locations(f)
            if external:
                # Blobs are named by digest, so the data files' names could not resolve.
                raise ManifestError(
                    f"{where}: {variant.file!r} keeps its weights in external data files "
                    f"({', '.join(external)}); the store holds one file per variant: re-save it "
                    "with onnx.save_model(model, path) without save_as_external_data"
                )
        tmp = self.tmp / f"import-{uuid.uuid4().hex}"
        digest = hashlib.sha256()
        try:
            with resolved.open("rb") as fin, tmp.open("wb") as fout:
                while chunk := fin.read(_CHUNK):
                    digest.update(chunk)
                    fout.write(chunk)
                fout.flush()
                os.fsync(fout.fileno())
        except BaseException as exc:
            tmp.unlink(missing_ok=True)  # a full disk must not stay full of half a copy
            if is_out_of_space(exc):
                raise out_of_space(
                    f"import of {variant.file!r} ({variant.size} bytes)", self.root
                ) from None
            raise
        if digest.hexdigest() != variant.sha256:
            tmp.unlink()
            raise ManifestError(
                f"variants[{variant.id}].sha256: manifest says {variant.sha256}, "
                f"{variant.file!r} hashes to {digest.hexdigest()}"
            )
        return tmp

    # -- per-blob state ------------------------------------------------------------------------

    def _validation_path(self, variant: Variant) -> Path:
        return self.state / "validation" / f"{variant.sha256}.{variant.format}.json"

    def validation(self, variant: Variant) -> dict[str, Any] | None:
        try:
            data = json.loads(self._validation_path(variant).read_text())
        except (FileNotFoundError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def put_validation(self, variant: Variant, record: dict[str, Any]) -> None:
        atomic.write_text(self._validation_path(variant), json.dumps(record, sort_keys=True))

    def crashes(self) -> dict[str, dict[str, Any]]:
        try:
            data = json.loads((self.state / "crashes.json").read_text())
        except (FileNotFoundError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def put_crashes(self, crashes: dict[str, dict[str, Any]]) -> None:
        atomic.write_text(self.state / "crashes.json", json.dumps(crashes, sort_keys=True))

    def iter_manifests(self) -> Iterator[Manifest]:
        for name in self.models():
            for version in self.versions(name):
                with contextlib.suppress(ManifestError, NotFoundError):
                    yield self.manifest(name, version)
