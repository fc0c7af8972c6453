"""The embedded job table: SQLite in the data directory (WAL), shared by the processes of one machine.

A compare-and-set is one ``UPDATE ... WHERE <conditions> RETURNING *``: SQLite runs a statement atomically
and serialises writers across processes, so two workers' claims cannot both match.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from neuronova.jobs.model import ACTIVE_STATES, FIELD_NAMES, Job, JobState, RoutingRecord, record_value
from neuronova.jobs.store import Cond, JobStore
from neuronova.sqlite import Database

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    job_id TEXT PRIMARY KEY,
    study_uid TEXT NOT NULL, series_uid TEXT NOT NULL, pipeline TEXT NOT NULL, model_version TEXT NOT NULL,
    input_fingerprint TEXT NOT NULL, state TEXT NOT NULL, progress REAL NOT NULL,
    attempts INTEGER NOT NULL, run INTEGER NOT NULL, error_code TEXT, error_message TEXT,
    created_at REAL NOT NULL, updated_at REAL NOT NULL, due_at REAL NOT NULL,
    started_at REAL, heartbeat_at REAL, finished_at REAL, lease_expires_at REAL,
    worker TEXT, claim_token TEXT, result_instances TEXT NOT NULL, summary TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_updated ON jobs(updated_at, job_id);
CREATE INDEX IF NOT EXISTS jobs_study ON jobs(study_uid);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state, lease_expires_at);
CREATE INDEX IF NOT EXISTS jobs_queued ON jobs(state, due_at);
CREATE TABLE IF NOT EXISTS routing (
    study_uid TEXT NOT NULL, series_uid TEXT NOT NULL, record TEXT NOT NULL,
    PRIMARY KEY (study_uid, series_uid)
);
"""

_OPS = {"eq": "=", "le": "<=", "lt": "<"}


class SqliteJobStore(JobStore):
    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = Path(path)
        # NORMAL in WAL: a commit survives a killed process (not a power cut): after a cut the reconciler and
        # the study watcher re-create what a lost commit held (jobs are derived from the instance index).
        self.db = Database(self.path, synchronous="NORMAL", schema=SCHEMA)

    def close(self) -> None:
        self.db.close()

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        return self.db.query(sql, params)

    def _write(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        return self.db.execute(sql, params)

    def _insert(self, job: Job) -> bool:
        rec = job.to_record()
        cols = ", ".join(rec)
        marks = ", ".join("?" for _ in rec)
        with self.db.write() as db:
            cur = db.execute(f"INSERT OR IGNORE INTO jobs ({cols}) VALUES ({marks})", list(rec.values()))
            return cur.rowcount == 1

    def _update(self, job_id: str, *, where: Sequence[Cond], set: Mapping[str, Any],
                incr: Mapping[str, int] | None = None) -> Job | None:
        assigns, params = [], []
        for name, value in set.items():
            assigns.append(f"{_col(name)} = ?")
            params.append(record_value(name, value))
        for name, step in (incr or {}).items():
            assigns.append(f"{_col(name)} = {_col(name)} + ?")
            params.append(int(step))
        clauses = ["job_id = ?"]
        params.append(job_id)
        for name, op, value in where:
            if op == "eq" and value is None:
                clauses.append(f"{_col(name)} IS NULL")
            elif op == "in":
                values = [record_value(name, v) for v in value]
                clauses.append(f"{_col(name)} IN ({', '.join('?' for _ in values)})")
                params.extend(values)
            elif op in _OPS:
                clauses.append(f"{_col(name)} {_OPS[op]} ?")
                params.append(record_value(name, value))
            else:
                raise ValueError(f"unknown condition operator {op!r}")
        sql = f"UPDATE jobs SET {', '.join(assigns)} WHERE {' AND '.join(clauses)} RETURNING *"
        rows = self._write(sql, params)
        return Job.from_record(dict(rows[0])) if rows else None

    def get(self, job_id: str) -> Job | None:
        rows = self._query("SELECT * FROM jobs WHERE job_id = ?", (job_id,))
        return Job.from_record(dict(rows[0])) if rows else None

    def jobs_of_study(self, study_uid: str) -> list[Job]:
        rows = self._query("SELECT * FROM jobs WHERE study_uid = ? ORDER BY series_uid, pipeline", (study_uid,))
        return [Job.from_record(dict(r)) for r in rows]

    def list_jobs(self, *, state: JobState | None = None, study_uid: str | None = None, since: float | None = None,
                  after: tuple[float, str] | None = None, limit: int = 100) -> list[Job]:
        clauses, params = [], []
        if state is not None:
            clauses.append("state = ?")
            params.append(str(JobState(state)))
        if study_uid is not None:
            clauses.append("study_uid = ?")
            params.append(study_uid)
        if since is not None:
            clauses.append("updated_at >= ?")
            params.append(float(since))
        if after is not None:
            clauses.append("(updated_at > ? OR (updated_at = ? AND job_id > ?))")
            params.extend([float(after[0]), float(after[0]), after[1]])
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = self._query(f"SELECT * FROM jobs {where} ORDER BY updated_at, job_id LIMIT ?", [*params, int(limit)])
        return [Job.from_record(dict(r)) for r in rows]

    def _active_with_lease_before(self, t: float) -> list[Job]:
        rows = self._query("SELECT * FROM jobs WHERE state IN (?, ?) AND lease_expires_at < ?",
                           (*[str(s) for s in ACTIVE_STATES], t))
        return [Job.from_record(dict(r)) for r in rows]

    def _queued_due_before(self, t: float) -> list[Job]:
        rows = self._query("SELECT * FROM jobs WHERE state = ? AND due_at < ? ORDER BY due_at",
                           (str(JobState.QUEUED), t))
        return [Job.from_record(dict(r)) for r in rows]

    def _in_state(self, state: JobState) -> list[Job]:
        rows = self._query("SELECT * FROM jobs WHERE state = ? ORDER BY updated_at", (str(state),))
        return [Job.from_record(dict(r)) for r in rows]

    def set_routing(self, record: RoutingRecord) -> None:
        self._write("INSERT INTO routing (study_uid, series_uid, record) VALUES (?, ?, ?) "
                    "ON CONFLICT(study_uid, series_uid) DO UPDATE SET record = excluded.record",
                    (record.study_uid, record.series_uid, record.to_json()))

    def routing_of_study(self, study_uid: str) -> list[RoutingRecord]:
        rows = self._query("SELECT record FROM routing WHERE study_uid = ? ORDER BY series_uid", (study_uid,))
        return [RoutingRecord.from_json(r["record"]) for r in rows]

    def counts(self) -> dict[str, int]:
        out = {str(s): 0 for s in JobState}
        for row in self._query("SELECT state, COUNT(*) AS n FROM jobs GROUP BY state"):
            out[row["state"]] = int(row["n"])
        return out


def _col(name: str) -> str:
    # Column names come from the code, never from a request; checked anyway since they are spliced into SQL.
    if name not in FIELD_NAMES:
        raise ValueError(f"no job field named {name!r}")
    return name
