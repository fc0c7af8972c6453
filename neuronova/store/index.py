"""The SQLite index of stored instances, series and studies (and each study's stability).

One connection guarded by a lock: SQLite serialises writers anyway, and the C-STORE handler threads, the
STOW-RS route and the study watcher all share it. WAL with synchronous=NORMAL makes a commit durable against
a killed process (the invariant); the instance files themselves are fsync'd before they are indexed.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS studies (
    study_uid TEXT PRIMARY KEY,
    patient_id TEXT, patient_name TEXT, patient_birth_date TEXT, patient_sex TEXT,
    study_date TEXT, study_time TEXT, accession_number TEXT, study_description TEXT, study_id TEXT,
    first_received REAL NOT NULL, last_received REAL NOT NULL,
    stable INTEGER NOT NULL DEFAULT 0, stable_at REAL, stable_generation INTEGER NOT NULL DEFAULT 0,
    -- the stable generation whose jobs were created; less than stable_generation means routing is owed
    routed_generation INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS series (
    series_uid TEXT PRIMARY KEY,
    study_uid TEXT NOT NULL REFERENCES studies(study_uid),
    modality TEXT, series_description TEXT, series_number TEXT, body_part TEXT, frame_of_reference_uid TEXT,
    last_received REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS instances (
    sop_uid TEXT PRIMARY KEY,
    series_uid TEXT NOT NULL REFERENCES series(series_uid),
    study_uid TEXT NOT NULL,
    sop_class_uid TEXT NOT NULL, instance_number TEXT, transfer_syntax TEXT NOT NULL,
    path TEXT NOT NULL, size INTEGER NOT NULL, received_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS instances_series ON instances(series_uid);
CREATE INDEX IF NOT EXISTS instances_study ON instances(study_uid);
CREATE INDEX IF NOT EXISTS series_study ON series(study_uid);
CREATE INDEX IF NOT EXISTS studies_unstable ON studies(stable, last_received);
"""


class Index:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def query(self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    # --- writes -------------------------------------------------------------------------------------------

    def add_instance(self, attrs: Mapping[str, str], *, transfer_syntax: str, path: str, size: int,
                     received_at: float | None = None) -> None:
        """Index one stored instance; its study becomes (or stays) not stable until it is quiet again."""
        now = time.time() if received_at is None else received_at
        a = attrs.get
        with self.transaction() as db:
            db.execute(
                """INSERT INTO studies (study_uid, patient_id, patient_name, patient_birth_date, patient_sex,
                       study_date, study_time, accession_number, study_description, study_id,
                       first_received, last_received, stable)
                   VALUES (?,?,?,?,?,?,?,?,?,?,?,?,0)
                   ON CONFLICT(study_uid) DO UPDATE SET last_received=excluded.last_received, stable=0""",
                (a("StudyInstanceUID"), a("PatientID"), a("PatientName"), a("PatientBirthDate"), a("PatientSex"),
                 a("StudyDate"), a("StudyTime"), a("AccessionNumber"), a("StudyDescription"), a("StudyID"), now, now),
            )
            db.execute(
                """INSERT INTO series (series_uid, study_uid, modality, series_description, series_number, body_part,
                       frame_of_reference_uid, last_received)
                   VALUES (?,?,?,?,?,?,?,?)
                   ON CONFLICT(series_uid) DO UPDATE SET last_received=excluded.last_received""",
                (a("SeriesInstanceUID"), a("StudyInstanceUID"), a("Modality"), a("SeriesDescription"),
                 a("SeriesNumber"), a("BodyPartExamined"), a("FrameOfReferenceUID"), now),
            )
            db.execute(
                """INSERT INTO instances (sop_uid, series_uid, study_uid, sop_class_uid, instance_number,
                       transfer_syntax, path, size, received_at)
                   VALUES (?,?,?,?,?,?,?,?,?)
                   ON CONFLICT(sop_uid) DO UPDATE SET size=excluded.size, transfer_syntax=excluded.transfer_syntax,
                       received_at=excluded.received_at""",
                (a("SOPInstanceUID"), a("SeriesInstanceUID"), a("StudyInstanceUID"), a("SOPClassUID"),
                 a("InstanceNumber"), transfer_syntax, path, size, now),
            )

    # --- stability ----------------------------------------------------------------------------------------

    def mark_stable_studies(self, *, quiet_seconds: float, now: float | None = None) -> list[tuple[str, int]]:
        """Mark every study quiet for ``quiet_seconds`` stable; return (study_uid, generation) of each."""
        now = time.time() if now is None else now
        with self.transaction() as db:
            rows = db.execute(
                "SELECT study_uid FROM studies WHERE stable=0 AND last_received <= ?", (now - quiet_seconds,)
            ).fetchall()
            out = []
            for row in rows:
                gen = db.execute(
                    """UPDATE studies SET stable=1, stable_at=?, stable_generation=stable_generation+1
                       WHERE study_uid=? RETURNING stable_generation""",
                    (now, row["study_uid"]),
                ).fetchone()[0]
                out.append((row["study_uid"], gen))
            return out

    def mark_study_stable(self, study_uid: str) -> int | None:
        """Declare a study stable now (an explicit request); return its generation, None if unknown."""
        with self.transaction() as db:
            row = db.execute(
                """UPDATE studies SET stable=1, stable_at=?, stable_generation=stable_generation+1
                   WHERE study_uid=? RETURNING stable_generation""",
                (time.time(), study_uid),
            ).fetchone()
            return None if row is None else int(row[0])

    def studies_owing_routing(self) -> list[tuple[str, int]]:
        """Stable studies whose jobs were not yet created for their current generation (e.g. after a crash)."""
        rows = self.query("SELECT study_uid, stable_generation FROM studies WHERE stable=1 "
                          "AND routed_generation < stable_generation")
        return [(r["study_uid"], r["stable_generation"]) for r in rows]

    def mark_routed(self, study_uid: str, generation: int) -> None:
        with self.transaction() as db:
            db.execute("UPDATE studies SET routed_generation=MAX(routed_generation, ?) WHERE study_uid=?",
                       (generation, study_uid))

    # --- reads --------------------------------------------------------------------------------------------

    def study(self, study_uid: str) -> sqlite3.Row | None:
        rows = self.query("SELECT * FROM studies WHERE study_uid=?", (study_uid,))
        return rows[0] if rows else None

    def series_of_study(self, study_uid: str) -> list[sqlite3.Row]:
        return self.query(
            """SELECT s.*, COUNT(i.sop_uid) AS instance_count FROM series s
               LEFT JOIN instances i ON i.series_uid = s.series_uid
               WHERE s.study_uid=? GROUP BY s.series_uid ORDER BY CAST(s.series_number AS INTEGER)""",
            (study_uid,),
        )

    def instances_of_series(self, series_uid: str) -> list[sqlite3.Row]:
        return self.query(
            "SELECT * FROM instances WHERE series_uid=? ORDER BY CAST(instance_number AS INTEGER), sop_uid",
            (series_uid,),
        )

    def instance(self, sop_uid: str) -> sqlite3.Row | None:
        rows = self.query("SELECT * FROM instances WHERE sop_uid=?", (sop_uid,))
        return rows[0] if rows else None
