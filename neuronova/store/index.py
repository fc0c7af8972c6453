"""The SQLite index of stored instances, series and studies (and each study's stability).

One :class:`~neuronova.sqlite.Database` (a write connection behind a lock, pooled readers that never wait for
a commit), shared by the C-STORE handler threads, the STOW-RS route and the study watcher.

Durability: the instance files are the record. Each is fsync'd, with its directory, before its row is
written and before success is answered. The index runs WAL with synchronous=NORMAL: a commit survives a
killed process, and a power cut may lose the last commits, which the store rebuilds at its next start, before
anything listens (:mod:`neuronova.store.reconcile` indexes every complete file found without a row), so an
acknowledged instance is never lost nor taken for a leftover (tests/ingest/test_power_cut.py cuts the power
at random points). FULL would fsync the WAL on every commit: one more flush per group of instances, for rows
the files already guarantee (measured: 4 associations, MR, 640 -> 746 instances/s on the development VM).
"""

from __future__ import annotations

import re
import sqlite3
import threading
import time
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, NamedTuple

from neuronova.sqlite import Database

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
    path TEXT NOT NULL, size INTEGER NOT NULL, received_at REAL NOT NULL,
    patient_id TEXT, issuer_of_patient_id TEXT
);
CREATE INDEX IF NOT EXISTS instances_series ON instances(series_uid);
CREATE INDEX IF NOT EXISTS instances_study ON instances(study_uid);
CREATE INDEX IF NOT EXISTS series_study ON series(study_uid);
CREATE INDEX IF NOT EXISTS studies_unstable ON studies(stable, last_received);
"""


@dataclass(eq=False)
class _PendingRow:
    args: tuple[Any, ...]
    done: bool = False
    error: BaseException | None = None


class Index:
    def __init__(self, path: Path) -> None:
        # Group commit of add_instance (see there): rows waiting, and whether a commit runs.
        self._group = threading.Condition(threading.Lock())
        self._queue: list[_PendingRow] = []
        self._committing = False
        self.db = Database(path, synchronous="NORMAL", schema=SCHEMA,
                           functions={"nn_dicom_match": (3, _dicom_match)})
        columns = self.db.columns("instances")
        for column in ("patient_id", "issuer_of_patient_id"):  # indexes made before these columns existed
            if column not in columns:
                with self.db.write() as db:
                    db.execute(f"ALTER TABLE instances ADD COLUMN {column} TEXT")

    def close(self) -> None:
        self.db.close()

    def transaction(self) -> AbstractContextManager[sqlite3.Connection]:
        return self.db.transaction()

    def query(self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> list[sqlite3.Row]:
        """A read on a pooled connection (it sees every committed row, and never waits for a commit)."""
        return self.db.query(sql, params)

    # --- writes -------------------------------------------------------------------------------------------

    def add_instance(self, attrs: Mapping[str, str], *, transfer_syntax: str, path: str, size: int,
                     received_at: float | None = None) -> None:
        """Index one stored instance (its file is already durable); its study becomes (or stays) not stable
        until it is quiet again.

        Group commit: rows that arrive while a commit runs wait, then go in one transaction together (one WAL
        write for all, instead of one each). A batch
        that fails is retried row by row, so one bad row fails alone."""
        entry = _PendingRow((attrs, transfer_syntax, path, size, time.time() if received_at is None else received_at))
        with self._group:
            self._queue.append(entry)
            while not entry.done:
                if self._committing:
                    self._group.wait()
                    continue
                self._committing = True
                batch, self._queue = self._queue, []
                self._group.release()
                try:
                    self._commit_rows(batch)
                finally:
                    self._group.acquire()
                    self._committing = False
                    for row in batch:
                        row.done = True
                    self._group.notify_all()
        if entry.error is not None:
            raise entry.error

    def _commit_rows(self, batch: list[_PendingRow]) -> None:
        try:
            with self.transaction() as db:
                for row in batch:
                    self._insert_instance(db, *row.args)
            return
        except Exception as exc:  # noqa: BLE001 - retried one by one below
            if len(batch) == 1:
                batch[0].error = exc
                return
        for row in batch:
            try:
                with self.transaction() as db:
                    self._insert_instance(db, *row.args)
            except Exception as exc:  # noqa: BLE001 - handed to the row's caller
                row.error = exc

    @staticmethod
    def _insert_instance(db: sqlite3.Connection, attrs: Mapping[str, str], transfer_syntax: str, path: str,
                         size: int, now: float) -> None:
        a = attrs.get
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
        old = db.execute("SELECT series_uid, study_uid FROM instances WHERE sop_uid=?",
                         (a("SOPInstanceUID"),)).fetchone()
        # A replacement may move the instance to another series or study: the row follows it.
        db.execute(
            """INSERT INTO instances (sop_uid, series_uid, study_uid, sop_class_uid, instance_number,
                   transfer_syntax, path, size, received_at, patient_id, issuer_of_patient_id)
               VALUES (?,?,?,?,?,?,?,?,?,?,?)
               ON CONFLICT(sop_uid) DO UPDATE SET series_uid=excluded.series_uid, study_uid=excluded.study_uid,
                   sop_class_uid=excluded.sop_class_uid, instance_number=excluded.instance_number,
                   transfer_syntax=excluded.transfer_syntax, path=excluded.path, size=excluded.size,
                   received_at=excluded.received_at, patient_id=excluded.patient_id,
                   issuer_of_patient_id=excluded.issuer_of_patient_id""",
            (a("SOPInstanceUID"), a("SeriesInstanceUID"), a("StudyInstanceUID"), a("SOPClassUID"),
             a("InstanceNumber"), transfer_syntax, path, size, now, a("PatientID", ""),
             a("IssuerOfPatientID") or None),
        )
        if old is not None and old["series_uid"] != a("SeriesInstanceUID"):
            # The series (and study) it left: dropped when empty, so that no listing shows an empty series.
            db.execute("DELETE FROM series WHERE series_uid=? AND NOT EXISTS "
                       "(SELECT 1 FROM instances WHERE series_uid=?)", (old["series_uid"], old["series_uid"]))
            if old["study_uid"] != a("StudyInstanceUID"):
                db.execute("DELETE FROM studies WHERE study_uid=? AND NOT EXISTS "
                           "(SELECT 1 FROM series WHERE study_uid=?)", (old["study_uid"], old["study_uid"]))

    def identity_conflict(self, *, sop_uid: str, study_uid: str, series_uid: str, patient_id: str,
                          issuer: str | None) -> str | None:
        """Why an instance would contradict the stored ones (None: it does not): its series is in another study,
        or its patient identity differs from the study's other instances. Says which, never the values."""
        with self.db.reader() as conn:
            other = conn.execute(
                "SELECT study_uid FROM instances WHERE series_uid=? AND sop_uid!=? AND study_uid!=? LIMIT 1",
                (series_uid, sop_uid, study_uid)).fetchone()
            if other is not None:
                return "its SeriesInstanceUID belongs to another study"
            patient = conn.execute(
                """SELECT 1 FROM instances i JOIN studies st ON st.study_uid = i.study_uid
                   WHERE i.study_uid=? AND i.sop_uid!=? AND COALESCE(i.patient_id, st.patient_id, '') != ?
                   LIMIT 1""", (study_uid, sop_uid, patient_id)).fetchone()
            if patient is not None:
                return "its PatientID differs from the study's stored instances"
            if issuer:
                other_issuer = conn.execute(
                    """SELECT 1 FROM instances WHERE study_uid=? AND sop_uid!=? AND issuer_of_patient_id IS NOT NULL
                       AND issuer_of_patient_id != ? LIMIT 1""", (study_uid, sop_uid, issuer)).fetchone()
                if other_issuer is not None:
                    return "its IssuerOfPatientID differs from the study's stored instances"
        return None

    def indexed_paths(self, series_uid: str) -> dict[str, str]:
        """SOP Instance UID -> relative path of every indexed instance of a series."""
        return {r["sop_uid"]: r["path"] for r in self.query("SELECT sop_uid, path FROM instances WHERE series_uid=?",
                                                             (series_uid,))}

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

    # --- QIDO ---------------------------------------------------------------------------------------------
    # Read-only queries for DICOMweb (QIDO-RS searches, WADO-RS listings). Matching keys arrive parsed as
    # Match objects (neuronova.dicomweb.qido parses the request); only the SQL expressions of QIDO_COLUMNS
    # reach the statement text, every value is a parameter.

    def _qido_setup(self) -> None:
        # Lazily, once: indexes on common matching keys (the wildcard function is on every connection).
        if getattr(self, "_qido_ready", False):
            return
        with self.db.write() as db:
            if not getattr(self, "_qido_ready", False):
                db.executescript(QIDO_INDEXES)
                self._qido_ready = True

    def _qido(self, select: str, level: Level, matches: Sequence[Match], order: str, limit: int | None,
              offset: int) -> list[sqlite3.Row]:
        self._qido_setup()
        where, params = _where(matches, level)
        sql = f"{select} WHERE {where} ORDER BY {order} LIMIT ? OFFSET ?"
        return self.query(sql, [*params, -1 if limit is None else limit, offset])

    def qido_studies(self, matches: Sequence[Match], *, limit: int | None = None,
                     offset: int = 0) -> list[sqlite3.Row]:
        """Studies matching every key (series and instance keys match when one series or instance does)."""
        return self._qido(f"SELECT st.*, {_STUDY_AGGREGATES} FROM studies st", "study", matches,
                          "st.study_date DESC, st.study_time DESC, st.study_uid", limit, offset)

    def qido_series(self, matches: Sequence[Match], *, limit: int | None = None,
                    offset: int = 0) -> list[sqlite3.Row]:
        """Series (with their study's columns) matching every key."""
        return self._qido(
            f"SELECT st.*, {_STUDY_AGGREGATES}, se.*, {_SERIES_AGGREGATES} "
            "FROM series se JOIN studies st ON st.study_uid = se.study_uid", "series", matches,
            "se.study_uid, CAST(se.series_number AS INTEGER), se.series_uid", limit, offset)

    def qido_instances(self, matches: Sequence[Match], *, limit: int | None = None,
                       offset: int = 0) -> list[sqlite3.Row]:
        """Instances (with their series' and study's columns) matching every key."""
        return self._qido(
            f"SELECT st.*, {_STUDY_AGGREGATES}, se.*, {_SERIES_AGGREGATES}, i.* "
            "FROM instances i JOIN series se ON se.series_uid = i.series_uid "
            "JOIN studies st ON st.study_uid = i.study_uid", "instance", matches,
            "i.study_uid, CAST(se.series_number AS INTEGER), i.series_uid, CAST(i.instance_number AS INTEGER), "
            "i.sop_uid", limit, offset)

    def retrieve_instances(self, *, study_uid: str, series_uid: str | None = None,
                           sop_uid: str | None = None) -> list[sqlite3.Row]:
        """The instances a WADO-RS request names, in series then instance number order (empty: none)."""
        sql = ("SELECT i.* FROM instances i JOIN series se ON se.series_uid = i.series_uid WHERE i.study_uid = ?")
        params: list[str] = [study_uid]
        if series_uid is not None:
            sql += " AND i.series_uid = ?"
            params.append(series_uid)
        if sop_uid is not None:
            sql += " AND i.sop_uid = ?"
            params.append(sop_uid)
        sql += (" ORDER BY CAST(se.series_number AS INTEGER), se.series_uid, CAST(i.instance_number AS INTEGER), "
                "i.sop_uid")
        return self.query(sql, params)

    def first_instance(self, *, study_uid: str, series_uid: str | None = None) -> sqlite3.Row | None:
        """The instance that stands for a study or series when attributes beyond the index are asked for."""
        sql = ("SELECT i.* FROM instances i JOIN series se ON se.series_uid = i.series_uid WHERE i.study_uid = ?"
               + (" AND i.series_uid = ?" if series_uid is not None else "")
               + " ORDER BY CAST(se.series_number AS INTEGER), se.series_uid, CAST(i.instance_number AS INTEGER), "
                 "i.sop_uid LIMIT 1")
        rows = self.query(sql, (study_uid,) if series_uid is None else (study_uid, series_uid))
        return rows[0] if rows else None

    def series_row(self, series_uid: str) -> sqlite3.Row | None:
        rows = self.query("SELECT * FROM series WHERE series_uid=?", (series_uid,))
        return rows[0] if rows else None


