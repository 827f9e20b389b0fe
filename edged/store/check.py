"""Bit rot: a blob that no longer hashes to its name.

Blobs are named by their sha256, so every one can be checked on its own. The daemon checks a
blob the first time it loads it in a run (before a runtime reads a byte of it); `edged store
check` checks the whole store: every blob, every manifest's variants, the temporary files an
interrupted write left.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

from edged.errors import ErrorCode, StoreError
from edged.store.store import ModelStore

_CHUNK = 1 << 20


class CorruptBlobError(StoreError):
    code = ErrorCode.DATA_LOSS

    def __init__(self, message: str, digest: str) -> None:
        super().__init__(message)
        self.digest = digest


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def verify_blob(path: Path, digest: str) -> None:
    """CorruptBlobError unless the file at ``path`` hashes to ``digest``."""
    try:
        actual = sha256_of(path)
    except FileNotFoundError:
        raise CorruptBlobError(f"blob {digest[:16]}... is missing from the store", digest) from None
    if actual != digest:
        raise CorruptBlobError(
            f"blob {digest[:16]}... no longer matches its digest (it hashes to "
            f"{actual[:16]}...): the file was damaged on disk",
            digest,
        )


@dataclasses.dataclass
class Report:
    blobs: int = 0
    bytes: int = 0
    problems: list[str] = dataclasses.field(default_factory=list)
    leftovers: list[Path] = dataclasses.field(default_factory=list)


def check_store(store: ModelStore) -> Report:
    report = Report()
    referenced: dict[str, list[str]] = {}
    for name in store.models():
        for version in store.versions(name):
            try:
                manifest = store.manifest(name, version)
            except Exception as exc:  # a manifest that no longer parses is itself a finding
                report.problems.append(f"{name} version {version}: manifest unreadable: {exc}")
                continue
            for variant in manifest.variants:
                where = f"{name} version {version} variant {variant.id}"
                referenced.setdefault(variant.sha256, []).append(where)
                path = store.variant_path(variant)
                if path.is_file() and path.stat().st_size != variant.size:
                    report.problems.append(
                        f"{where}: blob is {path.stat().st_size} bytes, manifest says "
                        f"{variant.size}"
                    )
    for digest, users in sorted(referenced.items()):
        path = store.blob_path(digest)
        try:
            verify_blob(path, digest)
        except CorruptBlobError as exc:
            report.problems.append(f"{exc.message} (used by {', '.join(users)})")
            continue
        report.blobs += 1
        report.bytes += path.stat().st_size
    if store.tmp.is_dir():
        report.leftovers = sorted(p for p in store.tmp.iterdir() if p.is_file())
    return report
