"""Gauges read at scrape time from durable state: jobs, the queue, the outbox, studies, models.

Counting from the job table, the queue, the outbox and the index (rather than counting events in this
process) makes the numbers right across restarts and across processes: a worker on another machine changes
the job table, and the node's ``/metrics`` shows it. A source that cannot be read (Redis down, a file not
created yet) leaves its gauges out of that scrape and sets ``neuronova_metrics_source_up{source}`` to 0; a
scrape never fails because of one source.

Labels are states, pipelines, destination names (credentials stripped by the outbox) and model ids: never a
UID, a patient attribute or a free-text error message.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from neuronova.jobs.model import FINAL_STATES, JobState

log = logging.getLogger(__name__)

#: Jobs not yet final, listed per pipeline; more than this many in one state are counted without a pipeline.
OPEN_JOBS_LIMIT = 50_000
_OPEN_STATES = tuple(s for s in JobState if s not in FINAL_STATES)
#: Outbox row states with work left (to send, or to remove from the destination).
_OUTBOX_OPEN = ("pending", "stale")


class NodeCollector(Collector):
    """Reads the node's state at each scrape from ``source`` (the app's ``state``: ``jobs``, ``settings``,
    ``outbox``, ``store``, ``models``, each optional and looked up at scrape time, since some are set after
    the app is built)."""

    def __init__(self, source: Any) -> None:
        self.source = source
        self._huey: Any = None
        self._huey_lock = threading.Lock()

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("neuronova_metrics_source_up", "1 when the source's gauges could be read this scrape",
                               labels=["source"])
        for name, read in self._sources():
            try:
                metrics = list(read())
            except Exception as exc:
                log.warning("metrics: %s unreadable (%s)", name, type(exc).__name__)
                log.debug("metrics: %s unreadable", name, exc_info=True)
                up.add_metric([name], 0)
                continue
            up.add_metric([name], 1)
            yield from metrics
        yield up

    def _sources(self) -> list[tuple[str, Callable[[], Iterator[Metric]]]]:
        get = self._get
        out: list[tuple[str, Callable[[], Iterator[Metric]]]] = []
        if get("jobs") is not None:
            out.append(("jobs", self._jobs))
        if get("settings") is not None:
            out.append(("queue", self._queue))
        if get("outbox") is not None and get("settings") is not None:
            out.append(("outbox", self._outbox))
        if get("store") is not None:
            out.append(("studies", self._studies))
        if get("models") is not None:
            out.append(("models", self._models))
        return out

    def _get(self, name: str) -> Any:
        return getattr(self.source, name, None)

    # --- sources ------------------------------------------------------------------------------------------

    def _jobs(self) -> Iterator[Metric]:
        jobs = self._get("jobs")
        by_state = GaugeMetricFamily("neuronova_jobs", "Jobs in the job table by state", labels=["state"])
        for state, n in sorted(jobs.counts().items()):
            by_state.add_metric([state], n)
        yield by_state
        open_ = GaugeMetricFamily("neuronova_jobs_open", "Jobs not yet done or failed, by pipeline and state",
                                  labels=["pipeline", "state"])
        for state in _OPEN_STATES:
            for pipeline, n in sorted(_count_by_pipeline(jobs, state).items()):
                open_.add_metric([pipeline, str(state)], n)
        yield open_

    def _queue(self) -> Iterator[Metric]:
        huey = self._queue_huey()
        depth = GaugeMetricFamily("neuronova_queue_depth",
                                  "Messages in the job queue: ready to run, or scheduled for later (retries)",
                                  labels=["queue"])
        depth.add_metric(["ready"], huey.pending_count())
        depth.add_metric(["scheduled"], huey.scheduled_count())
        yield depth

    def _queue_huey(self) -> Any:
        # A Huey of its own on the same queue (SQLite file or Redis): counting needs no runner and no task.
        with self._huey_lock:
            if self._huey is None:
                from neuronova.jobs.huey_app import make_huey

                self._huey = make_huey(self._get("settings"))
            return self._huey

    def _outbox(self) -> Iterator[Metric]:
        path = Path(self._get("settings").data_dir) / "outbox.sqlite3"
        backlog = GaugeMetricFamily("neuronova_outbox_backlog",
                                    "Result instances still to deliver (pending) or to remove (stale), per destination",
                                    labels=["destination", "state"])
        failed = GaugeMetricFamily("neuronova_outbox_refused",
                                   "Result instances a destination refused for good (job failed), per destination",
                                   labels=["destination"])
        age = GaugeMetricFamily("neuronova_outbox_oldest_pending_seconds",
                                "Age of the oldest result instance still to deliver, per destination",
                                labels=["destination"])
        for name in _destination_names(self._get("outbox")):
            for state in _OUTBOX_OPEN:
                backlog.add_metric([name, state], 0)
            failed.add_metric([name], 0)
        if path.exists():
            now = time.time()
            for row in _read_only(path, "SELECT destination, state, COUNT(*) AS n, MIN(created) AS oldest "
                                        "FROM outbox WHERE state IN ('pending', 'stale', 'failed') "
                                        "GROUP BY destination, state"):
                if row["state"] == "failed":
                    failed.add_metric([row["destination"]], row["n"])
                else:
                    backlog.add_metric([row["destination"], row["state"]], row["n"])
                    if row["state"] == "pending":
                        age.add_metric([row["destination"]], max(0.0, now - float(row["oldest"])))
        yield from _dedupe(backlog)
        yield from _dedupe(failed)
        yield age

    def _studies(self) -> Iterator[Metric]:
        index = self._get("store").index
        studies = GaugeMetricFamily("neuronova_studies",
                                    "Studies in the index: stable (complete) or still receiving", labels=["state"])
        counts = {"stable": 0, "receiving": 0}
        for row in index.query("SELECT stable, COUNT(*) AS n FROM studies GROUP BY stable"):
            counts["stable" if row["stable"] else "receiving"] += int(row["n"])
        for state, n in counts.items():
            studies.add_metric([state], n)
        yield studies

    def _models(self) -> Iterator[Metric]:
        entries = getattr(self._get("models"), "entries", {})
        loaded = GaugeMetricFamily("neuronova_model_loaded", "1 when the model loaded and warmed up, 0 when not",
                                   labels=["model"])
        seconds = GaugeMetricFamily("neuronova_model_load_seconds", "Time to load and warm up the model",
                                    labels=["model"])
        info = GaugeMetricFamily("neuronova_model_info", "The loaded model's version and where it runs",
                                 labels=["model", "version", "backend", "device"])
        for model_id, entry in sorted(entries.items()):
            loaded.add_metric([model_id], 1 if entry.loaded else 0)
            if entry.loaded and entry.model is not None:
                seconds.add_metric([model_id], entry.load_seconds)
                runtime = entry.model.runtime_status()
                info.add_metric([model_id, entry.model.version, str(runtime.get("backend", "")),
                                 str(runtime.get("device", ""))], 1)
        yield loaded
        yield seconds
        yield info


def _count_by_pipeline(jobs: Any, state: JobState) -> dict[str, int]:
    """Jobs of one state per pipeline, paging through the job table (only open states: few jobs)."""
    counts: dict[str, int] = {}
    after: tuple[float, str] | None = None
    seen = 0
    while seen < OPEN_JOBS_LIMIT:
        page = jobs.list_jobs(state=state, after=after, limit=1000)
        for job in page:
            counts[job.pipeline] = counts.get(job.pipeline, 0) + 1
        seen += len(page)
        if len(page) < 1000:
            break
        after = (page[-1].updated_at, page[-1].job_id)
    return counts


def _destination_names(outbox: Any) -> list[str]:
    return sorted(getattr(outbox, "destinations", {}) or {})


def _read_only(path: Path, sql: str) -> list[sqlite3.Row]:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        db.row_factory = sqlite3.Row
        return db.execute(sql).fetchall()
    finally:
        db.close()


def _dedupe(family: GaugeMetricFamily) -> Iterator[Metric]:
    """Keep the last sample of each label set (the zeros added for configured destinations come first)."""
    samples = {tuple(sorted(s.labels.items())): s for s in family.samples}
    family.samples = list(samples.values())
    yield family