# --- QIDO (module level) ----------------------------------------------------------------------------------

QIDO_INDEXES = """
CREATE INDEX IF NOT EXISTS studies_patient_id ON studies(patient_id);
CREATE INDEX IF NOT EXISTS studies_date ON studies(study_date, study_time);
CREATE INDEX IF NOT EXISTS studies_accession ON studies(accession_number);
CREATE INDEX IF NOT EXISTS series_modality ON series(modality, study_uid);
"""

Level = Literal["study", "series", "instance"]
_LEVELS: dict[str, int] = {"study": 0, "series": 1, "instance": 2}

_STUDY_AGGREGATES = (
    "(SELECT COUNT(*) FROM series x WHERE x.study_uid = st.study_uid) AS study_series_count, "
    "(SELECT COUNT(*) FROM instances x WHERE x.study_uid = st.study_uid) AS study_instance_count, "
    "(SELECT GROUP_CONCAT(DISTINCT x.modality) FROM series x WHERE x.study_uid = st.study_uid) AS study_modalities"
)
_SERIES_AGGREGATES = "(SELECT COUNT(*) FROM instances x WHERE x.series_uid = se.series_uid) AS series_instance_count"


class QidoColumn(NamedTuple):
    level: Level
    #: SQL expression matched (aliases st, se, i, or m inside ``exists``).
    expr: str
    #: For attributes that summarise a study (ModalitiesInStudy): the correlated subquery the match goes in.
    exists: str | None = None


