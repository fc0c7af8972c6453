"""The job table: one interface, two backends (SQLite embedded, Redis shared), one contract test suite.

A backend implements a handful of primitives, the most important being ``_update``: an atomic
compare-and-set ("if these conditions hold, set these fields"). Every state change below is one such
call, so two workers, two reconcilers or a worker racing a reprocess can never both win: a claim hands
out a fresh ``claim_token`` and every later write by the worker must present it (a fencing token).

Huey delivers a message at most once and may lose it (a killed worker, a flushed Redis); the job table
is the durable truth from which the reconciler re-sends messages.
"""

from __future__ import annotations

import logging
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from neuronova.jobs.model import ACTIVE_STATES, FINAL_STATES, Job, JobState, ResultInstance, RoutingRecord

log = logging.getLogger(__name__)

#: A condition of a compare-and-set: (field, op, value) with op one of "eq" (None: unset), "in", "le", "lt".
Cond = tuple[str, str, Any]
#: Called with the job after it became done or failed (the webhook).
EndListener = Callable[[Job], None]

#: A claim accepts a message up to this early (clocks of several machines differ a little).
CLAIM_SLACK_SECONDS = 0.5

#: A job leaves a worker's hands: no claim, no lease (the worker's name stays on a finished job, for display).
_END_CLAIM = {"claim_token": None, "lease_expires_at": None}
_RELEASE = {**_END_CLAIM, "worker": None}


