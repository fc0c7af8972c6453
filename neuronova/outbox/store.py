"""The durable outbox: one row per (result instance, destination), sent until acknowledged.

SQLite in the data directory (WAL, shared by the processes of one host). Backoff is exponential, capped at
an hour, and never gives up on a transient failure: a PACS down for a night gets its results in the morning.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY,
    job_id TEXT NOT NULL,
    sop_uid TEXT NOT NULL,
    destination TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',  -- pending, sent, failed
    attempts INTEGER NOT NULL DEFAULT 0,
    next_try REAL NOT NULL,
    last_status TEXT, last_error TEXT,
    created REAL NOT NULL, sent_at REAL,
    UNIQUE (sop_uid, destination)
);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox(state, next_try);
CREATE INDEX IF NOT EXISTS outbox_job ON outbox(job_id);
"""

BACKOFF_BASE_SECONDS = 2.0
BACKOFF_CAP_SECONDS = 3600.0


def backoff(attempts: int, *, base: float = BACKOFF_BASE_SECONDS, cap: float = BACKOFF_CAP_SECONDS) -> float:
    return float(min(cap, base * 2 ** max(0, attempts - 1)))


@dataclass(frozen=True)
class OutboxRow:
    id: int
    job_id: str
    sop_uid: str
    destination: str
    state: str
    attempts: int
    next_try: float
    last_status: str | None
    last_error: str | None


class OutboxStore:
    def __init__(self, path: Path, *, backoff_base: float = BACKOFF_BASE_SECONDS) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)
        self.backoff_base = backoff_base

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _rows(self, sql: str, params: Sequence[object] = ()) -> list[OutboxRow]:
        with self._lock:
            return [OutboxRow(**{k: r[k] for k in OutboxRow.__dataclass_fields__})
                    for r in self._db.execute(sql, params).fetchall()]

    def enqueue(self, job_id: str, sop_uids: Iterable[str], destinations: Iterable[str]) -> int:
        """Add a row per (instance, destination); a re-run's rows go back to pending (the content may differ)."""
        now = time.time()
        rows = [(job_id, uid, dest, now, now) for uid in sop_uids for dest in destinations]
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany(
                """INSERT INTO outbox (job_id, sop_uid, destination, next_try, created) VALUES (?,?,?,?,?)
                   ON CONFLICT(sop_uid, destination) DO UPDATE SET job_id=excluded.job_id, state='pending',
                       attempts=0, next_try=excluded.next_try, last_status=NULL, last_error=NULL, sent_at=NULL""",
                rows,
            )
            self._db.execute("COMMIT")
        return len(rows)

    def due(self, *, now: float | None = None, limit: int = 200) -> list[OutboxRow]:
        now = time.time() if now is None else now
        return self._rows("SELECT * FROM outbox WHERE state='pending' AND next_try <= ? ORDER BY next_try, id LIMIT ?",
                          (now, limit))

    def mark_sent(self, row_id: int, *, status: str) -> None:
        self._update("UPDATE outbox SET state='sent', attempts=attempts+1, last_status=?, last_error=NULL, sent_at=? "
                     "WHERE id=?", (status, time.time(), row_id))

    def mark_retry(self, row_id: int, *, status: str, error: str) -> float:
        with self._lock:
            attempts = self._db.execute("SELECT attempts FROM outbox WHERE id=?", (row_id,)).fetchone()[0] + 1
            delay = backoff(attempts, base=self.backoff_base)
            self._db.execute("UPDATE outbox SET attempts=?, next_try=?, last_status=?, last_error=? WHERE id=?",
                             (attempts, time.time() + delay, status, error[:500], row_id))
        return delay

    def mark_failed(self, row_id: int, *, status: str, error: str) -> None:
        self._update("UPDATE outbox SET state='failed', attempts=attempts+1, last_status=?, last_error=? WHERE id=?",
                     (status, error[:500], row_id))

    def _update(self, sql: str, params: Sequence[object]) -> None:
        with self._lock:
            self._db.execute(sql, params)

    def for_job(self, job_id: str) -> list[OutboxRow]:
        return self._rows("SELECT * FROM outbox WHERE job_id=? ORDER BY id", (job_id,))

    def pending(self, job_id: str) -> int:
        return sum(1 for r in self.for_job(job_id) if r.state == "pending")