#: The attributes the index can match on, by keyword.
QIDO_COLUMNS: dict[str, QidoColumn] = {
    "StudyInstanceUID": QidoColumn("study", "st.study_uid"),
    "PatientID": QidoColumn("study", "st.patient_id"),
    "PatientName": QidoColumn("study", "st.patient_name"),
    "PatientBirthDate": QidoColumn("study", "st.patient_birth_date"),
    "PatientSex": QidoColumn("study", "st.patient_sex"),
    "StudyDate": QidoColumn("study", "st.study_date"),
    "StudyTime": QidoColumn("study", "st.study_time"),
    "AccessionNumber": QidoColumn("study", "st.accession_number"),
    "StudyDescription": QidoColumn("study", "st.study_description"),
    "StudyID": QidoColumn("study", "st.study_id"),
    "ModalitiesInStudy": QidoColumn("study", "m.modality",
                                    "SELECT 1 FROM series m WHERE m.study_uid = st.study_uid"),
    "SOPClassesInStudy": QidoColumn("study", "m.sop_class_uid",
                                    "SELECT 1 FROM instances m WHERE m.study_uid = st.study_uid"),
    "SeriesInstanceUID": QidoColumn("series", "se.series_uid"),
    "Modality": QidoColumn("series", "se.modality"),
    "SeriesDescription": QidoColumn("series", "se.series_description"),
    "SeriesNumber": QidoColumn("series", "se.series_number"),
    "BodyPartExamined": QidoColumn("series", "se.body_part"),
    "FrameOfReferenceUID": QidoColumn("series", "se.frame_of_reference_uid"),
    "SOPInstanceUID": QidoColumn("instance", "i.sop_uid"),
    "SOPClassUID": QidoColumn("instance", "i.sop_class_uid"),
    "InstanceNumber": QidoColumn("instance", "i.instance_number"),
}


