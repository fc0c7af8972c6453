"""The durable outbox: one row per (result instance, destination), sent until acknowledged.

SQLite in the data directory (WAL, shared by the processes of one host). Backoff is exponential, capped at
an hour, and never gives up on a transient failure: a PACS down for a night gets its results in the morning.

Re-runs. A job's results are enqueued again when the job runs again, possibly while an earlier send of the
same row is in flight, and possibly with fewer instances. So:

- every row has a ``version``, bumped by each ``enqueue`` that touches it; the outcome of a send is recorded
  only if the row still has the version that was sent (compare-and-set), so content re-queued during a send
  stays pending and goes out again (no lost update: the job cannot end ``done`` on the old content);
- rows of the job whose instance is not among the new results become ``stale``: the instance may be in the
  destination, and is removed there (``removal.py``) before the job is done. A removed row is ``removed``;
  a destination without a removal method leaves it ``kept`` (logged and counted).

States: pending -> sent | failed; a re-run: any -> pending (in the new results) or stale (not in them);
stale -> removed | kept | failed.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from neuronova.retry import backoff as retry_backoff
from neuronova.sqlite import Database

SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY,
    job_id TEXT NOT NULL,
    sop_uid TEXT NOT NULL,
    destination TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',  -- pending, sent, failed, stale, removed, kept
    attempts INTEGER NOT NULL DEFAULT 0,
    next_try REAL NOT NULL,
    last_status TEXT, last_error TEXT,
    created REAL NOT NULL, sent_at REAL,
    version INTEGER NOT NULL DEFAULT 1,
    UNIQUE (sop_uid, destination)
);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox(state, next_try);
CREATE INDEX IF NOT EXISTS outbox_job ON outbox(job_id);
"""

BACKOFF_BASE_SECONDS = 2.0
BACKOFF_CAP_SECONDS = 3600.0

#: States in which a row still has work to do (a job is settled when none of its rows is in one).
OPEN_STATES = ("pending", "stale")


def backoff(attempts: int, *, base: float = BACKOFF_BASE_SECONDS, cap: float = BACKOFF_CAP_SECONDS) -> float:
    """Delay before a delivery's next try (neuronova.retry.backoff with the outbox's base and cap)."""
    return retry_backoff(attempts, base=base, cap=cap)


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
    version: int = 1


class OutboxStore:
    def __init__(self, path: Path, *, backoff_base: float = BACKOFF_BASE_SECONDS) -> None:
        self.db = Database(path, synchronous="NORMAL", schema=SCHEMA)
        if "version" not in self.db.columns("outbox"):  # an outbox written before rows had versions
            with self.db.write() as db:
                db.execute("ALTER TABLE outbox ADD COLUMN version INTEGER NOT NULL DEFAULT 1")
        self.backoff_base = backoff_base

    def close(self) -> None:
        self.db.close()

    def _rows(self, sql: str, params: Sequence[object] = ()) -> list[OutboxRow]:
        return [OutboxRow(**{k: r[k] for k in OutboxRow.__dataclass_fields__}) for r in self.db.query(sql, params)]

    def enqueue(self, job_id: str, sop_uids: Iterable[str], destinations: Iterable[str]) -> int:
        """Make ``sop_uids`` the job's results for ``destinations``, in one transaction: a row per (instance,
        destination), new or back to pending with its version bumped (the content may differ); the job's other
        rows for those destinations become ``stale`` (to be removed there). Returns the rows enqueued."""
        now = time.time()
        uids = list(dict.fromkeys(sop_uids))
        dests = list(dict.fromkeys(destinations))
        rows = [(job_id, uid, dest, now, now) for uid in uids for dest in dests]
        with self.db.transaction() as db:
            db.executemany(
                """INSERT INTO outbox (job_id, sop_uid, destination, next_try, created) VALUES (?,?,?,?,?)
                   ON CONFLICT(sop_uid, destination) DO UPDATE SET job_id=excluded.job_id, state='pending',
                       attempts=0, next_try=excluded.next_try, last_status=NULL, last_error=NULL,
                       sent_at=NULL, version=version+1""",
                rows,
            )
            current = set(uids)
            for row in db.execute(
                    "SELECT id, sop_uid, destination FROM outbox WHERE job_id=? AND state NOT IN ('removed', "
                    "'kept')", (job_id,)).fetchall():
                if row["sop_uid"] not in current and row["destination"] in dests:
                    db.execute(
                        "UPDATE outbox SET state='stale', attempts=0, next_try=?, last_status=NULL, "
                        "last_error=NULL, version=version+1 WHERE id=?", (now, row["id"]))
        return len(rows)

    def due(self, *, now: float | None = None, limit: int = 200) -> list[OutboxRow]:
        """Rows to send (``pending``) and to remove (``stale``) whose next try has come."""
        now = time.time() if now is None else now
        return self._rows("SELECT * FROM outbox WHERE state IN ('pending', 'stale') AND next_try <= ? "
                          "ORDER BY next_try, id LIMIT ?", (now, limit))

    def _settle(self, row: OutboxRow, state: str, *, status: str, error: str | None) -> bool:
        """Record the outcome of the work on ``row`` if nothing re-queued the row meanwhile (same version and
        still in the state the work began in). False when the outcome is stale and was dropped."""
        with self.db.write() as db:
            cur = db.execute(
                "UPDATE outbox SET state=?, attempts=attempts+1, last_status=?, last_error=?, "
                "sent_at=CASE WHEN ?='sent' THEN ? ELSE sent_at END WHERE id=? AND version=? AND state=?",
                (state, status, error[:500] if error else None, state, time.time(), row.id, row.version, row.state))
            return cur.rowcount == 1

    def mark_sent(self, row: OutboxRow, *, status: str) -> bool:
        """The destination acknowledged the row's instance (only if the row was not re-queued meanwhile)."""
        return self._settle(row, "sent", status=status, error=None)

    def mark_failed(self, row: OutboxRow, *, status: str, error: str) -> bool:
        return self._settle(row, "failed", status=status, error=error)

    def mark_removed(self, row: OutboxRow, *, status: str) -> bool:
        """A stale row's instance is no longer in the destination."""
        return self._settle(row, "removed", status=status, error=None)

    def mark_kept(self, row: OutboxRow, *, status: str, error: str) -> bool:
        """A stale row's instance stays in the destination: it has no removal method."""
        return self._settle(row, "kept", status=status, error=error)

    def mark_retry(self, row: OutboxRow, *, status: str, error: str) -> float | None:
        """A transient failure: try again after a backoff. None when the row was re-queued meanwhile (it is
        due at once with its new content)."""
        delay = backoff(row.attempts + 1, base=self.backoff_base)
        with self.db.write() as db:
            cur = db.execute(
                "UPDATE outbox SET attempts=attempts+1, next_try=?, last_status=?, last_error=? "
                "WHERE id=? AND version=? AND state=?",
                (time.time() + delay, status, error[:500], row.id, row.version, row.state))
            return delay if cur.rowcount == 1 else None

    def for_job(self, job_id: str) -> list[OutboxRow]:
        return self._rows("SELECT * FROM outbox WHERE job_id=? ORDER BY id", (job_id,))

    def pending(self, job_id: str) -> int:
        """Rows of the job with work left (to send, or to remove from a destination)."""
        return sum(1 for r in self.for_job(job_id) if r.state in OPEN_STATES)
