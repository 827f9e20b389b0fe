"""The request history: every request, in SQLite in the state directory, written off the hot path.

Requests are queued in memory and written in batches by one thread, so recording never blocks a
request (a full queue drops the record and counts it). Retention is by age and by row count,
applied at start and every ``compact_every`` rows.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    t REAL NOT NULL,          -- arrival, seconds since the epoch
    model TEXT NOT NULL,
    version TEXT NOT NULL,
    variant TEXT NOT NULL,
    latency_ms REAL NOT NULL,
    warm INTEGER NOT NULL     -- 1 when served without waiting for a load
);
CREATE INDEX IF NOT EXISTS requests_t ON requests (t);
"""


# (t, model, version, variant, latency_ms, warm): a Request as the table stores it.
Row = tuple[float, str, str, str, float, bool]


@dataclasses.dataclass(frozen=True)
class Request:
    t: float
    model: str
    version: str
    variant: str
    latency_ms: float
    warm: bool


class RequestHistory:
    def __init__(
        self,
        path: Path,
        retention_seconds: float = 14 * 86400.0,
        max_rows: int = 1_000_000,
        queue_size: int = 100_000,  # batches of records (the preloader hands one per flush)
    ) -> None:
        self.path = path
        self.retention_seconds = retention_seconds
        self.max_rows = max_rows
        self.compact_every = max(max_rows // 10, 1)
        self.dropped = 0
        self._queue: queue.Queue[list[Row] | None] = queue.Queue(queue_size)
        path.parent.mkdir(parents=True, exist_ok=True)
        db = self._connect()
        try:
            db.executescript(_SCHEMA)
            self._compact(db)
        finally:
            db.close()
        self._thread = threading.Thread(target=self._write_loop, name="edged-history", daemon=True)
        self._thread.start()

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=30.0)
        # WAL: readers (start-up, `edged trace`) never block the writer; NORMAL sync: a power cut
        # may lose the last batch of history, never corrupt it.
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        return db

    def record(self, request: Request) -> None:
        """Queue a request for writing; never blocks."""
        self.record_rows([dataclasses.astuple(request)])  # fields in the table's column order

    def record_rows(self, rows: list[Row]) -> None:
        """Queue requests, as rows in the table's column order, for writing as one item; never
        blocks. Rows, not Request objects: the writer hands them to SQLite as they are, so it
        runs no Python per row while it holds the GIL the event loop is waiting for."""
        try:
            self._queue.put_nowait(rows)
        except queue.Full:
            self.dropped += len(rows)

    def rows(self) -> Iterator[Request]:
        """Recorded requests, oldest first (what is still queued is not included)."""
        db = self._connect()
        try:
            cursor = db.execute(
                "SELECT t, model, version, variant, latency_ms, warm FROM requests ORDER BY t"
            )
            for t, model, version, variant, latency_ms, warm in cursor:
                yield Request(t, model, version, variant, latency_ms, bool(warm))
        finally:
            db.close()

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=30.0)

    def _write_loop(self) -> None:
        db = self._connect()
        written = 0
        try:
            while True:
                batch: list[list[Row] | None] = [self._queue.get()]
                while len(batch) < 1024:
                    try:
                        batch.append(self._queue.get_nowait())
                    except queue.Empty:
                        break
                done = None in batch
                rows = [item for item in batch if item is not None]
                count = sum(map(len, rows))
                try:
                    with db:
                        # chain() walks the rows in C: the loop thread waits for the GIL only
                        # while SQLite binds a row, not while Python rebuilds every row.
                        db.executemany(
                            "INSERT INTO requests VALUES (?, ?, ?, ?, ?, ?)",
                            itertools.chain.from_iterable(rows),
                        )
                    written += count
                    if written >= self.compact_every:
                        written = 0
                        self._compact(db)
                except sqlite3.Error as exc:
                    log.error("request history %s: %s (%d records lost)", self.path, exc, count)
                if done:
                    return
                # Batch writes: a busy daemon writes a few times a second, not per request.
                time.sleep(0.2)
        finally:
            db.close()

    def _compact(self, db: sqlite3.Connection) -> None:
        with db:
            db.execute("DELETE FROM requests WHERE t < ?", (time.time() - self.retention_seconds,))
            db.execute(
                "DELETE FROM requests WHERE rowid IN (SELECT rowid FROM requests ORDER BY t DESC "
                "LIMIT -1 OFFSET ?)",
                (self.max_rows,),
            )
