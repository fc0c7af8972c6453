"""Prometheus metrics of the node (served at ``/metrics``).

The event counters and histograms are defined here, once per process, so that every part of the node
(listener, STOW-RS, jobs, outbox) counts into the same series. Labels never carry patient data: only
reasons, pipelines, states, destinations' names and model ids. Gauges that describe durable state (queue
depth, outbox backlog, jobs by state, models loaded) are read at scrape time by the collectors in
:mod:`neuronova.metrics.collectors`.
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

__all__ = [
    "INSTANCES_RECEIVED", "INSTANCES_REFUSED", "INSTANCES_WARNED", "STUDIES_STABLE", "JOB_DURATION",
    "INFERENCE_DURATION", "DELIVERY_FAILURES",
]

#: Instances stored and acknowledged; ``path`` is ``dimse`` or ``stow``.
INSTANCES_RECEIVED = Counter("neuronova_instances_received", "Instances stored and acknowledged", ["path"])
#: Instances refused; ``reason`` is a short fixed code (e.g. ``pixel_length``, ``conflict``, ``truncated``).
INSTANCES_REFUSED = Counter("neuronova_instances_refused", "Instances refused at the door", ["path", "reason"])
#: Instances stored with a warning status (e.g. text that breaks its VR).
INSTANCES_WARNED = Counter("neuronova_instances_warned", "Instances stored with a warning", ["path", "reason"])
STUDIES_STABLE = Counter("neuronova_studies_stable", "Studies that became stable (complete)")

_SECONDS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600)
JOB_DURATION = Histogram("neuronova_job_duration_seconds", "Job run time, claim to final state",
                         ["pipeline", "state"], buckets=_SECONDS)
INFERENCE_DURATION = Histogram("neuronova_inference_duration_seconds", "Model inference time per call",
                               ["model"], buckets=_SECONDS)
DELIVERY_FAILURES = Counter("neuronova_delivery_failures", "Result deliveries that failed (will be retried)",
                            ["destination", "kind"])
