"""Wiring: the job system of one process, the in-process consumer of ``serve``, and ``neuronova worker``.

``serve`` builds a :class:`JobSystem`, subscribes ``on_study_stable`` to the study watcher, passes
``app_state()`` to the HTTP app and calls ``start(workers=settings.workers)``: the queue consumer then runs in
threads of the node itself (SqliteHuey in the data directory: no server to install). ``neuronova worker``
(:func:`run_worker`) runs a consumer alone, in the foreground, on the same data directory or, with a Redis
queue and job table, on another machine that sees the instances through a shared volume. Models load once
per worker process: the consumer's workers are threads of one process.

The job table: SQLite in the data directory with the embedded queue; with a Redis queue, by default a Redis
job table on the same server (shared by every worker). ``job_store_url`` (argument, or a ``job_store_url``
setting when it exists) puts it elsewhere: another Redis (recommended: with persistence, apart from the
queue, so a flushed queue is rebuilt from it) or ``sqlite`` (workers on one machine only).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from huey.consumer import Consumer, Worker

from neuronova.config import Settings
from neuronova.errors import ConfigError
from neuronova.jobs.huey_app import JobQueue
from neuronova.jobs.model import Job
from neuronova.jobs.outbox_protocol import Outbox
from neuronova.jobs.reconciler import Reconciler
from neuronova.jobs.runner import BACKOFF_BASE_SECONDS, JobRunner
from neuronova.jobs.service import on_study_stable
from neuronova.jobs.store import JobStore, open_job_store
from neuronova.jobs.webhook import WebhookSender
from neuronova.pipelines.registry import Pipeline, model_pipelines, pipelines as registered_pipelines
from neuronova.routing.rules import RoutingRules, load_rules
from neuronova.store import InstanceStore

log = logging.getLogger(__name__)

#: Queue polling of the SQLite queue (Redis blocks on BRPOP instead): first wait, growth per empty poll, cap.
POLL_INITIAL_SECONDS = 0.005
POLL_BACKOFF = 1.15
POLL_MAX_SECONDS = 0.1
#: A graceful stop waits this long for running jobs, then interrupts them (the reconciler re-runs them).
SHUTDOWN_TIMEOUT_SECONDS = 30.0


def resolve_job_store_url(settings: Settings, override: str | None = None) -> str | None:
    """None: SQLite in the data directory; else a redis:// URL."""
    url = override or getattr(settings, "job_store_url", None) or settings.queue_url
    if url in (None, "", "sqlite"):
        return None
    if not str(url).startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError(f"job store URL: must be a redis:// URL or 'sqlite', got {url!r}")
    return str(url)


