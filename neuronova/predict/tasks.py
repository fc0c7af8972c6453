"""Asynchronous predict tasks are jobs on the node's queue, run by the same workers as the study pipelines.

``POST /predict/mri_segmentation`` checks the upload, keeps it in ``<data_dir>/predict/<task_id>/input/`` and
creates a job of the pipeline ``predict.mri_segmentation`` (:mod:`neuronova.predict.pipeline`) in the job
table, then sends its message on the queue (SQLite or Redis): any worker takes it, on the node, beside it
on the shared volume, or on another machine (which fetches the input from the node and sends the result
files back, fenced by the job's claim: :mod:`neuronova.api.task_files`). ``task_status`` reads that job.

The job's ``series_uid`` is the task id (``TASK_<uuid4>``, made here and checked against its pattern before
it names a directory), its ``study_uid`` is empty (no study of the index), its ``input_fingerprint`` holds
the task's parameters and owner (``predict:`` then JSON), and its ``summary`` the result when it is done.
So a task inherits what jobs do: a worker killed mid-task (or a node restarted) leaves the job's lease to
expire, the reconciler queues it again and another run completes it; transient failures are retried with
backoff up to ``max_attempts``; a bad input fails at once with its code.

Job states read as task states: queued -> pending, running/writing/sending -> running, done -> completed,
failed -> failed. A task of another subject answers 404, as one that does not exist.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from neuronova.errors import InvalidRequest, NotFound, RateLimited
from neuronova.jobs.model import ACTIVE_STATES, FINAL_STATES, Job, JobState, job_id_for
from neuronova.jobs.store import JobStore

log = logging.getLogger(__name__)

TASK_ID = re.compile(r"TASK_[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")
PENDING, RUNNING, COMPLETED, FAILED = "pending", "running", "completed", "failed"
#: The job pipeline of each task kind.
PIPELINES = {"mri_segmentation": "predict.mri_segmentation"}
#: Prefix of a task job's input fingerprint.
PARAMS_PREFIX = "predict:"
INPUT_DIR, RESULT_DIR = "input", "result"
#: More waiting tasks than this and a new one is refused (429 with Retry-After) rather than queued.
MAX_QUEUED = 32
DEFAULT_ESTIMATE_S = 10.0
_STATUS = {JobState.QUEUED: PENDING, JobState.RUNNING: RUNNING, JobState.WRITING: RUNNING,
           JobState.SENDING: RUNNING, JobState.DONE: COMPLETED, JobState.FAILED: FAILED}

#: ``enqueue(job_id, delay=seconds)``: the job system's.
Enqueue = Callable[..., None]


def new_task_id() -> str:
    return f"TASK_{uuid.uuid4()}"


def check_task_id(task_id: str) -> str:
    if not TASK_ID.fullmatch(task_id):
        raise InvalidRequest("a task id is TASK_ followed by a UUID (as returned when the task was created)")
    return task_id


def task_job_id(task_id: str, kind: str) -> str:
    return job_id_for(task_id, PIPELINES[kind])


def is_task_job(job: Job) -> bool:
    return job.pipeline in PIPELINES.values()


def encode_params(*, owner: str, params: dict[str, Any]) -> str:
    return PARAMS_PREFIX + json.dumps({"owner": owner, **params}, separators=(",", ":"), sort_keys=True)


def decode_params(fingerprint: str) -> dict[str, Any]:
    """A task job's parameters (owner, input description, xai, request_id, ...); ValueError otherwise."""
    if not fingerprint.startswith(PARAMS_PREFIX):
        raise ValueError("not a predict task's job")
    params = json.loads(fingerprint[len(PARAMS_PREFIX):])
    if not isinstance(params, dict):
        raise ValueError("a predict task's parameters are a JSON object")
    return params


@dataclass(frozen=True)
class TaskRecord:
    """A task as the predict API shows it (read from its job)."""

    task_id: str
    kind: str
    owner: str
    status: str
    progress: int
    created_at: float
    updated_at: float
    started_at: float | None
    finished_at: float | None
    params: dict[str, Any]
    result: dict[str, Any] | None
    error_code: str | None
    error_message: str | None

    @classmethod
    def from_job(cls, job: Job, kind: str) -> TaskRecord:
        params = decode_params(job.input_fingerprint)
        status = _STATUS[job.state]
        progress = {PENDING: 0, COMPLETED: 100}.get(status, max(1, min(99, int(job.progress))))
        return cls(task_id=job.series_uid, kind=kind, owner=str(params.pop("owner", "")), status=status,
                   progress=progress, created_at=job.created_at, updated_at=job.updated_at,
                   started_at=job.started_at, finished_at=job.finished_at, params=params,
                   result=job.summary if status == COMPLETED else None,
                   error_code=job.error_code if status == FAILED else None,
                   error_message=job.error_message if status == FAILED else None)


