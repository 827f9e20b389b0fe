"""Receiving pushed updates into the store: signed manifest, resumable files, crash-safe apply.

Layout under the store::

    updates/<id>/manifest.json      the signed bytes, as pushed
    updates/<id>/manifest.json.sig
    updates/<id>/<variant>.part     the patch or file being received
    updates/<id>/progress.json      bytes of each .part known to be durable (fsynced)

``<id>`` is the first 32 hex digits of sha256(manifest), so the controller and the node name an
update the same way without asking. Bytes count as held only once they are fsynced and the
progress file says so; after a crash a .part is cut back to that length and the push resumes
there. Nothing under ``models/`` or ``blobs/`` changes until a file is verified: a patch result
is written to ``tmp/``, its digest checked, then renamed into the blob store; the manifest is
registered last, and the active pointer moves after it ("activate": "immediate").
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

from edged.errors import EdgedError, ErrorCode, ManifestError, RejectedError, StoreError
from edged.store import atomic
from edged.store.manifest import Manifest, Transfer, loads
from edged.store.space import is_out_of_space, out_of_space
from edged.store.store import ModelStore
from edged.update import patch as patch_mod
from edged.update.node.freshness import Freshness
from edged.update.protocol import check_id, update_id
from edged.update.root import RootError, RootOfTrust
from edged.update.signing import TrustedKeys

__all__ = ["FileState", "Update", "UpdateError", "UpdateReceiver", "update_id"]

log = logging.getLogger(__name__)

CHECKPOINT_BYTES = 8 << 20  # fsync and record progress at least this often


class UpdateError(RejectedError):
    """A refused update."""


@dataclasses.dataclass(frozen=True)
class FileState:
    variant: str
    method: str
    held: int
    size: int


class Update:
    """One update being received. Not thread-safe: one Push owns it at a time."""

    def __init__(
        self,
        store: ModelStore,
        directory: Path,
        manifest: Manifest,
        *,
        repair: bool = True,
        applied: Callable[[Manifest], None] | None = None,
    ) -> None:
        assert manifest.update is not None
        self._applied = applied
        self.store = store
        self.dir = directory
        self.id = directory.name
        self.manifest = manifest
        self.section = manifest.update
        self._held = self._read_progress(repair)  # received: where the next chunk starts
        self._durable = dict(self._held)  # fsynced and recorded: what a resume may count on
        self._fds: dict[str, int] = {}
        self._unsynced = 0

    # -- progress ------------------------------------------------------------------------------

    def _read_progress(self, repair: bool) -> dict[str, int]:
        try:
            recorded = json.loads((self.dir / "progress.json").read_text())
        except (FileNotFoundError, ValueError):
            recorded = {}
        held = {}
        for vid, transfer in self.section.transfers.items():
            if transfer.method == "reuse":
                continue
            value = recorded.get(vid, 0) if isinstance(recorded, dict) else 0
            n = value if isinstance(value, int) and 0 <= value <= transfer.size else 0
            part = self.dir / f"{vid}.part"
            size = part.stat().st_size if part.exists() else 0
            # Bytes past the last checkpoint may be torn: cut them off, they will be sent again.
            if repair and size > n:
                os.truncate(part, n)
            held[vid] = min(n, size)
        return held

    def files(self) -> list[FileState]:
        return [
            FileState(vid, t.method, self._durable.get(vid, 0), t.size)
            for vid, t in sorted(self.section.transfers.items())
        ]

    def complete(self) -> bool:
        return all(f.held == f.size for f in self.files())

    def checkpoint(self) -> None:
        """Make everything received so far durable, then record it as held."""
        for fd in self._fds.values():
            os.fsync(fd)
        atomic.write_text(self.dir / "progress.json", json.dumps(self._held, sort_keys=True))
        self._durable = dict(self._held)
        self._unsynced = 0

    def close(self) -> None:
        with contextlib.suppress(OSError):
            if self._fds:
                self.checkpoint()
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    # -- receiving -----------------------------------------------------------------------------

    def write(self, variant: str, offset: int, data: bytes) -> None:
        transfer = self.section.transfers.get(variant)
        if transfer is None:
            raise UpdateError(
                f"chunk for variant {variant!r}, which the manifest does not have", "bad_chunk"
            )
        if transfer.method == "reuse":
            raise UpdateError(f"variant {variant!r} is reused; it takes no data", "bad_chunk")
        held = self._held[variant]
        if offset != held:
            raise UpdateError(
                f"chunk for {variant} starts at {offset}, the node holds {held} bytes of it "
                "(resume from Updates.Status)",
                "bad_offset",
                ErrorCode.OUT_OF_RANGE,
            )
        if held + len(data) > transfer.size:
            raise UpdateError(
                f"chunk for {variant} runs past its declared size ({transfer.size} bytes)",
                "bad_chunk",
            )
        fd = self._fds.get(variant)
        if fd is None:
            fd = os.open(self.dir / f"{variant}.part", os.O_WRONLY | os.O_CREAT, 0o600)
            self._fds[variant] = fd
        view = memoryview(data)
        try:
            while view:
                written = os.pwrite(fd, view, offset)
                view, offset = view[written:], offset + written
        except OSError as exc:
            if not is_out_of_space(exc):
                raise
            # What arrived cannot be kept: free it rather than leave the disk full.
            for open_fd in self._fds.values():
                os.close(open_fd)
            self._fds.clear()
            for name in list(self._held):
                (self.dir / f"{name}.part").unlink(missing_ok=True)
                self._held[name] = 0
            with contextlib.suppress(OSError):
                self.checkpoint()
            raise out_of_space(f"update {self.id}: receiving {variant}", self.dir) from None
        self._held[variant] = held + len(data)
        self._unsynced += len(data)
        if self._unsynced >= CHECKPOINT_BYTES or self._held[variant] == transfer.size:
            self.checkpoint()

    # -- applying ------------------------------------------------------------------------------

    def apply(self) -> None:
        """Verify every file, bring each variant's blob into the store, register the version."""
        try:
            self._apply()
        except OSError as exc:
            if not is_out_of_space(exc):
                raise
            raise out_of_space(f"update {self.id}: applying", self.store.root) from None

    def _apply(self) -> None:
        self.close()
        for variant in self.manifest.variants:
            transfer = self.section.transfers[variant.id]
            final = self.store.blob_path(variant.sha256)
            if final.is_file():
                continue  # already there (an earlier attempt, or another model shares it)
            if transfer.method == "reuse":
                raise UpdateError(
                    f"variant {variant.id}: 'reuse' but blob {variant.sha256} is not on this node",
                    "missing_base",
                    ErrorCode.FAILED_PRECONDITION,
                )
            part = self.dir / f"{variant.id}.part"
            digest, size = patch_mod.sha256_file(part)
            if (digest, size) != (transfer.sha256, transfer.size):
                self._discard(variant.id)
                raise UpdateError(
                    f"variant {variant.id}: received {transfer.method} hashes to {digest} "
                    f"({size} bytes), the signed manifest says {transfer.sha256} "
                    f"({transfer.size} bytes); discarded, push it again",
                    "digest_mismatch",
                    ErrorCode.DATA_LOSS,
                )
            if transfer.method == "full":
                atomic.commit(part, final)
            else:
                self._apply_patch(variant.id, variant.sha256, variant.size, transfer, part, final)
        self.store.add_version(self.manifest, activate=self.section.activate == "immediate")
        if self._applied is not None:
            self._applied(self.manifest)
        shutil.rmtree(self.dir, ignore_errors=True)

    def _apply_patch(
        self, vid: str, target_sha: str, target_size: int, t: Transfer, part: Path, final: Path
    ) -> None:
        header = patch_mod.read_header(part)
        if (header.base_sha256, header.target_sha256, header.target_size) != (
            t.base_sha256,
            target_sha,
            target_size,
        ):
            raise UpdateError(
                f"variant {vid}: the patch's base/target digests differ from the manifest's",
                "mismatch",
            )
        base = self.store.blob_path(t.base_sha256)
        if not base.is_file():
            raise UpdateError(
                f"variant {vid}: base blob {t.base_sha256} is not on this node; push the full file",
                "missing_base",
                ErrorCode.FAILED_PRECONDITION,
            )
        patch_mod.check_base(header, base)
        tmp = self.store.tmp / f"apply-{uuid.uuid4().hex}"
        try:
            with tmp.open("wb") as out:
                patch_mod.apply_to(header, base, part, out)
                out.flush()
                os.fsync(out.fileno())
            atomic.commit(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)

    def _discard(self, variant: str) -> None:
        (self.dir / f"{variant}.part").unlink(missing_ok=True)
        self._held[variant] = 0
        self.checkpoint()


