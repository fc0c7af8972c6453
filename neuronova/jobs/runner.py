"""Run one job: claim it, run its pipeline while heartbeating, store its results, hand them to the outbox.

The steps, each a fenced write to the job table (it fails once the claim is lost, and the runner stops):
claim (``running``) -> pipeline -> ``writing``: each result stored with ``replace=True`` (its UIDs derive from
the series, pipeline and model version, so a retry rewrites the same instances) and given to the outbox ->
``sending`` -> the outbox marks it ``done``. A job without results, or a node without destinations, goes to
``done`` at once. While the pipeline runs, one heartbeat thread per runner extends the lease of its jobs.

Failures: a SeriesError, InvalidRequest, InvalidDicom, NotFound or ConfigError is permanent (``failed`` with its
code at once); anything else is retried with exponential backoff until ``max_attempts``, then ``failed``
with the last error. A worker killed mid-job just stops heartbeating; the reconciler gives the job back.
"""

from __future__ import annotations

import io
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import pydicom

from neuronova.config import Settings
from neuronova.errors import ConfigError, InvalidDicom, InvalidRequest, NeuroNovaError, NotFound, SeriesError
from neuronova.jobs.model import Job, JobState, RoutingRecord
from neuronova.jobs.outbox_protocol import NullOutbox, Outbox
from neuronova.jobs.store import JobStore, results_of
from neuronova.metrics.observe import observe_job_end
from neuronova.retry import backoff as retry_backoff
from neuronova.pipelines.registry import Pipeline, PipelineContext, pipelines as registered_pipelines
from neuronova.store import InstanceStore

log = logging.getLogger(__name__)

PERMANENT_ERRORS: tuple[type[NeuroNovaError], ...] = (SeriesError, InvalidRequest, InvalidDicom, NotFound, ConfigError)
#: A lease is this many heartbeats long: a worker is declared dead after missing about three.
LEASE_HEARTBEATS = 3.0
BACKOFF_BASE_SECONDS = 2.0
BACKOFF_CAP_SECONDS = 300.0

#: ``enqueue(job_id, delay=seconds)``: send the job's queue message (delayed for a retry).
Enqueue = Callable[..., None]


class JobLost(Exception):
    """This worker no longer holds the job (it was reset, or taken over after the lease expired)."""


def backoff(attempt: int, *, base: float = BACKOFF_BASE_SECONDS, cap: float = BACKOFF_CAP_SECONDS) -> float:
    """Delay before attempt ``attempt + 1`` of a job (neuronova.retry.backoff with the jobs' base and cap)."""
    return retry_backoff(attempt, base=base, cap=cap)


def lease_seconds(settings: Settings) -> float:
    return settings.heartbeat_seconds * LEASE_HEARTBEATS


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{threading.current_thread().name}"


class Beat:
    """One claim being kept alive: carries the pipeline's progress and whether the claim was lost."""

    def __init__(self, job: Job) -> None:
        self.job_id, self.token = job.job_id, job.claim_token or ""
        self.value = 0.0
        self.lost = threading.Event()

    def progress(self, percent: float) -> None:
        """The pipeline's progress callback."""
        self.check()
        self.value = max(0.0, min(100.0, float(percent)))

    def check(self) -> None:
        if self.lost.is_set():
            raise JobLost(self.job_id)


class Heartbeats:
    """One thread per runner extends the lease of every job the runner's threads hold, every ``interval``
    seconds, and writes their progress (a thread per job would cost more than a trivial job)."""

    def __init__(self, jobs: JobStore, *, interval: float, lease: float) -> None:
        self.jobs, self.interval, self.lease = jobs, interval, lease
        self._active: dict[str, Beat] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @contextmanager
    def holding(self, job: Job) -> Iterator[Beat]:
        beat = Beat(job)
        with self._lock:
            self._active[job.job_id] = beat
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="job-heartbeats", daemon=True)
                self._thread.start()
        try:
            yield beat
        finally:
            with self._lock:
                self._active.pop(job.job_id, None)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            with self._lock:
                beats = list(self._active.values())
            for beat in beats:
                try:
                    alive = self.jobs.heartbeat(beat.job_id, beat.token, lease_seconds=self.lease,
                                                progress=beat.value)
                except Exception:
                    # A job-table outage: keep trying; if it outlasts the lease another worker may take the job
                    # over, and then this worker's fenced writes fail.
                    log.warning("job %s: heartbeat failed", beat.job_id, exc_info=True)
                    continue
                if not alive:
                    beat.lost.set()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)