@dataclass(frozen=True)
class Match:
    """One parsed QIDO matching key.

    kind: ``equal`` (values[0]), ``list`` (any of values), ``wildcard`` (values[0] with * and ?), ``range``
    (values = (low, high), either may be "" for open; bounds compare as text, so DA/TM bounds arrive padded),
    ``number`` (an IS compared as an integer).
    """

    attribute: str
    kind: Literal["equal", "list", "wildcard", "range", "number"]
    values: tuple[str, ...]
    ignore_case: bool = False
    #: Person names: the pattern may match the start of any name component (QIDO fuzzymatching=true).
    fuzzy: bool = False

    def __post_init__(self) -> None:
        if self.attribute not in QIDO_COLUMNS:
            raise ValueError(f"the index cannot match on {self.attribute!r}")
        if not self.values or (self.kind == "range" and (len(self.values) != 2 or not any(self.values))):
            raise ValueError(f"a {self.kind} match on {self.attribute} needs values, found {self.values!r}")


def _condition(match: Match, expr: str) -> tuple[str, list[Any]]:
    if match.kind == "equal":
        return f"{expr} = ?", [match.values[0]]
    if match.kind == "list":
        return f"{expr} IN ({','.join('?' * len(match.values))})", list(match.values)
    if match.kind == "wildcard":
        flags = (1 if match.ignore_case else 0) | (2 if match.fuzzy else 0)
        return f"nn_dicom_match({expr}, ?, ?)", [match.values[0], flags]
    if match.kind == "number":
        return f"(TRIM({expr}) != '' AND CAST({expr} AS INTEGER) = ?)", [int(match.values[0])]
    low, high = match.values
    parts, params = [f"{expr} != ''"], []
    if low:
        parts.append(f"{expr} >= ?")
        params.append(low)
    if high:
        parts.append(f"{expr} <= ?")
        params.append(high)
    return "(" + " AND ".join(parts) + ")", params