class _WakeableWorker(Worker):
    """A Huey worker whose idle wait also ends when this process enqueues (no polling delay in-process)."""

    def __init__(self, *args: Any, wake: threading.Event, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.wake = wake

    def sleep(self) -> None:
        if self.delay > self.max_delay:
            self.delay = self.max_delay
        if self.wake.wait(self.delay):
            self.wake.clear()
            self.delay = self.default_delay
        else:
            self.delay *= self.backoff


class EmbeddedConsumer(Consumer):
    """Huey's consumer in threads of a process that owns its signals (the node): no signal handlers."""

    def __init__(self, huey: Any, *, workers: int) -> None:
        self.wake = threading.Event()
        super().__init__(huey, workers=workers, worker_type="thread", periodic=False,
                         initial_delay=POLL_INITIAL_SECONDS, backoff=POLL_BACKOFF, max_delay=POLL_MAX_SECONDS,
                         shutdown_timeout=SHUTDOWN_TIMEOUT_SECONDS, check_worker_health=False)

    def _create_worker(self) -> Worker:
        return _WakeableWorker(huey=self.huey, stop_flag=self.stop_flag, default_delay=self.default_delay,
                               max_delay=self.max_delay, backoff=self.backoff, max_tasks=self.max_tasks,
                               wake=self.wake)

    def _set_signal_handlers(self) -> None:
        return None

    def stop(self, graceful: bool = True) -> None:
        self.wake.set()
        super().stop(graceful=graceful)


@dataclass
class JobSystem:
    settings: Settings
    store: InstanceStore
    jobs: JobStore
    queue: JobQueue
    runner: JobRunner
    reconciler: Reconciler
    rules: RoutingRules
    pipelines: Mapping[str, Pipeline]
    webhook: WebhookSender | None = None
    consumer: EmbeddedConsumer | None = None
    _started: list[Any] = field(default_factory=list)

    def enqueue(self, job_id: str, *, delay: float = 0.0) -> None:
        self.queue.enqueue(job_id, delay=delay)

    def on_study_stable(self, study_uid: str, generation: int) -> list[Job]:
        """The study watcher's subscriber; returns the jobs it enqueued."""
        return on_study_stable(study_uid, generation, store=self.store, jobs=self.jobs, rules=self.rules,
                        pipelines=self.pipelines, enqueue=self.enqueue)

    def app_state(self) -> dict[str, Any]:
        """What ``neuronova.api.status`` expects on ``app.state``."""
        return {"jobs": self.jobs, "enqueue": self.enqueue, "routing_rules": self.rules, "pipelines": self.pipelines}

    def health(self) -> dict[str, Any]:
        """A /health provider: the queue's backend and the jobs per state."""
        return {"queue": {"backend": "redis" if self.settings.queue_url else "sqlite",
                          "in_process_workers": self.consumer.workers if self.consumer else 0,
                          "jobs": self.jobs.counts()}}

    def start(self, *, workers: int, reconcile: bool = True) -> None:
        """Start the webhook sender, the reconciler and ``workers`` in-process consumer threads (0: none)."""
        if self.webhook is not None:
            self.webhook.start()
            self._started.append(self.webhook)
        if reconcile:
            self.reconciler.start()
            self._started.append(self.reconciler)
        if workers > 0:
            self.consumer = EmbeddedConsumer(self.queue.huey, workers=workers)
            self.queue.on_enqueue = self.consumer.wake.set
            self.consumer.start()
            self._started.append(self.consumer)

    def stop(self) -> None:
        for part in reversed(self._started):
            try:
                part.stop()
            except Exception:
                log.exception("stopping %s failed", type(part).__name__)
        self._started.clear()
        self.queue.on_enqueue = None
        self.runner.close()
        self.jobs.close()


def build_job_system(settings: Settings, *, store: InstanceStore, job_store_url: str | None = None,
                     outbox: Outbox | None = None, pipelines: Mapping[str, Pipeline] | None = None,
                     rules: RoutingRules | None = None, retry_backoff: float = BACKOFF_BASE_SECONDS) -> JobSystem:
    """Everything one process needs to create and run jobs, from the settings; nothing is started."""
    jobs = open_job_store(data_dir=settings.data_dir, url=resolve_job_store_url(settings, job_store_url))
    pipes = pipelines if pipelines is not None else {**registered_pipelines(), **model_pipelines(settings.model_dir)}
    routing = rules if rules is not None else load_rules(settings.routing_rules)
    queue = JobQueue.from_settings(settings)
    runner = JobRunner(jobs=jobs, store=store, settings=settings, enqueue=queue.enqueue, outbox=outbox,
                       pipelines=pipes, retry_backoff=retry_backoff)
    queue.run = runner.run
    reconciler = Reconciler(jobs=jobs, enqueue=queue.enqueue, pending_job_ids=queue.pending_job_ids,
                            max_attempts=settings.max_attempts, interval=settings.heartbeat_seconds, outbox=outbox)
    webhook = WebhookSender.from_settings(settings)
    if webhook is not None:
        jobs.add_end_listener(webhook)
    return JobSystem(settings=settings, store=store, jobs=jobs, queue=queue, runner=runner, reconciler=reconciler,
                     rules=routing, pipelines=pipes, webhook=webhook)


def run_worker(settings: Settings, *, workers: int, job_store_url: str | None = None,
               outbox: Outbox | None = None) -> None:
    """``neuronova worker``: a consumer with ``workers`` threads in the foreground until SIGINT/SIGTERM (graceful:
    running jobs get ``SHUTDOWN_TIMEOUT_SECONDS`` to finish), with its own reconciler."""
    if workers < 1:
        raise ConfigError("NEURONOVA_WORKERS (--workers): a worker process needs at least 1")
    store = InstanceStore.from_settings(settings)
    system = build_job_system(settings, store=store, job_store_url=job_store_url, outbox=outbox)
    remote = None
    if settings.node_url:
        # A worker on another machine: inputs by WADO-RS from the node, results back to the node, which
        # stores them and delivers them (neuronova.jobs.remote); its data directory is a local cache.
        from neuronova.jobs.remote import RemoteNode

        remote = RemoteNode(settings, store=store)
        system.runner.outbox = remote
        system.runner.inputs = remote.fetch_inputs
    elif outbox is None and settings.destinations:
        # Results are queued in the shared outbox; the node (``serve``) sends them.
        from neuronova.outbox.setup import build_outbox

        system.runner.outbox = system.reconciler.outbox = build_outbox(settings, store=store, jobs=system.jobs)
    system.start(workers=0)
    consumer = Consumer(system.queue.huey, workers=workers, worker_type="thread", periodic=False,
                        initial_delay=POLL_INITIAL_SECONDS, backoff=POLL_BACKOFF, max_delay=POLL_MAX_SECONDS,
                        shutdown_timeout=SHUTDOWN_TIMEOUT_SECONDS, graceful_signal="TERM")
    log.info("worker: %d consumer thread(s) on the %s queue", workers, "Redis" if settings.queue_url else "SQLite")
    try:
        consumer.run()
    finally:
        system.stop()
        if remote is not None:
            remote.close()
        store.close()


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m neuronova.jobs.worker``: ``neuronova worker`` plus options tests and benchmarks need."""
    p = argparse.ArgumentParser(prog="python -m neuronova.jobs.worker")
    p.add_argument("--data-dir", type=Path, required=True)
    p.add_argument("--queue-url")
    p.add_argument("--job-store-url", help="redis://... or 'sqlite' (default: the queue's Redis, or SQLite)")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--heartbeat-seconds", type=float)
    p.add_argument("--max-attempts", type=int)
    p.add_argument("--pipeline-module", action="append", default=[],
                   help="import this module first (it registers extra pipelines); repeatable")
    p.add_argument("--log-level", default="INFO")
    args = p.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for module in args.pipeline_module:
        importlib.import_module(module)
    overrides = {"data_dir": args.data_dir, "queue_url": args.queue_url, "heartbeat_seconds": args.heartbeat_seconds,
                 "max_attempts": args.max_attempts}
    try:
        settings = Settings.load(overrides)
        run_worker(settings, workers=args.workers, job_store_url=args.job_store_url)
    except ConfigError as exc:
        log.error("%s", exc)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
