"""Histograms observed when a job ends: its run time, and the time its model took.

:func:`observe_job_end` is a job-store end listener (``JobStore.add_end_listener``): it is called in whichever
process moves the job to ``done`` or ``failed`` (the worker that ran it, or the node whose outbox delivered
its results), once per run.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from neuronova.jobs.model import Job
from neuronova.metrics import INFERENCE_DURATION, JOB_DURATION, STUDIES_STABLE

log = logging.getLogger(__name__)


def observe_job_end(job: Job) -> None:
    """``neuronova_job_duration_seconds{pipeline,state}`` (claim to final state) and, for a job whose pipeline
    ran a model, ``neuronova_inference_duration_seconds{model}`` from the timings in its summary."""
    if job.started_at is not None and job.finished_at is not None:
        JOB_DURATION.labels(pipeline=job.pipeline, state=str(job.state)).observe(
            max(0.0, job.finished_at - job.started_at))
    observe_inference(job.summary)


def observe_inference(summary: Mapping[str, Any] | None) -> None:
    """The model pipelines' summary names the model (``model_id``) and times the call (``timings.inference_s``)."""
    if not summary:
        return
    model = summary.get("model_id")
    timings = summary.get("timings")
    seconds = timings.get("inference_s") if isinstance(timings, Mapping) else None
    if isinstance(model, str) and model and isinstance(seconds, int | float) and seconds >= 0:
        INFERENCE_DURATION.labels(model=model).observe(float(seconds))


def observe_study_stable(study_uid: str, generation: int) -> None:
    """A study watcher subscriber, subscribed after the job router: counts each (study, generation) whose jobs
    were created (a generation re-delivered after a failed routing is counted once, when it succeeds)."""
    STUDIES_STABLE.inc()
