"""The crash journal: what a killed daemon leaves for the next start to read."""

from __future__ import annotations

from pathlib import Path

from edged.portfolio.journal import LOADING, RESIDENT, CrashJournal


def _entries(path: Path) -> dict[str, tuple[int, int]]:
    journal = CrashJournal(path)
    try:
        clean, entries = journal.previous_run()
    finally:
        journal.close()
    assert not clean  # never stopped cleanly in these tests
    return {e.key: (e.state, e.inflight) for e in entries}


def test_in_flight_counts_written_on_the_request_path_survive_the_process(tmp_path: Path) -> None:
    path = tmp_path / "journal"
    journal = CrashJournal(path)
    journal.start()
    journal.set("a/1/fp32", RESIDENT)
    journal.set("b/1/int8", LOADING)
    journal.set_inflight("a/1/fp32", 3)
    journal.set_inflight("c/2/q8_0", 1)  # not recorded yet: becomes a resident entry
    journal.close()  # no stop_cleanly: as if killed
    entries = _entries(path)
    assert entries == {
        "a/1/fp32": (RESIDENT, 3),
        "b/1/int8": (LOADING, 0),
        "c/2/q8_0": (RESIDENT, 1),
    }


def test_a_variant_whose_requests_finished_is_not_suspect(tmp_path: Path) -> None:
    path = tmp_path / "journal"
    journal = CrashJournal(path)
    journal.start()
    journal.set("a/1/fp32", RESIDENT)
    journal.set_inflight("a/1/fp32", 2)
    journal.set_inflight("a/1/fp32", 0)
    journal.close()
    reader = CrashJournal(path)
    try:
        _, entries = reader.previous_run()
    finally:
        reader.close()
    (entry,) = entries
    assert (entry.key, entry.inflight, entry.suspect) == ("a/1/fp32", 0, False)
