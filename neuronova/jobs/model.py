"""The job record: one per (series, pipeline), and its states.

A study pipeline's job takes several series of one study, each in a role (t1c, flair, ...): its ``series_uid``
is the reference series (the one its results are drawn on, whose UIDs they derive from) and its
``input_fingerprint`` is a :class:`StudyInputs` text, which names the series of each role besides the digest of
their instances, so a worker knows its inputs from the job record alone (on any backend) and a late series,
a changed role or a replaced instance re-opens the job.

``queued -> running -> writing -> sending -> done``, or ``failed`` with an error code, a message and the
attempt count. A job that is reset (its inputs changed, or a reprocess was asked) goes back to ``queued``
with its ``run`` number incremented; the job id stays, so the watcher re-delivering a study is idempotent.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from enum import StrEnum
from typing import Any


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    WRITING = "writing"
    SENDING = "sending"
    DONE = "done"
    FAILED = "failed"


#: States in which a worker holds the job's lease (and heartbeats).
ACTIVE_STATES = (JobState.RUNNING, JobState.WRITING)
FINAL_STATES = (JobState.DONE, JobState.FAILED)

#: Name-based job ids: the same (series, pipeline) is always the same job.
JOB_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:neuronova:job")


def job_id_for(series_uid: str, pipeline: str) -> str:
    return str(uuid.uuid5(JOB_NAMESPACE, f"{series_uid}\n{pipeline}"))


#: Prefix of a study job's input fingerprint (see StudyInputs).
STUDY_INPUTS_PREFIX = "roles:"


@dataclass(frozen=True)
class StudyInputs:
    """Role -> series of a study job, plus the SHA-256 over their instances."""

    roles: tuple[tuple[str, str], ...]  # (role, series UID) in the pipeline's role order
    digest: str

    def encode(self) -> str:
        return STUDY_INPUTS_PREFIX + ";".join(f"{role}={uid}" for role, uid in self.roles) + f"|{self.digest}"

    @classmethod
    def decode(cls, text: str) -> StudyInputs | None:
        """The inputs of a study job's fingerprint; None for a single-series job's (a bare digest)."""
        if not text.startswith(STUDY_INPUTS_PREFIX) or "|" not in text:
            return None
        body, digest = text[len(STUDY_INPUTS_PREFIX):].rsplit("|", 1)
        pairs = []
        for item in filter(None, body.split(";")):
            role, sep, uid = item.partition("=")
            if not sep or not role or not uid:
                raise ValueError(f"malformed study inputs item {item!r}")
            pairs.append((role, uid))
        return cls(tuple(pairs), digest)

    @property
    def by_role(self) -> dict[str, str]:
        return dict(self.roles)


@dataclass(frozen=True)
class ResultInstance:
    sop_class_uid: str
    sop_instance_uid: str
    series_uid: str


@dataclass(frozen=True)
class Job:
    job_id: str
    study_uid: str
    series_uid: str
    pipeline: str
    model_version: str
    input_fingerprint: str
    state: JobState = JobState.QUEUED
    progress: float = 0.0
    #: Claims so far in this run (a claim after a crashed worker counts too).
    attempts: int = 0
    #: 1 for the first run; incremented each time the job is reset.
    run: int = 1
    error_code: str | None = None
    error_message: str | None = None
    created_at: float = 0.0
    updated_at: float = 0.0
    #: Earliest start: when the queue message was sent, or when a retry's delayed message becomes due.
    due_at: float = 0.0
    started_at: float | None = None
    heartbeat_at: float | None = None
    finished_at: float | None = None
    lease_expires_at: float | None = None
    worker: str | None = None
    #: Fencing token of the current claim: every write by a worker must present it.
    claim_token: str | None = None
    result_instances: tuple[ResultInstance, ...] = ()
    summary: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def new(cls, *, study_uid: str, series_uid: str, pipeline: str, model_version: str, input_fingerprint: str,
            now: float | None = None) -> Job:
        now = time.time() if now is None else now
        return cls(job_id=job_id_for(series_uid, pipeline), study_uid=study_uid, series_uid=series_uid,
                   pipeline=pipeline, model_version=model_version, input_fingerprint=input_fingerprint,
                   created_at=now, updated_at=now, due_at=now)

    # --- records (what the backends store) -------------------------------------------------------------

    def to_record(self) -> dict[str, str | int | float | None]:
        """Flat values: lists and dicts as JSON text, the state as its string."""
        return {f.name: record_value(f.name, getattr(self, f.name)) for f in fields(self)}

    @classmethod
    def from_record(cls, rec: Mapping[str, Any]) -> Job:
        """Inverse of :meth:`to_record`; accepts strings for every value (Redis hashes) and missing Nones."""
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = rec.get(f.name)
            if raw is None or (raw == "" and f.name in NULLABLE):
                continue
            if isinstance(raw, bytes):
                raw = raw.decode()
            if f.name in FLOAT_FIELDS:
                values[f.name] = float(raw)
            elif f.name in INT_FIELDS:
                values[f.name] = int(raw)
            elif f.name == "state":
                values[f.name] = JobState(raw)
            elif f.name == "result_instances":
                values[f.name] = tuple(ResultInstance(**r) for r in json.loads(raw))
            elif f.name == "summary":
                values[f.name] = json.loads(raw)
            else:
                values[f.name] = str(raw)
        return cls(**values)


FIELD_NAMES = tuple(f.name for f in fields(Job))
FLOAT_FIELDS = frozenset({"progress", "created_at", "updated_at", "due_at", "started_at", "heartbeat_at",
                          "finished_at", "lease_expires_at"})
INT_FIELDS = frozenset({"attempts", "run"})
NULLABLE = frozenset({"error_code", "error_message", "started_at", "heartbeat_at", "finished_at",
                      "lease_expires_at", "worker", "claim_token"})


def record_value(name: str, value: Any) -> str | int | float | None:
    """One field as the backends store it."""
    if name not in FIELD_NAMES:
        raise ValueError(f"no job field named {name!r}")
    if name == "result_instances":
        return json.dumps([asdict(r) for r in value], separators=(",", ":"))
    if name == "summary":
        return json.dumps(value, separators=(",", ":"))
    if name == "state":
        return str(JobState(value))
    if value is None or name in INT_FIELDS:
        return value
    return float(value) if name in FLOAT_FIELDS else str(value)


@dataclass(frozen=True)
class RoutingRecord:
    """What routing decided for one series at one stable generation (also when nothing matched)."""

    study_uid: str
    series_uid: str
    generation: int
    pipelines: tuple[str, ...]
    reason: str
    decided_at: float
    #: Set on the node's own result series (the job that wrote them): never routed, so no job runs on results.
    output_of: str | None = None
    #: Study pipeline -> the role this series fills in its job (absent: matched no role, or another series of
    #: the study filled the role).
    roles: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "pipelines": list(self.pipelines)}, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> RoutingRecord:
        d = json.loads(text)
        return cls(study_uid=d["study_uid"], series_uid=d["series_uid"], generation=int(d["generation"]),
                   pipelines=tuple(d["pipelines"]), reason=d["reason"], decided_at=float(d["decided_at"]),
                   output_of=d.get("output_of"), roles=dict(d.get("roles") or {}))
