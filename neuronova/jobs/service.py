"""Job services: what happens when a study becomes stable, a reprocess, and the reads the status API shows.

Keyword-only functions over the instance store, the job table, the routing rules, the pipelines and
``enqueue``; the HTTP routes and the node call them, nothing here knows about either.

Series-level pipelines get one job per (series, pipeline). A study pipeline (a ``[[study]]`` table in the
rules) gets one job per study over the series that fill its roles (see ``neuronova.routing.rules`` for the
``missing`` policies); its job id is that of (reference series, pipeline) and its fingerprint names the series
of each role (:class:`~neuronova.jobs.model.StudyInputs`), so a late series re-opens it as a late instance does.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from neuronova.errors import InvalidRequest, NotFound
from neuronova.jobs.model import Job, JobState, RoutingRecord, StudyInputs
from neuronova.jobs.store import JobStore
from neuronova.pipelines.registry import Pipeline
from neuronova.routing.rules import RoutingDecision, RoutingRules, SeriesInfo, StudySpec
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
        if fresh and job.state == JobState.QUEUED:
            _enqueue(enqueue, job)
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
            if fresh and job.state == JobState.QUEUED:  # its inputs changed: it runs anyway
                _enqueue(enqueue, job)
            continue
        if fresh and job.state == JobState.FAILED:  # refused at routing (a missing role): nothing to run
            continue
        again = job if fresh else jobs.reset(job.job_id)
        if again is not None:
            enqueue(again.job_id)
            out.append(again)
    log.info("reprocess: %d job(s) enqueued", len(out))
    return out


def _enqueue(enqueue: Enqueue, job: Job) -> None:
    """Send the job's message; a job due later (waiting for a missing role) is sent with that delay."""
    delay = job.due_at - time.time()
    if delay > 0.5:
        enqueue(job.job_id, delay=delay)
    else:
        enqueue(job.job_id)


@dataclass(frozen=True)
class _Routed:
    info: SeriesInfo
    decision: RoutingDecision
    instance_count: int


def _route_study(study_uid: str, generation: int, *, store: InstanceStore, jobs: JobStore, rules: RoutingRules,
                 pipelines: Mapping[str, Pipeline]) -> list[tuple[Job, bool]]:
    """Record the routing of each series; return each matched job (series-level and study-level) and whether it
    was just created or reset (new inputs or model version)."""
    outputs = {r.series_uid for r in jobs.routing_of_study(study_uid) if r.output_of}
    routed: list[_Routed] = []
    for row in store.index.series_of_study(study_uid):
        if row["series_uid"] in outputs:
            continue  # the node's own results are never inputs
        info = series_info(store, row)
        routed.append(_Routed(info, rules.route(info), int(row["instance_count"] or 0)))

    out: list[tuple[Job, bool]] = []
    study_roles: dict[str, dict[str, str]] = {}  # series -> {study pipeline: role}
    replaced: dict[str, set[str]] = {}  # series -> series-level pipelines a study job replaces on it
    for spec in rules.studies.values():
        result = _route_study_pipeline(spec, study_uid, routed, store=store, jobs=jobs, pipelines=pipelines)
        if result is None:
            continue
        job, fresh, chosen = result
        out.append((job, fresh))
        for role, series_uid in chosen.items():
            study_roles.setdefault(series_uid, {})[spec.pipeline] = role
            if job.state != JobState.FAILED:
                replaced.setdefault(series_uid, set()).update(spec.replaces)

    for r in routed:
        decision, info = r.decision, r.info
        skipped = [p for p in decision.pipelines if p in replaced.get(info.series_uid, ())]
        wanted = [p for p in decision.pipelines if p not in skipped]
        available = [p for p in wanted if p in pipelines]
        missing = [p for p in wanted if p not in pipelines]
        reason = decision.reason + (f"; not installed: {', '.join(missing)}" if missing else "")
        if skipped:
            reason += f"; {', '.join(skipped)} replaced by the study pipeline this series is an input of"
        roles = study_roles.get(info.series_uid, {})
        if roles:
            reason += "; " + ", ".join(f"role {role} of {p}" for p, role in roles.items())
        jobs.set_routing(RoutingRecord(study_uid=study_uid, series_uid=info.series_uid, generation=generation,
                                       pipelines=tuple(available), reason=reason, decided_at=time.time(),
                                       roles=roles))
        if not available:
            continue
        fingerprint = input_fingerprint(store, info.series_uid)
        for name in available:
            out.append(jobs.ensure_job(study_uid=study_uid, series_uid=info.series_uid, pipeline=name,
                                       model_version=pipelines[name].version, input_fingerprint=fingerprint))
    return out


def _route_study_pipeline(spec: StudySpec, study_uid: str, routed: list[_Routed], *, store: InstanceStore,
                          jobs: JobStore, pipelines: Mapping[str, Pipeline]
                          ) -> tuple[Job, bool, dict[str, str]] | None:
    """The study job of ``spec`` (created, re-opened or unchanged), or None when no series has one of its
    roles, the pipeline is not installed, or a required role is missing under ``missing = "run"``."""
    candidates: dict[str, list[_Routed]] = {}
    for r in routed:
        role = r.decision.roles.get(spec.pipeline)
        if role is not None:
            candidates.setdefault(role, []).append(r)
    if not candidates or spec.pipeline not in pipelines:
        return None
    # The series with the most slices fills a role (a 3D acquisition before a 2D one); the index lists series by
    # SeriesNumber, so among equals the later acquisition (a repeat) wins.
    chosen = {role: max(enumerate(rs), key=lambda ir: (ir[1].instance_count, ir[0]))[1].info.series_uid
              for role, rs in candidates.items()}
    ordered = tuple((role, chosen[role]) for role in spec.roles if role in chosen)
    absent = [role for role in spec.roles if role not in chosen]
    absent_required = [role for role in spec.required if role not in chosen]
    if absent_required and spec.missing == "run":
        return None
    digest = hashlib.sha256("\n".join(input_fingerprint(store, uid) for _, uid in ordered).encode()).hexdigest()
    inputs = StudyInputs(ordered, digest)
    reference = ordered[0][1]
    job, fresh = jobs.ensure_job(study_uid=study_uid, series_uid=reference, pipeline=spec.pipeline,
                                 model_version=pipelines[spec.pipeline].version, input_fingerprint=inputs.encode())
    if not fresh or not absent:
        return job, fresh, dict(chosen)
    message = (f"the study has no series for the role(s) {', '.join(absent)} "
               f"(it has {', '.join(role for role, _ in ordered)})")
    if spec.missing == "fail":
        failed = jobs.fail(job.job_id, error_code="SERIES_ROLE_MISSING", error_message=message)
        return failed or job, fresh, dict(chosen)
    if spec.missing == "wait":
        study = store.index.study(study_uid)
        last = float(study["last_received"]) if study is not None else time.time()
        due = last + spec.wait_seconds
        if due > time.time():
            # Waiting for the late series: the job is due after the wait (the reconciler leaves it until then);
            # a series arriving meanwhile re-opens the study and resets the job, due at once.
            waiting = jobs._update(job.job_id, where=[("run", "eq", job.run), ("state", "eq", JobState.QUEUED)],
                                   set={"due_at": due, "error_message": f"waiting until {due:.0f} for: {message}"})
            job = waiting or job
        elif absent_required:
            failed = jobs.fail(job.job_id, error_code="SERIES_ROLE_MISSING", error_message=message)
            return failed or job, fresh, dict(chosen)
    return job, fresh, dict(chosen)


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
