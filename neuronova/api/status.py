"""The status API for the Django backend: studies, their series and jobs, and reprocessing.

Thin routes over :mod:`neuronova.jobs.service`. They expect on ``app.state`` (``JobSystem.app_state()`` gives
the job entries):

- ``store``: the InstanceStore; ``jobs``: the JobStore; ``enqueue``: ``enqueue(job_id, delay=0.0)``;
- ``routing_rules`` (optional, default: the rules file of ``settings.routing_rules`` or the shipped one) and
  ``pipelines`` (optional, default: the pipeline registry), for reprocessing;
- ``wado_base`` (optional, default ``/dicomweb``): the prefix of the WADO-RS links of result instances.

The router carries no authentication: the app adds it when including the router.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from fastapi import APIRouter, Body, Query, Request
from pydantic import BaseModel, Field

from neuronova.errors import InvalidRequest
from neuronova.jobs import service
from neuronova.jobs.model import JobState
from neuronova.jobs.views import iso, job_json, routing_json
from neuronova.pipelines.registry import pipelines as registered_pipelines
from neuronova.routing.rules import load_rules
from neuronova.store.uids import is_valid_uid

router = APIRouter(prefix="/api/v1", tags=["status"])


class JobError(BaseModel):
    code: str
    message: str


class ResultInstanceOut(BaseModel):
    sop_class_uid: str
    sop_instance_uid: str
    series_instance_uid: str
    wado_rs: str = Field(description="WADO-RS URL of the instance (relative to the node)")


class DeliveryOut(BaseModel):
    destination: str
    sent: int
    pending: int
    failed: int
    attempts: int = Field(description="most attempts of one instance to this destination")
    last_status: str | None
    last_error: str | None
    next_try_at: str | None


class JobOut(BaseModel):
    job_id: str
    study_instance_uid: str
    series_instance_uid: str
    pipeline: str
    model_version: str
    state: JobState
    progress: float = Field(description="percent")
    attempts: int = Field(description="attempts of the current run (a crashed worker's attempt counts)")
    run: int = Field(description="1, then +1 each time the job is re-run (new inputs or reprocess)")
    error: JobError | None = Field(description="the last error: final when failed, the retry's reason when queued")
    retrying: bool
    created_at: str
    updated_at: str
    due_at: str | None = Field(description="when a queued job may start (later for a retry with backoff)")
    started_at: str | None
    heartbeat_at: str | None
    finished_at: str | None
    duration_seconds: float | None
    worker: str | None
    results: list[ResultInstanceOut]
    summary: dict[str, Any]
    deliveries: list[DeliveryOut] = Field(default_factory=list,
                                          description="write-back of the results, per destination")


class RoutingOut(BaseModel):
    generation: int
    pipelines: list[str]
    reason: str
    decided_at: str | None
    output_of_job: str | None = Field(description="set when the series holds results of this job (never routed)")
    roles: dict[str, str] = Field(default_factory=dict,
                                  description="study pipeline -> the role (t1c, flair, ...) this series fills in its job")


class SeriesOut(BaseModel):
    series_instance_uid: str
    modality: str | None
    series_description: str | None
    series_number: str | None
    instance_count: int
    routing: RoutingOut | None = Field(description="the pipelines routing chose, or why none (null: not routed yet)")
    jobs: list[JobOut]


class StudyOut(BaseModel):
    study_instance_uid: str
    stable: bool
    stable_generation: int
    first_received: str
    last_received: str
    series: list[SeriesOut]
    jobs: list[JobOut]


class JobPage(BaseModel):
    jobs: list[JobOut]
    next_cursor: str | None = Field(description="pass as `cursor` for the next page; null on the last page")


class ReprocessIn(BaseModel):
    pipeline: str | None = Field(None, description="only this pipeline (default: every pipeline the rules choose)")


class ReprocessOut(BaseModel):
    study_instance_uid: str
    jobs: list[JobOut]


def _check_uid(value: str, name: str) -> str:
    if not is_valid_uid(value):
        raise InvalidRequest(f"{name} is not a valid DICOM UID")
    return value


def _wado(request: Request) -> str:
    return getattr(request.app.state, "wado_base", "/dicomweb")


def _job(request: Request, job: Any) -> dict[str, Any]:
    """A job as JSON, with the outbox's view of its results' delivery when this process has an outbox."""
    out = job_json(job, wado_base=_wado(request))
    outbox = getattr(request.app.state, "outbox", None)
    if outbox is None or not job.result_instances:
        return out
    by_destination: dict[str, list[Any]] = {}
    for row in outbox.outbox.for_job(job.job_id):
        by_destination.setdefault(row.destination, []).append(row)
    deliveries = []
    for destination, rows in sorted(by_destination.items()):
        pending = [r for r in rows if r.state == "pending"]
        last = max(rows, key=lambda r: r.attempts)
        deliveries.append({
            "destination": destination, "sent": sum(r.state == "sent" for r in rows), "pending": len(pending),
            "failed": sum(r.state == "failed" for r in rows), "attempts": last.attempts,
            "last_status": last.last_status, "last_error": last.last_error,
            "next_try_at": iso(min(r.next_try for r in pending)) if pending else None,
        })
    out["deliveries"] = deliveries
    return out


def _rules(request: Request) -> Any:
    rules = getattr(request.app.state, "routing_rules", None)
    if rules is None:
        settings = getattr(request.app.state, "settings", None)
        rules = load_rules(settings.routing_rules if settings is not None else None)
        request.app.state.routing_rules = rules
    return rules


def _parse_since(value: str | None) -> float | None:
    """Epoch seconds or ISO 8601 (a time without offset is UTC)."""
    if value is None or value == "":
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidRequest("since: expected epoch seconds or an ISO 8601 date-time") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return parsed.timestamp()


@router.get("/studies/{study_instance_uid}", response_model=StudyOut,
            summary="A study: its series, routing and every job with state, progress, timings, errors and results")
def get_study(study_instance_uid: str, request: Request) -> dict[str, Any]:
    _check_uid(study_instance_uid, "StudyInstanceUID")
    state = request.app.state
    status = service.get_study_status(study_instance_uid, store=state.store, jobs=state.jobs)
    return {
        "study_instance_uid": status.study_uid,
        "stable": status.stable,
        "stable_generation": status.stable_generation,
        "first_received": iso(status.first_received),
        "last_received": iso(status.last_received),
        "series": [{"series_instance_uid": s.series_uid, "modality": s.modality,
                    "series_description": s.series_description, "series_number": s.series_number,
                    "instance_count": s.instance_count, "routing": routing_json(s.routing),
                    "jobs": [_job(request, j) for j in s.jobs]} for s in status.series],
        "jobs": [_job(request, j) for j in status.jobs],
    }


@router.get("/jobs/{job_id}", response_model=JobOut, summary="One job")
def get_job(job_id: str, request: Request) -> dict[str, Any]:
    return _job(request, service.get_job(job_id, jobs=request.app.state.jobs))


@router.get("/jobs", response_model=JobPage,
            summary="Jobs ordered by last update, filtered, paged with a cursor (poll with `since`)")
def list_jobs(
    request: Request,
    state: JobState | None = Query(None, description="only jobs in this state"),
    study_instance_uid: str | None = Query(None),
    since: str | None = Query(None, description="updated at or after: epoch seconds or ISO 8601"),
    limit: int = Query(100, ge=1, le=1000),
    cursor: str | None = Query(None, description="next_cursor of the previous page"),
) -> dict[str, Any]:
    if study_instance_uid is not None:
        _check_uid(study_instance_uid, "study_instance_uid")
    page, next_cursor = service.list_jobs(jobs=request.app.state.jobs, state=state, study_uid=study_instance_uid,
                                          since=_parse_since(since), cursor=cursor, limit=limit)
    return {"jobs": [_job(request, j) for j in page], "next_cursor": next_cursor}


@router.post("/studies/{study_instance_uid}/reprocess", response_model=ReprocessOut, status_code=202,
             summary="Run the study's pipelines again (or one of them), whatever their state")
def reprocess(study_instance_uid: str, request: Request, body: ReprocessIn | None = Body(None)) -> dict[str, Any]:
    _check_uid(study_instance_uid, "StudyInstanceUID")
    state = request.app.state
    pipes = getattr(state, "pipelines", None)
    jobs = service.reprocess(study_instance_uid, pipeline=body.pipeline if body else None, store=state.store,
                             jobs=state.jobs, rules=_rules(request),
                             pipelines=pipes if pipes is not None else registered_pipelines(), enqueue=state.enqueue)
    return {"study_instance_uid": study_instance_uid, "jobs": [_job(request, j) for j in jobs]}
