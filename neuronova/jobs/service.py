"""Job services: what happens when a study becomes stable, a reprocess, and the reads the status API shows.

Keyword-only functions over the instance store, the job table, the routing rules, the pipelines and
``enqueue``; the HTTP routes and the node call them, nothing here knows about either.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from neuronova.errors import InvalidRequest, NotFound
from neuronova.jobs.model import Job, JobState, RoutingRecord
from neuronova.jobs.store import JobStore
from neuronova.pipelines.registry import Pipeline
from neuronova.routing.rules import RoutingRules
from neuronova.routing.series import series_info
from neuronova.store import InstanceStore

log = logging.getLogger(__name__)

Enqueue = Callable[..., None]


def input_fingerprint(store: InstanceStore, series_uid: str) -> str:
    """SHA-256 over the series' sorted (SOP Instance UID, size): a late or replaced instance changes it.

    A replacement of identical size is not seen (the index keeps no content hash); reprocess covers that."""
    rows = sorted((str(r["sop_uid"]), int(r["size"])) for r in store.index.instances_of_series(series_uid))
    digest = hashlib.sha256()
    for sop, size in rows:
        digest.update(f"{sop}\t{size}\n".encode())
    return digest.hexdigest()


def on_study_stable(study_uid: str, generation: int, *, store: InstanceStore, jobs: JobStore, rules: RoutingRules,
                    pipelines: Mapping[str, Pipeline], enqueue: Enqueue) -> list[Job]:
    """Route every series of the study; create a job per (series, pipeline) or reset one whose inputs changed,
    and enqueue those. Idempotent: delivering the same (study, generation) again enqueues nothing new.
    Returns the jobs that were (re)enqueued."""
    started = []
    for job, fresh in _route_study(study_uid, generation, store=store, jobs=jobs, rules=rules, pipelines=pipelines):
        if fresh:
            enqueue(job.job_id)
            started.append(job)
    log.info("study stable (generation %d): %d job(s) enqueued", generation, len(started))
    return started


def reprocess(study_uid: str, *, pipeline: str | None = None, store: InstanceStore, jobs: JobStore,
              rules: RoutingRules, pipelines: Mapping[str, Pipeline], enqueue: Enqueue) -> list[Job]:
    """Route the study again with the current rules and run every matched job anew (only ``pipeline``'s when
    given), whatever its state and inputs. NotFound for an unknown study, InvalidRequest for an unknown
    pipeline. Returns the enqueued jobs (empty when no series matches)."""
    study = store.index.study(study_uid)
    if study is None:
        raise NotFound("no such study")
    if pipeline is not None and pipeline not in pipelines:
        raise InvalidRequest(f"no pipeline named {pipeline!r}; known: {', '.join(sorted(pipelines)) or 'none'}")
    out: list[Job] = []
    for job, fresh in _route_study(study_uid, int(study["stable_generation"]), store=store, jobs=jobs, rules=rules,
                                   pipelines=pipelines):
        if pipeline is not None and job.pipeline != pipeline:
            if fresh:  # its inputs changed: it runs anyway, as a stable study would have made it
                enqueue(job.job_id)
            continue
        again = job if fresh else jobs.reset(job.job_id)
        if again is not None:
            enqueue(again.job_id)
            out.append(again)
    log.info("reprocess: %d job(s) enqueued", len(out))
    return out


def _route_study(study_uid: str, generation: int, *, store: InstanceStore, jobs: JobStore, rules: RoutingRules,
                 pipelines: Mapping[str, Pipeline]) -> list[tuple[Job, bool]]:
    """Record the routing of each series; return each matched (series, pipeline)'s job and whether it was just
    created or reset (new inputs or model version)."""
    out: list[tuple[Job, bool]] = []
    outputs = {r.series_uid for r in jobs.routing_of_study(study_uid) if r.output_of}
    for row in store.index.series_of_study(study_uid):
        if row["series_uid"] in outputs:
            continue  # the node's own results are never inputs
        info = series_info(store, row)
        decision = rules.route(info)
        available = [p for p in decision.pipelines if p in pipelines]
        missing = [p for p in decision.pipelines if p not in pipelines]
        reason = decision.reason + (f"; not installed: {', '.join(missing)}" if missing else "")
        jobs.set_routing(RoutingRecord(study_uid=study_uid, series_uid=info.series_uid, generation=generation,
                                       pipelines=tuple(available), reason=reason, decided_at=time.time()))
        if not available:
            continue
        fingerprint = input_fingerprint(store, info.series_uid)
        for name in available:
            out.append(jobs.ensure_job(study_uid=study_uid, series_uid=info.series_uid, pipeline=name,
                                       model_version=pipelines[name].version, input_fingerprint=fingerprint))
    return out


@dataclass(frozen=True)
class SeriesStatus:
    series_uid: str
    modality: str | None
    series_description: str | None
    series_number: str | None
    instance_count: int
    routing: RoutingRecord | None
    jobs: list[Job]


@dataclass(frozen=True)
class StudyStatus:
    study_uid: str
    stable: bool
    stable_generation: int
    first_received: float
    last_received: float
    series: list[SeriesStatus]
    jobs: list[Job]


def get_study_status(study_uid: str, *, store: InstanceStore, jobs: JobStore) -> StudyStatus:
    study = store.index.study(study_uid)
    if study is None:
        raise NotFound("no such study")
    all_jobs = jobs.jobs_of_study(study_uid)
    routing = {r.series_uid: r for r in jobs.routing_of_study(study_uid)}
    series = [
        SeriesStatus(series_uid=row["series_uid"], modality=row["modality"], series_description=row["series_description"],
                     series_number=row["series_number"], instance_count=int(row["instance_count"] or 0),
                     routing=routing.get(row["series_uid"]),
                     jobs=[j for j in all_jobs if j.series_uid == row["series_uid"]])
        for row in store.index.series_of_study(study_uid)
    ]
    return StudyStatus(study_uid=study_uid, stable=bool(study["stable"]), stable_generation=int(study["stable_generation"]),
                       first_received=float(study["first_received"]), last_received=float(study["last_received"]),
                       series=series, jobs=all_jobs)


def get_job(job_id: str, *, jobs: JobStore) -> Job:
    job = jobs.get(job_id)
    if job is None:
        raise NotFound("no such job")
    return job


def list_jobs(*, jobs: JobStore, state: JobState | None = None, study_uid: str | None = None,
              since: float | None = None, cursor: str | None = None, limit: int = 100) -> tuple[list[Job], str | None]:
    """A page of jobs by (updated_at, job_id) and the cursor of the next page (None: this was the last)."""
    if not 1 <= limit <= 1000:
        raise InvalidRequest("limit must be between 1 and 1000")
    after = decode_cursor(cursor) if cursor else None
    page = jobs.list_jobs(state=state, study_uid=study_uid, since=since, after=after, limit=limit + 1)
    more = len(page) > limit
    page = page[:limit]
    return page, (encode_cursor(page[-1]) if more else None)


def encode_cursor(job: Job) -> str:
    return f"{job.updated_at!r}~{job.job_id}"


def decode_cursor(cursor: str) -> tuple[float, str]:
    try:
        stamp, job_id = cursor.split("~", 1)
        return float(stamp), job_id
    except ValueError:
        raise InvalidRequest("cursor is not one this API returned") from None