class JobRunner:
    def __init__(self, *, jobs: JobStore, store: InstanceStore, settings: Settings, enqueue: Enqueue,
                 outbox: Outbox | None = None, pipelines: Mapping[str, Pipeline] | None = None,
                 retry_backoff: float = BACKOFF_BASE_SECONDS) -> None:
        self.jobs = jobs
        self.retry_backoff = retry_backoff
        self.store = store
        self.settings = settings
        self.enqueue = enqueue
        self.outbox = None if isinstance(outbox, NullOutbox) else outbox
        self._pipelines = pipelines
        #: Called with each claimed job before its pipeline runs: a remote worker fetches the inputs it lacks.
        self.inputs: Callable[[Job], object] | None = None
        self.heartbeats = Heartbeats(jobs, interval=settings.heartbeat_seconds, lease=lease_seconds(settings))
        jobs.add_end_listener(observe_job_end)  # job and inference durations, in the process that ends the job

    def close(self) -> None:
        self.heartbeats.close()

    @property
    def pipelines(self) -> Mapping[str, Pipeline]:
        return self._pipelines if self._pipelines is not None else registered_pipelines()

    def run(self, job_id: str) -> JobState | None:
        """Run the job if it can be claimed; return the state it was left in (None: not claimed, or lost)."""
        job = self.jobs.claim(job_id, worker=worker_name(), lease_seconds=lease_seconds(self.settings))
        if job is None:
            log.debug("job %s: not claimable (running elsewhere, finished, or not due); message dropped", job_id)
            return None
        token = job.claim_token or ""
        if job.attempts > self.settings.max_attempts:
            failed = self.jobs.fail(job_id, token=token, error_code="WORKER_LOST",
                                    error_message=f"started {job.attempts - 1} times without finishing")
            return failed.state if failed else None
        log.info("job %s: %s (run %d, attempt %d) started", job_id, job.pipeline, job.run, job.attempts)
        started = time.monotonic()
        try:
            state = self._execute(job, token)
        except JobLost:
            log.info("job %s: claim lost (reset or taken over); this run stops", job_id)
            return None
        except PERMANENT_ERRORS as exc:
            log.warning("job %s: failed for good with %s (%s)", job_id, exc.code, type(exc).__name__)
            log.debug("job %s: %s", job_id, exc.message)
            failed = self.jobs.fail(job_id, token=token, error_code=exc.code, error_message=exc.message)
            return failed.state if failed else None
        except Exception as exc:
            return self._transient(job, token, exc)
        log.info("job %s: %s in %.2f s", job_id, state, time.monotonic() - started)
        return state

    def _execute(self, job: Job, token: str) -> JobState:
        pipeline = self.pipelines.get(job.pipeline)
        if pipeline is None:
            # Transient: a worker started without this pipeline (e.g. models not installed there) may share the
            # queue with one that has it; after max_attempts the job fails saying so.
            raise NeuroNovaError(f"pipeline {job.pipeline!r} is not available on this worker",
                                 code="PIPELINE_NOT_AVAILABLE", http_status=503)
        with self.heartbeats.holding(job) as beat:
            if self.inputs is not None:
                self.inputs(job)
                beat.check()
            context = PipelineContext(job=job, store=self.store, settings=self.settings, progress=beat.progress)
            result = pipeline(context=context)
            beat.check()
            results = results_of(result.datasets)
            if results:  # nothing to write: straight to done (one write less for trivial jobs)
                if self.jobs.advance(job.job_id, token, JobState.WRITING, progress=max(beat.value, 90.0)) is None:
                    raise JobLost(job.job_id)
                self._mark_outputs(job, result.datasets)
            for ds in result.datasets:
                self.store.put(_encode(ds), replace=True)
                beat.check()
            # A re-run hands its (possibly empty) result set to the outbox too: an earlier run's results that
            # this run did not write are stale, and are removed from the destinations before the job is done.
            if self.outbox is not None and (results or job.run > 1):
                self.outbox.enqueue(job.job_id, [r.sop_instance_uid for r in results])
        summary = _jsonable(result.summary)
        if self.outbox is None or (not results and (job.run <= 1 or self.outbox.pending(job.job_id) == 0)):
            done = self.jobs.advance(job.job_id, token, JobState.DONE, result_instances=results, summary=summary)
            if done is None:
                raise JobLost(job.job_id)
            return done.state
        sending = self.jobs.advance(job.job_id, token, JobState.SENDING, result_instances=results, summary=summary,
                                    progress=100.0)
        if sending is None:
            raise JobLost(job.job_id)
        # The outbox may have acknowledged everything before the job reached "sending".
        if self.outbox.pending(job.job_id) == 0:
            done = self.jobs.mark_sent(job.job_id)
            if done is not None:
                return done.state
        return JobState.SENDING

    def _mark_outputs(self, job: Job, datasets: list[pydicom.Dataset]) -> None:
        # Before the results reach the index (which re-opens their study): the router must know these series
        # are results, or a broad rule could run a pipeline on its own output, and again on that output.
        now = time.time()
        for study_uid, series_uid in dict.fromkeys((str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID))
                                                   for ds in datasets):
            self.jobs.set_routing(RoutingRecord(study_uid=study_uid, series_uid=series_uid, generation=0, pipelines=(),
                                                reason=f"results of {job.pipeline} (job {job.job_id})",
                                                decided_at=now, output_of=job.job_id))

    def _transient(self, job: Job, token: str, exc: Exception) -> JobState | None:
        if isinstance(exc, NeuroNovaError):
            code, message = exc.code, exc.message
        else:
            code, message = "PIPELINE_ERROR", f"{type(exc).__name__}: {exc}"
        if job.attempts >= self.settings.max_attempts:
            log.warning("job %s: attempt %d failed with %s (%s); no attempts left", job.job_id, job.attempts, code,
                        type(exc).__name__)
            log.debug("job %s failed", job.job_id, exc_info=exc)
            failed = self.jobs.fail(job.job_id, token=token, error_code=code,
                                    error_message=f"failed after {job.attempts} attempts: {message}")
            return failed.state if failed else None
        delay = backoff(job.attempts, base=self.retry_backoff)
        log.warning("job %s: attempt %d failed with %s (%s); retrying in %.1f s", job.job_id, job.attempts, code,
                    type(exc).__name__, delay)
        log.debug("job %s failed", job.job_id, exc_info=exc)
        again = self.jobs.retry_later(job.job_id, token, delay=delay, error_code=code, error_message=message)
        if again is None:
            return None
        try:
            self.enqueue(job.job_id, delay=delay)
        except Exception:
            # The reconciler re-sends the message of a queued job that has none.
            log.warning("job %s: could not enqueue the retry; the reconciler will", job.job_id, exc_info=True)
        return again.state


def _encode(ds: pydicom.Dataset) -> bytes:
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


def _jsonable(value: Any) -> Any:
    """The pipeline's summary as plain JSON (numpy scalars and arrays converted, anything else as text)."""
    def default(obj: Any) -> Any:
        for attr in ("tolist", "item"):
            if hasattr(obj, attr):
                return getattr(obj, attr)()
        return str(obj)

    return json.loads(json.dumps(value, default=default))