class UpdateReceiver:
    """Opens, resumes and finishes updates; one update per model at a time."""

    def __init__(
        self,
        store: ModelStore,
        trusted: TrustedKeys,
        retention_seconds: float = 7 * 86400,
        freshness: Freshness | None = None,
        root: RootOfTrust | None = None,
    ) -> None:
        self.store = store
        self.trusted = trusted
        # When set, the update keys come from it (edged/update/root.py), not from ``trusted``.
        self.root_of_trust = root
        self.freshness = freshness or Freshness(
            store.state / "freshness.json", socket.gethostname().lower()
        )
        self.retention_seconds = retention_seconds
        self.root = store.root / "updates"
        self.root.mkdir(parents=True, exist_ok=True)
        self._live: dict[str, Update] = {}  # by model: the update a Push is receiving
        self._lock = threading.Lock()

    def recover(self) -> int:
        """At start: drop updates that finished, expired or do not parse; returns how many."""
        removed = 0
        now = time.time()
        for entry in self.root.iterdir():
            keep = False
            with contextlib.suppress(EdgedError, OSError, ValueError):
                manifest = loads((entry / "manifest.json").read_bytes())
                fresh = now - entry.stat().st_mtime < self.retention_seconds
                keep = fresh and manifest.update is not None and not self._registered(manifest)
                if keep:
                    Update(self.store, entry, manifest)  # cuts torn tails off the .part files
            if not keep:
                shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink()
                removed += 1
        if removed:
            log.info("update recovery removed %d finished or stale updates", removed)
        return removed

    def _registered(self, manifest: Manifest) -> bool:
        try:
            return self.store.has_version(manifest)
        except StoreError:
            return False

    def begin(
        self, manifest_bytes: bytes, signature: bytes, roots: Sequence[bytes] = ()
    ) -> Update | Manifest:
        """Check a pushed header and hold its model; returns the Update to receive into (give it
        back with ``end``), or the Manifest when this exact version is already in the store
        (nothing left to do). Another update of the same model is refused until ``end``."""
        keys = self._with_roots(roots) if roots else self.keys()
        keys.verify(manifest_bytes, signature)
        try:
            manifest = loads(manifest_bytes)
        except ManifestError as e:
            raise UpdateError(e.message, "bad_manifest") from None
        if manifest.update is None:
            raise UpdateError(
                "manifest: a pushed manifest needs an 'update' section", "bad_manifest"
            )
        try:
            if self.store.has_version(manifest):
                return manifest
        except StoreError as e:
            raise UpdateError(e.message, "version_exists", ErrorCode.ALREADY_EXISTS) from None
        # Replayed, expired or meant for others: refused before anything is stored.
        self.freshness.check(manifest)
        self._check_bases(manifest)
        uid = update_id(manifest_bytes)
        with self._lock:
            holder = self._live.get(manifest.name)
            if holder is not None:
                raise UpdateError(
                    f"model {manifest.name!r} already has an update in flight ({holder.id}); "
                    "retry later",
                    "busy",
                    ErrorCode.ABORTED,
                )
            directory = self.root / uid
            if not (directory / "manifest.json.sig").is_file():
                directory.mkdir(exist_ok=True)
                atomic.write_bytes(directory / "manifest.json", manifest_bytes)
                atomic.write_bytes(directory / "manifest.json.sig", signature)
                atomic.fsync_dir(self.root)
            update = Update(self.store, directory, manifest, applied=self.freshness.applied)
            self._live[manifest.name] = update
        return update

    def keys(self) -> TrustedKeys:
        """The keys a manifest must be signed by now."""
        if self.root_of_trust is None:
            return self.trusted
        keys = self.root_of_trust.update_keys()
        if not keys.keys:
            raise RootError(
                "the trusted root has expired (or none is provisioned): push a newer root "
                "(edged root) before updates",
                "root_expired",
            )
        return keys

    def _with_roots(self, roots: Sequence[bytes]) -> TrustedKeys:
        if self.root_of_trust is None:
            raise RootError(
                "the push carries root documents but this node has no [updates] root",
                "bad_root",
            )
        self.root_of_trust.rotate(roots)
        return self.keys()

    def end(self, update: Update) -> None:
        """Release the model; what was received stays for the next push."""
        try:
            update.close()
        finally:
            with self._lock:
                if self._live.get(update.manifest.name) is update:
                    del self._live[update.manifest.name]

    def _check_bases(self, manifest: Manifest) -> None:
        section = manifest.update
        assert section is not None
        if section.base_version and section.base_version not in self.store.versions(manifest.name):
            raise UpdateError(
                f"update.base_version: model {manifest.name!r} has no version "
                f"{section.base_version!r} on this node",
                "missing_base",
                ErrorCode.FAILED_PRECONDITION,
            )
        for variant in manifest.variants:
            t = section.transfers[variant.id]
            needed = t.base_sha256 if t.method == "patch" else variant.sha256
            if t.method != "full" and not self.store.blob_path(needed).is_file():
                raise UpdateError(
                    f"update.variants.{variant.id}: blob {needed} is not on this node "
                    f"({t.method} needs it); push the full file",
                    "missing_base",
                    ErrorCode.FAILED_PRECONDITION,
                )

    def find(self, uid: str) -> Update | None:
        """The update with this id, live or left by an earlier push (read-only view)."""
        directory = self.root / check_id(uid)
        with self._lock:
            for live in self._live.values():
                if live.id == uid:
                    return live
        try:
            manifest = loads((directory / "manifest.json").read_bytes())
        except (FileNotFoundError, EdgedError):
            return None
        return Update(self.store, directory, manifest, repair=False) if manifest.update else None
