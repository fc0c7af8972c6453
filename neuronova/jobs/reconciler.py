"""The reconciler: makes the queue agree with the job table again after a crash or a lost message.

Every ``interval`` seconds, in every process that runs one (``serve`` and each ``worker``; several are harmless,
every change is a compare-and-set):

- an active job whose lease expired (its worker died: SIGKILL, OOM, power) goes back to ``queued`` and its
  message is re-sent, or it fails with WORKER_LOST once it used ``max_attempts``;
- a queued job that is due, older than ``grace`` seconds and has no message in the queue or the schedule
  (the message was lost: a worker killed between taking it and claiming the job, a flushed Redis, a crash
  between creating the job and enqueueing it) gets its message re-sent. The queue is checked rather than
  re-sending every old queued job, so a long backlog is not multiplied; a duplicate message in a race is
  harmless because a claim is atomic;
- a job in ``sending`` whose outbox has nothing pending is marked done (the outbox's acknowledgement raced
  the job's arrival in ``sending``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from neuronova.jobs.model import JobState
from neuronova.jobs.outbox_protocol import Outbox
from neuronova.jobs.store import JobStore

log = logging.getLogger(__name__)


@dataclass
class ReconcileReport:
    recovered: int = 0
    failed: int = 0
    resent: int = 0
    sent: int = 0


class Reconciler:
    def __init__(self, *, jobs: JobStore, enqueue: Callable[..., None], pending_job_ids: Callable[[], set[str]],
                 max_attempts: int, interval: float, grace: float | None = None, outbox: Outbox | None = None) -> None:
        self.jobs = jobs
        self.enqueue = enqueue
        self.pending_job_ids = pending_job_ids
        self.max_attempts = max_attempts
        self.interval = interval
        #: A queued job younger than this is left alone: its message may be on its way.
        self.grace = max(2.0, 2 * interval) if grace is None else grace
        self.outbox = outbox
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def run_once(self, *, now: float | None = None) -> ReconcileReport:
        now = time.time() if now is None else now
        report = ReconcileReport()
        for job in self.jobs.expired(now=now):
            after = self.jobs.recover(job, max_attempts=self.max_attempts, now=now)
            if after is None:
                continue
            if after.state == JobState.FAILED:
                report.failed += 1
                log.warning("job %s: worker %s lost in each of %d attempts; failed", job.job_id, job.worker,
                            job.attempts)
                continue
            report.recovered += 1
            log.warning("job %s: worker %s stopped heartbeating; re-enqueued", job.job_id, job.worker)
            self._send(job.job_id)
        stale = self.jobs.queued_due_before(now - self.grace)
        if stale:
            pending = self.pending_job_ids()
            for job in stale:
                if job.job_id not in pending:
                    report.resent += 1
                    log.warning("job %s: queued without a queue message; re-enqueued", job.job_id)
                    self._send(job.job_id)
        if self.outbox is not None:
            for job in self.jobs.sending():
                if self.outbox.pending(job.job_id) == 0 and self.jobs.mark_sent(job.job_id) is not None:
                    report.sent += 1
        return report

    def _send(self, job_id: str) -> None:
        try:
            self.enqueue(job_id)
        except Exception:
            log.warning("job %s: re-enqueue failed; next pass retries", job_id, exc_info=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.run_once()
            except Exception:
                log.exception("reconciler pass failed")

    def start(self) -> None:
        # One pass at once: a restarted node recovers what its previous life left behind.
        try:
            self.run_once()
        except Exception:
            log.exception("reconciler pass failed")
        self._thread = threading.Thread(target=self._run, name="job-reconciler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
