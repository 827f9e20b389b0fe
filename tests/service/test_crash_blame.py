"""Who is blamed for a death: a fatal signal blames what was loading or running; a kill from
outside (power cut, kill -9, the OOM killer) blames only a load that never finishes, run after run.

Each test leaves a crash journal as a dying daemon leaves it (entries written, no clean stop), then
starts the real portfolio over it.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from edged.portfolio.journal import LOADING, RESIDENT, CrashJournal
from edged.portfolio.portfolio import Portfolio
from edged.portfolio.verdicts import VerdictState, variant_key
from edged.store.store import ModelStore
from tests.portfolios import DeclaredProber, make_settings, mlp_family

SETTINGS = make_settings(validation={"quarantine_after": 2})


def _store(tmp_path: Path) -> ModelStore:
    store = ModelStore(tmp_path / "store")
    store.import_dir(mlp_family(tmp_path / "src" / "m", "m", (16, 32, 8), 1))
    return store


def _keys(store: ModelStore) -> dict[str, str]:
    return {v.id: variant_key(v) for v in store.manifest("m", "1").variants}


def _die(work: Path, entries: dict[str, tuple[int, int]]) -> None:
    """A run that dies with ``entries`` (key -> (state, requests in flight)) in its journal."""
    journal = CrashJournal(work / "journal")
    journal.start()
    for key, (state, inflight) in entries.items():
        journal.set(key, state, inflight)
    journal.close()


def _restart(store: ModelStore, work: Path, fatal_signal: bool) -> tuple[Portfolio, list[str]]:
    portfolio = Portfolio(store, CrashJournal(work / "journal"), SETTINGS, prober=DeclaredProber())
    blamed = portfolio.recover_from_crash(fatal_signal=fatal_signal)
    portfolio.refresh()
    return portfolio, blamed


def _states(portfolio: Portfolio, store: ModelStore) -> dict[str, VerdictState]:
    return {v.id: portfolio.verdict(v).state for v in store.manifest("m", "1").variants}


def _close(portfolio: Portfolio, clean: bool = False) -> None:
    if clean:
        asyncio.run(portfolio.close())
    portfolio.journal.close()


def test_power_cuts_with_requests_in_flight_blame_nobody(tmp_path: Path) -> None:
    store = _store(tmp_path)
    keys = _keys(store)
    for _ in range(3):
        _die(tmp_path, {keys["fp32"]: (RESIDENT, 4), keys["int8"]: (RESIDENT, 1)})
        portfolio, blamed = _restart(store, tmp_path, fatal_signal=False)
        assert blamed == []
        assert VerdictState.QUARANTINED not in _states(portfolio, store).values()
        _close(portfolio)


def test_fatal_signals_while_it_runs_quarantine_the_variant(tmp_path: Path) -> None:
    store = _store(tmp_path)
    keys = _keys(store)
    for crash in (1, 2):
        _die(tmp_path, {keys["fp32"]: (RESIDENT, 2), keys["int8"]: (RESIDENT, 0)})
        portfolio, blamed = _restart(store, tmp_path, fatal_signal=True)
        assert blamed == [keys["fp32"]]  # int8 had no request in flight
        states = _states(portfolio, store)
        assert states["int8"] is not VerdictState.QUARANTINED
        assert (states["fp32"] is VerdictState.QUARANTINED) == (crash == 2)
        _close(portfolio)
    reason = portfolio.verdict(store.manifest("m", "1").variant("fp32")).reason
    assert "fatal signal 2 times" in reason, reason


def test_killed_while_loading_run_after_run_is_an_oom_loop(tmp_path: Path) -> None:
    """The OOM killer at every start during the same load: quarantined after two runs in a row,
    not blamed for the death (no rollback), and a clean stop keeps the quarantine."""
    store = _store(tmp_path)
    keys = _keys(store)
    for run in (1, 2):
        _die(tmp_path, {keys["fp32"]: (LOADING, 0), keys["int8"]: (RESIDENT, 3)})
        portfolio, blamed = _restart(store, tmp_path, fatal_signal=False)
        assert blamed == []
        states = _states(portfolio, store)
        assert (states["fp32"] is VerdictState.QUARANTINED) == (run == 2)
        assert states["int8"] is not VerdictState.QUARANTINED
        _close(portfolio, clean=run == 2)
    reason = portfolio.verdict(store.manifest("m", "1").variant("fp32")).reason
    assert "killed 2 runs in a row while this variant was loading" in reason, reason
    portfolio, _ = _restart(store, tmp_path, fatal_signal=False)
    assert _states(portfolio, store)["fp32"] is VerdictState.QUARANTINED
    _close(portfolio)


def test_a_load_that_finishes_breaks_the_loop(tmp_path: Path) -> None:
    """Killed while fp32 loaded, then a run where its load finished, then killed while it loaded
    again: two kills, but not in a row, so fp32 is not quarantined."""
    store = _store(tmp_path)
    keys = _keys(store)
    _die(tmp_path, {keys["fp32"]: (LOADING, 0)})
    portfolio, _ = _restart(store, tmp_path, fatal_signal=False)

    async def load_fp32() -> str:
        lease = await portfolio.lease("m", "1")  # room for the best variant: fp32
        try:
            return lease.handle.variant.id
        finally:
            lease.release()

    assert asyncio.run(load_fp32()) == "fp32"
    assert portfolio.verdicts.killed_loading(store.manifest("m", "1").variant("fp32")) == 0
    _close(portfolio)
    _die(tmp_path, {keys["fp32"]: (LOADING, 0)})
    portfolio, _ = _restart(store, tmp_path, fatal_signal=False)
    assert _states(portfolio, store)["fp32"] is not VerdictState.QUARANTINED
    _close(portfolio)
