"""Jobs as JSON: the one shape the status API answers and the webhook sends."""

from __future__ import annotations

import datetime as dt
from typing import Any

from neuronova.jobs.model import Job, JobState, RoutingRecord


def iso(ts: float | None) -> str | None:
    """Epoch seconds as ISO 8601 UTC with milliseconds (``2026-01-01T12:00:00.000Z``)."""
    if ts is None:
        return None
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def wado_rs_url(study_uid: str, series_uid: str, sop_uid: str, *, wado_base: str = "/dicomweb") -> str:
    return f"{wado_base.rstrip('/')}/studies/{study_uid}/series/{series_uid}/instances/{sop_uid}"


def job_json(job: Job, *, wado_base: str = "/dicomweb") -> dict[str, Any]:
    end = job.finished_at
    return {
        "job_id": job.job_id,
        "study_instance_uid": job.study_uid,
        "series_instance_uid": job.series_uid,
        "pipeline": job.pipeline,
        "model_version": job.model_version,
        "state": str(job.state),
        "progress": round(job.progress, 1),
        "attempts": job.attempts,
        "run": job.run,
        "error": ({"code": job.error_code, "message": job.error_message or ""} if job.error_code else None),
        "retrying": job.state == JobState.QUEUED and job.error_code is not None,
        "created_at": iso(job.created_at),
        "updated_at": iso(job.updated_at),
        "due_at": iso(job.due_at) if job.state == JobState.QUEUED else None,
        "started_at": iso(job.started_at),
        "heartbeat_at": iso(job.heartbeat_at),
        "finished_at": iso(end),
        "duration_seconds": (round(end - job.started_at, 3) if end is not None and job.started_at is not None
                             else None),
        "worker": job.worker,
        "results": [
            {"sop_class_uid": r.sop_class_uid, "sop_instance_uid": r.sop_instance_uid,
             "series_instance_uid": r.series_uid,
             "wado_rs": wado_rs_url(job.study_uid, r.series_uid, r.sop_instance_uid, wado_base=wado_base)}
            for r in job.result_instances
        ],
        "summary": job.summary,
    }


def routing_json(record: RoutingRecord | None) -> dict[str, Any] | None:
    if record is None:
        return None
    return {"generation": record.generation, "pipelines": list(record.pipelines), "reason": record.reason,
            "decided_at": iso(record.decided_at), "output_of_job": record.output_of, "roles": dict(record.roles)}
