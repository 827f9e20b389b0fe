"""The request history: every request, in SQLite in the state directory, written off the hot path.

Requests are queued in memory and written in batches by one thread, so recording never blocks a
request (a full queue drops the record and counts it). Retention is by age and by row count,
applied at start and every ``compact_every`` rows.
"""

from __future__ import annotations

import dataclasses
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
        self._queue: queue.Queue[list[Request] | None] = queue.Queue(queue_size)
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
        self.record_many([request])

    def record_many(self, requests: list[Request]) -> None:
        """Queue requests for writing as one item; never blocks."""
        try:
            self._queue.put_nowait(requests)
        except queue.Full:
            self.dropped += len(requests)

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
                batch = [self._queue.get()]
                while len(batch) < 1024:
                    try:
                        batch.append(self._queue.get_nowait())
                    except queue.Empty:
                        break
                rows = [
                    (r.t, r.model, r.version, r.variant, r.latency_ms, int(r.warm))
                    for requests in batch
                    if requests is not None
                    for r in requests
                ]
                try:
                    with db:
                        db.executemany("INSERT INTO requests VALUES (?, ?, ?, ?, ?, ?)", rows)
                    written += len(rows)
                    if written >= self.compact_every:
                        written = 0
                        self._compact(db)
                except sqlite3.Error as exc:
                    log.error("request history %s: %s (%d records lost)", self.path, exc, len(rows))
                if None in batch:
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
