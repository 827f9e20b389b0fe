"""Local operations on a store without a daemon (the CLI's `edged import` and `edged demo`):
import a version, validate its variants in a subprocess, report what each verdict was."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path

from edged.portfolio.verdicts import variant_key
from edged.runtime.probe import probe_and_record, stored_result
from edged.settings import Settings
from edged.store.store import ModelStore


@dataclasses.dataclass(frozen=True)
class VariantVerdict:
    variant: str
    key: str  # the blob and format the verdict belongs to
    usable: bool
    reason: str


@dataclasses.dataclass(frozen=True)
class Imported:
    name: str
    version: str
    variants: int
    verdicts: tuple[VariantVerdict, ...]  # empty when validation was skipped
    kept: bool = False  # already in the store (a demo rebuilt): nothing changed
    state: str = ""  # its lifecycle state (committed: the first version; else staged)
    requested: bool = False  # its promotion was requested (the daemon starts it on SIGHUP)


def import_version(
    settings: Settings, src: Path, *, activate: bool = True, validate: bool = True
) -> Imported:
    """Add the version in ``src`` (a directory with manifest.json) to the configured store and,
    unless told not to, validate each variant in a subprocess as the daemon would."""
    store = ModelStore(settings.store.path)
    manifest = store.import_dir(src, activate=activate)
    verdicts = []
    for variant in manifest.variants if validate else ():
        result = stored_result(store, variant) or asyncio.run(
            probe_and_record(store, variant, settings.validation.timeout_seconds)
        )
        verdicts.append(
            VariantVerdict(variant.id, variant_key(variant), result.usable, result.reason)
        )
    record = store.record(manifest.name, manifest.version)
    return Imported(
        manifest.name,
        manifest.version,
        len(manifest.variants),
        tuple(verdicts),
        state=str(record.state),
        requested=record.requested,
    )


def import_demo(settings: Settings, out: Path | None = None) -> Iterator[Imported]:
    """Build the demo portfolio offline under ``out`` and import it; versions already in the
    store stay (versions are immutable, and a rebuilt demo need not be byte-identical)."""
    from edged.demo import build_demo

    store = ModelStore(settings.store.path)
    for model_dir in build_demo(out or settings.store.path.parent / "demo-src"):
        manifest = json.loads((model_dir / "manifest.json").read_text())
        name, version = manifest["name"], manifest["version"]
        if version in store.versions(name):
            yield Imported(name, version, len(manifest["variants"]), (), kept=True)
            continue
        yield import_version(settings, model_dir)


@dataclasses.dataclass(frozen=True)
class StoreCheck:
    blobs: int
    bytes: int
    problems: tuple[str, ...]
    leftovers: int  # temporary files an interrupted write left (removed at the next start)


def check_store(settings: Settings) -> StoreCheck:
    """Verify every blob of the configured store against its digest and every manifest's
    variants against their blobs (`edged store check`); read-only."""
    from edged.store.check import check_store as check

    report = check(ModelStore(settings.store.path))
    return StoreCheck(report.blobs, report.bytes, tuple(report.problems), len(report.leftovers))
