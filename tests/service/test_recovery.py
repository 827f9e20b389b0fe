"""What a restart finds: the stored records made to agree with a crash at any instant, and the
committed version always the one that serves."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from edged.errors import ManifestError
from edged.events import NoEvents
from edged.lifecycle.manager import Lifecycle
from edged.portfolio.verdicts import variant_key
from edged.store.store import ModelStore
from edged.store.versions import Phase, VersionRecord, VersionState
from tests.portfolios import DeclaredProber, open_portfolio
from tests.versions import version_dir


def store_with(tmp_path: Path, count: int) -> ModelStore:
    store = ModelStore(tmp_path / "store")
    for v in range(1, count + 1):
        store.import_dir(version_dir(tmp_path / "src", "m", str(v), seed=v), activate=v == 2)
    return store


def test_the_first_version_is_committed_and_later_ones_staged(tmp_path: Path) -> None:
    store = store_with(tmp_path, 3)
    assert store.active("m") == "1"
    assert store.record("m", "1").state is VersionState.COMMITTED
    assert store.record("m", "2").state is VersionState.STAGED and store.record("m", "2").requested
    assert store.record("m", "3").state is VersionState.STAGED
    assert not store.record("m", "3").requested


def test_a_parent_must_be_in_the_store(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "store")
    orphan = version_dir(tmp_path / "src", "m", "2", lineage={"parent": "1"})
    with pytest.raises(ManifestError, match=r"lineage\.parent: model 'm' has no version '1'"):
        store.import_dir(orphan)
    assert store.versions("m") == []


def recovered(tmp_path: Path, store: ModelStore, suspects: list[str]) -> Lifecycle:
    portfolio = open_portfolio(store, tmp_path, prober=DeclaredProber())
    lifecycle = Lifecycle(portfolio, store, portfolio.settings, NoEvents())
    lifecycle.recover(suspects)
    asyncio.run(lifecycle.close())
    portfolio.journal.close()
    return lifecycle


def test_recovery_makes_the_records_agree_with_the_pointer(tmp_path: Path) -> None:
    store = store_with(tmp_path, 4)
    probation = VersionRecord(VersionState.PROBATION, reason="serving; on probation")
    # 2: on probation when the daemon died, and the crash journal blames its file.
    store.put_record("m", "2", probation)
    # 3: on probation, not blamed: its evaluation starts again.
    store.put_record("m", "3", probation)
    # 4: a candidate being gated.
    store.put_record("m", "4", VersionRecord(VersionState.CANDIDATE, Phase.GATING, "gating"))
    blamed = variant_key(store.manifest("m", "2").variants[0])
    recovered(tmp_path, store, [blamed])
    assert store.active("m") == "1"
    assert store.record("m", "2").state is VersionState.ROLLED_BACK
    assert "crash journal" in store.record("m", "2").reason
    for version in ("3", "4"):
        record = store.record("m", version)
        assert record.state is VersionState.CANDIDATE and record.requested, version
        assert record.reason.startswith("restarted"), record.reason


def test_a_commit_whose_pointer_moved_is_a_commit(tmp_path: Path) -> None:
    """Killed between moving ACTIVE and writing the record: the pointer is the commit."""
    store = store_with(tmp_path, 2)
    store.put_record("m", "2", VersionRecord(VersionState.PROBATION))
    store.set_active("m", "2")
    recovered(tmp_path, store, [])
    assert store.record("m", "2").state is VersionState.COMMITTED