class JobStore(ABC):
    """Durable job records. Timestamps are epoch seconds; ``now`` arguments exist for tests."""

    def __init__(self) -> None:
        self._listeners: list[EndListener] = []

    # --- primitives a backend implements ------------------------------------------------------------------

    @abstractmethod
    def _insert(self, job: Job) -> bool:
        """Store ``job`` unless a job with its id exists; True when stored."""

    @abstractmethod
    def _update(self, job_id: str, *, where: Sequence[Cond], set: Mapping[str, Any],
                incr: Mapping[str, int] | None = None) -> Job | None:
        """Atomically: when the job exists and every condition holds, apply ``set`` and ``incr``; return the
        new job, else None."""

    @abstractmethod
    def get(self, job_id: str) -> Job | None: ...

    @abstractmethod
    def jobs_of_study(self, study_uid: str) -> list[Job]: ...

    @abstractmethod
    def list_jobs(self, *, state: JobState | None = None, study_uid: str | None = None, since: float | None = None,
                  after: tuple[float, str] | None = None, limit: int = 100) -> list[Job]:
        """Jobs ordered by (updated_at, job_id), updated at or after ``since``, strictly after the cursor
        ``after`` (the last job of the previous page)."""

    @abstractmethod
    def _active_with_lease_before(self, t: float) -> list[Job]: ...

    @abstractmethod
    def _queued_due_before(self, t: float) -> list[Job]: ...

    @abstractmethod
    def _in_state(self, state: JobState) -> list[Job]: ...

    @abstractmethod
    def set_routing(self, record: RoutingRecord) -> None: ...

    @abstractmethod
    def routing_of_study(self, study_uid: str) -> list[RoutingRecord]: ...

    @abstractmethod
    def counts(self) -> dict[str, int]:
        """Jobs per state (every state present, zero included)."""

    @abstractmethod
    def close(self) -> None: ...

    # --- listeners ----------------------------------------------------------------------------------------

    def add_end_listener(self, listener: EndListener) -> None:
        self._listeners.append(listener)

    def _changed(self, job: Job | None) -> Job | None:
        if job is not None and job.state in FINAL_STATES:
            for listener in self._listeners:
                try:
                    listener(job)
                except Exception:
                    log.exception("a job-end listener failed for job %s", job.job_id)
        return job

    # --- creation and reset -------------------------------------------------------------------------------

    def ensure_job(self, *, study_uid: str, series_uid: str, pipeline: str, model_version: str,
                   input_fingerprint: str, now: float | None = None) -> tuple[Job, bool]:
        """The job of (series, pipeline) for these inputs; True when it must be (re)enqueued: it is new, or its
        inputs or model version changed (then it is reset, whatever its state)."""
        now = time.time() if now is None else now
        new = Job.new(study_uid=study_uid, series_uid=series_uid, pipeline=pipeline, model_version=model_version,
                      input_fingerprint=input_fingerprint, now=now)
        if self._insert(new):
            return new, True
        for _ in range(10):
            current = self.get(new.job_id)
            if current is None:  # removed meanwhile (no API removes jobs; be safe)
                if self._insert(new):
                    return new, True
                continue
            if current.input_fingerprint == input_fingerprint and current.model_version == model_version:
                return current, False
            reset = self._update(new.job_id, where=[("run", "eq", current.run)],
                                 set={**_reset_fields(now), "input_fingerprint": input_fingerprint,
                                      "model_version": model_version, "study_uid": study_uid},
                                 incr={"run": 1})
            if reset is not None:
                return reset, True
        raise RuntimeError(f"job {new.job_id}: could not settle concurrent resets")

    def reset(self, job_id: str, *, model_version: str | None = None, now: float | None = None) -> Job | None:
        """Back to queued for a new run (reprocess), whatever the state; a worker still running the old run
        loses its claim at its next heartbeat or write."""
        now = time.time() if now is None else now
        changes = _reset_fields(now)
        if model_version is not None:
            changes["model_version"] = model_version
        return self._update(job_id, where=[], set=changes, incr={"run": 1})

    # --- the worker's path --------------------------------------------------------------------------------

    def claim(self, job_id: str, *, worker: str, lease_seconds: float, now: float | None = None) -> Job | None:
        """Take the job to run it: a queued job that is due, or an active one whose lease expired (its worker
        died). Counts an attempt. The returned job carries the claim token; None when not claimable."""
        now = time.time() if now is None else now
        changes = {"state": JobState.RUNNING, "worker": worker, "claim_token": uuid.uuid4().hex, "started_at": now,
                   "heartbeat_at": now, "lease_expires_at": now + lease_seconds, "progress": 0.0,
                   "updated_at": now}
        job = self._update(job_id, where=[("state", "eq", JobState.QUEUED),
                                          ("due_at", "le", now + CLAIM_SLACK_SECONDS)],
                           set=changes, incr={"attempts": 1})
        if job is None:
            job = self._update(job_id, where=[("state", "in", ACTIVE_STATES), ("lease_expires_at", "lt", now)],
                               set=changes, incr={"attempts": 1})
        return job

    def heartbeat(self, job_id: str, token: str, *, lease_seconds: float, progress: float | None = None,
                  now: float | None = None) -> bool:
        """Extend the lease; False when the claim was lost (the job was reset or taken over)."""
        now = time.time() if now is None else now
        changes: dict[str, Any] = {"heartbeat_at": now, "lease_expires_at": now + lease_seconds, "updated_at": now}
        if progress is not None:
            changes["progress"] = float(progress)
        return self._update(job_id, where=_holding(token), set=changes) is not None

    def advance(self, job_id: str, token: str, state: JobState, *, now: float | None = None,
                **changes: Any) -> Job | None:
        """A fenced step of the worker: running -> writing, writing -> sending or done (with results)."""
        if state not in (JobState.RUNNING, JobState.WRITING, JobState.SENDING, JobState.DONE):
            raise ValueError(f"advance() moves to running, writing, sending or done, not {state}")
        now = time.time() if now is None else now
        values: dict[str, Any] = {**changes, "state": state, "updated_at": now}
        if state in (JobState.SENDING, JobState.DONE):
            values.update(_END_CLAIM)
        if state == JobState.DONE:
            values.update(finished_at=now, progress=100.0, error_code=None, error_message=None)
        return self._changed(self._update(job_id, where=_holding(token), set=values))

    def retry_later(self, job_id: str, token: str, *, delay: float, error_code: str, error_message: str,
                    now: float | None = None) -> Job | None:
        """A transient failure: back to queued, due after ``delay`` seconds, the error kept for display."""
        now = time.time() if now is None else now
        return self._update(job_id, where=_holding(token),
                            set={**_RELEASE, "state": JobState.QUEUED, "due_at": now + delay, "updated_at": now,
                                 "error_code": error_code, "error_message": error_message})

    def fail(self, job_id: str, *, error_code: str, error_message: str, token: str | None = None,
             now: float | None = None) -> Job | None:
        """Failed for good; with ``token`` only while that claim holds, without it from any state but final."""
        now = time.time() if now is None else now
        where = _holding(token) if token is not None else [
            ("state", "in", tuple(s for s in JobState if s not in FINAL_STATES))]
        return self._changed(self._update(job_id, where=where, set={
            **_END_CLAIM, "state": JobState.FAILED, "error_code": error_code, "error_message": error_message,
            "finished_at": now, "updated_at": now}))

    def mark_sent(self, job_id: str, *, now: float | None = None) -> Job | None:
        """Every result was acknowledged by every destination: sending -> done (the outbox calls this).
        None when the job is not in ``sending`` (already done, or reset meanwhile)."""
        now = time.time() if now is None else now
        return self._changed(self._update(job_id, where=[("state", "eq", JobState.SENDING)], set={
            "state": JobState.DONE, "progress": 100.0, "finished_at": now, "updated_at": now,
            "error_code": None, "error_message": None}))

    # --- the reconciler's path ----------------------------------------------------------------------------

    def expired(self, *, now: float | None = None) -> list[Job]:
        """Active jobs whose worker stopped heartbeating."""
        now = time.time() if now is None else now
        return [j for j in self._active_with_lease_before(now)
                if j.state in ACTIVE_STATES and j.lease_expires_at is not None and j.lease_expires_at < now]

    def recover(self, job: Job, *, max_attempts: int, now: float | None = None) -> Job | None:
        """``job`` (as read by :meth:`expired`) lost its worker: queued again, or failed after ``max_attempts``.
        None when something else changed it meanwhile."""
        now = time.time() if now is None else now
        where: list[Cond] = [("claim_token", "eq", job.claim_token), ("state", "in", ACTIVE_STATES),
                             ("lease_expires_at", "lt", now)]
        if job.attempts >= max_attempts:
            return self._changed(self._update(job.job_id, where=where, set={
                **_END_CLAIM, "state": JobState.FAILED, "error_code": "WORKER_LOST",
                "error_message": f"the worker stopped heartbeating in each of {job.attempts} attempts",
                "finished_at": now, "updated_at": now}))
        return self._update(job.job_id, where=where, set={**_RELEASE, "state": JobState.QUEUED, "due_at": now,
                                                          "updated_at": now})

    def queued_due_before(self, t: float) -> list[Job]:
        return [j for j in self._queued_due_before(t) if j.state == JobState.QUEUED and j.due_at < t]

    def sending(self) -> list[Job]:
        return self._in_state(JobState.SENDING)