class TaskQueue:
    """Creates task jobs, answers for them, and keeps ``root`` (``<data_dir>/predict``) tidy."""

    def __init__(self, root: Path, *, jobs: JobStore, enqueue: Enqueue, versions: Callable[[str], str]) -> None:
        """``versions(kind)``: the model version a new task of ``kind`` runs with (its pipeline's)."""
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.jobs = jobs
        self.enqueue = enqueue
        self.versions = versions
        self.tidy()

    def tidy(self) -> None:
        """Remove what no task needs: directories without a job (an upload cut off before its task was
        created) and the input of finished tasks (a worker on another machine cannot remove the node's)."""
        for path in self.root.iterdir():
            if not (path.is_dir() and TASK_ID.fullmatch(path.name)):
                continue
            job = next((j for kind in PIPELINES if (j := self.jobs.get(task_job_id(path.name, kind)))), None)
            if job is None:
                shutil.rmtree(path, ignore_errors=True)
            elif job.state in FINAL_STATES:
                shutil.rmtree(path / INPUT_DIR, ignore_errors=True)

    def task_dir(self, task_id: str) -> Path:
        return self.root / check_task_id(task_id)

    def _jobs(self, kind: str, state: JobState) -> list[Job]:
        pipeline = PIPELINES[kind]
        out: list[Job] = []
        after: tuple[float, str] | None = None
        while True:
            page = self.jobs.list_jobs(state=state, after=after, limit=500)
            out += [j for j in page if j.pipeline == pipeline]
            if len(page) < 500:
                return out
            after = (page[-1].updated_at, page[-1].job_id)

    def new_task(self, kind: str) -> tuple[str, Path]:
        """A fresh id and its (empty) directory, before the upload is read; refused when the queue is full."""
        waiting = len(self._jobs(kind, JobState.QUEUED))
        if waiting >= MAX_QUEUED:
            raise RateLimited(f"{waiting} tasks are waiting; try again later",
                              retry_after=max(1, int(self.estimate_seconds(kind, 1))))
        task_id = new_task_id()
        path = self.task_dir(task_id)
        path.mkdir()
        return task_id, path

    def submit(self, *, task_id: str, kind: str, owner: str, params: dict[str, Any]) -> TaskRecord:
        """Create the task's job (its input is in place) and send its message."""
        job, fresh = self.jobs.ensure_job(study_uid="", series_uid=check_task_id(task_id), pipeline=PIPELINES[kind],
                                          model_version=self.versions(kind),
                                          input_fingerprint=encode_params(owner=owner, params=params))
        if fresh:
            try:
                self.enqueue(job.job_id)
            except Exception:
                # The job is recorded: the reconciler sends the message of a queued job that has none.
                log.warning("task %s: could not enqueue; the reconciler will", task_id, exc_info=True)
        return TaskRecord.from_job(job, kind)

    def get(self, task_id: str, *, owner: str) -> TaskRecord:
        """The task, or NotFound (404) when it does not exist or belongs to another subject."""
        check_task_id(task_id)
        for kind in PIPELINES:
            job = self.jobs.get(task_job_id(task_id, kind))
            if job is not None:
                record = TaskRecord.from_job(job, kind)
                if record.owner == owner:
                    if job.state in FINAL_STATES:
                        # A worker on another machine cannot remove the node's copy of the upload; the node
                        # does when it sees the task finished (and tidy() at the next start).
                        shutil.rmtree(self.task_dir(task_id) / INPUT_DIR, ignore_errors=True)
                    return record
        raise NotFound(f"no task {task_id}")

    def estimate_seconds(self, kind: str, queued: int | None = None) -> float:
        """Seconds until the last of ``queued`` tasks (default: those pending and running) is done: the mean
        of the last runs (DEFAULT_ESTIMATE_S before the first) times the queue (one at a time: a worker that
        segments uses every core, or its GPU)."""
        recent = self.jobs.list_jobs(state=JobState.DONE, since=time.time() - 24 * 3600, limit=1000)
        durations = [j.finished_at - j.started_at for j in recent[-200:]
                     if j.pipeline == PIPELINES[kind] and j.finished_at and j.started_at][-10:]
        each = sum(durations) / len(durations) if durations else DEFAULT_ESTIMATE_S
        if queued is None:
            counts = self.counts(kind)
            queued = counts[PENDING] + counts[RUNNING]
        return round(each * max(1, queued), 1)

    def counts(self, kind: str = "mri_segmentation") -> dict[str, int]:
        running = sum(len(self._jobs(kind, state)) for state in (*ACTIVE_STATES, JobState.SENDING))
        return {PENDING: len(self._jobs(kind, JobState.QUEUED)), RUNNING: running}