def _where(matches: Sequence[Match], level: Level) -> tuple[str, list[Any]]:
    """Keys of the query's level and above are plain conditions; keys below it (a relational query) must
    all hold for one series (or instance) of the result, so they go into one EXISTS."""
    direct: list[str] = []
    params: list[Any] = []
    lower: dict[Level, list[tuple[str, list[Any]]]] = {"series": [], "instance": []}
    for match in matches:
        column = QIDO_COLUMNS[match.attribute]
        cond, cond_params = _condition(match, column.expr)
        if column.exists is not None:
            cond = f"EXISTS ({column.exists} AND {cond})"
        if _LEVELS[column.level] <= _LEVELS[level]:
            direct.append(cond)
            params.extend(cond_params)
        else:
            lower[column.level].append((cond, cond_params))
    if lower["instance"]:
        correlate = "i.study_uid = st.study_uid" if level == "study" else "i.series_uid = se.series_uid"
        join = " JOIN series se ON se.series_uid = i.series_uid" if level == "study" else ""
        conds = [correlate, *(c for c, _ in lower["series"] + lower["instance"])]
        direct.append(f"EXISTS (SELECT 1 FROM instances i{join} WHERE {' AND '.join(conds)})")
        params.extend(p for _, ps in lower["series"] + lower["instance"] for p in ps)
    elif lower["series"]:
        conds = ["se.study_uid = st.study_uid", *(c for c, _ in lower["series"])]
        direct.append(f"EXISTS (SELECT 1 FROM series se WHERE {' AND '.join(conds)})")
        params.extend(p for _, ps in lower["series"] for p in ps)
    return (" AND ".join(direct) or "1"), params


@lru_cache(maxsize=256)
def _wildcard_regex(pattern: str, flags: int) -> re.Pattern[str]:
    body = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    if flags & 2:
        # Fuzzy person-name matching: the pattern may start any component (family, given, ...) and may be a
        # prefix of it, so "joh" finds "Doe^John".
        body = r"(?:.*[\^=\s])?" + body + ".*"
    return re.compile(body, re.IGNORECASE | re.DOTALL if flags & 1 else re.DOTALL)


def _dicom_match(value: str | None, pattern: str, flags: int) -> int:
    if value is None:
        return 0
    return 1 if _wildcard_regex(pattern, flags).fullmatch(value) else 0