def _holding(token: str) -> list[Cond]:
    return [("claim_token", "eq", token), ("state", "in", ACTIVE_STATES)]


def _reset_fields(now: float) -> dict[str, Any]:
    return {**_RELEASE, "state": JobState.QUEUED, "progress": 0.0, "attempts": 0, "error_code": None,
            "error_message": None, "started_at": None, "heartbeat_at": None, "finished_at": None,
            "due_at": now, "updated_at": now, "result_instances": (), "summary": {}}


def results_of(datasets: Iterable[Any]) -> tuple[ResultInstance, ...]:
    """Result instances of encoded pydicom datasets."""
    return tuple(ResultInstance(sop_class_uid=str(ds.SOPClassUID), sop_instance_uid=str(ds.SOPInstanceUID),
                                series_uid=str(ds.SeriesInstanceUID)) for ds in datasets)


def open_job_store(*, data_dir: Path, url: str | None) -> JobStore:
    """``url`` None: SQLite in the data directory (one machine); ``redis://...``: shared by every worker."""
    if url is None:
        from neuronova.jobs.store_sqlite import SqliteJobStore

        return SqliteJobStore(Path(data_dir) / "jobs.sqlite3")
    from neuronova.jobs.store_redis import RedisJobStore

    return RedisJobStore(url)
