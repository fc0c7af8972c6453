"""The outbox loop: send what is due, record each answer, and tell the jobs when all their results are in."""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from collections.abc import Callable, Sequence

from neuronova.outbox.destinations import Destination
from neuronova.outbox.senders import Delivery, make_sender
from neuronova.outbox.store import OutboxRow, OutboxStore
from neuronova.store import InstanceStore

log = logging.getLogger(__name__)

#: Called when a job has no pending row left: (job_id, failed rows).
JobSettled = Callable[[str, list[OutboxRow]], None]


class OutboxWorker:
    def __init__(self, *, outbox: OutboxStore, store: InstanceStore, destinations: Sequence[Destination],
                 calling_ae: str, on_job_settled: JobSettled | None = None, poll_seconds: float = 0.5) -> None:
        self.outbox = outbox
        self.store = store
        self.destinations = {d.name: d for d in destinations}
        self.calling_ae = calling_ae
        self.on_job_settled = on_job_settled
        self.poll_seconds = poll_seconds
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def enqueue(self, job_id: str, sop_instance_uids: list[str]) -> None:
        """Queue a job's results for every destination (the jobs' Outbox protocol)."""
        self.outbox.enqueue(job_id, sop_instance_uids, list(self.destinations))
        self._wake.set()

    def pending(self, job_id: str) -> int:
        return self.outbox.pending(job_id)

    def run_once(self) -> int:
        """Send everything due now; return how many rows were attempted."""
        due = self.outbox.due()
        by_destination: dict[str, list[OutboxRow]] = defaultdict(list)
        for row in due:
            by_destination[row.destination].append(row)
        jobs: set[str] = set()
        for name, rows in by_destination.items():
            destination = self.destinations.get(name)
            if destination is None:
                for row in rows:
                    self.outbox.mark_failed(row.id, status="unknown destination",
                                            error="the destination is no longer configured")
                    jobs.add(row.job_id)
                continue
            files, missing = [], []
            for row in rows:
                path = self.store.path_of(row.sop_uid)
                (files.append((row.sop_uid, path)) if path is not None and path.exists() else missing.append(row))
            for row in missing:
                self.outbox.mark_failed(row.id, status="missing", error="the result instance is not in the store")
            answers: dict[str, Delivery] = {}
            if files:
                try:
                    answers = make_sender(destination, calling_ae=self.calling_ae).send(files)
                except Exception as exc:  # a sender bug or an unreadable file must not stop the loop
                    log.exception("sending to %s failed", name)
                    answers = {uid: Delivery("retry", "error", f"{type(exc).__name__}: {exc}") for uid, _ in files}
            for row in rows:
                jobs.add(row.job_id)
                answer = answers.get(row.sop_uid)
                if answer is None:
                    continue
                if answer.outcome == "sent":
                    self.outbox.mark_sent(row.id, status=answer.status)
                elif answer.outcome == "retry":
                    delay = self.outbox.mark_retry(row.id, status=answer.status, error=answer.error)
                    log.info("%s: %s not acknowledged (%s); next try in %.0f s", name, row.sop_uid, answer.status,
                             delay)
                else:
                    self.outbox.mark_failed(row.id, status=answer.status, error=answer.error)
                    log.warning("%s refused %s: %s", name, row.sop_uid, answer.error)
        for job_id in jobs:
            rows = self.outbox.for_job(job_id)
            if self.on_job_settled is not None and not any(r.state == "pending" for r in rows):
                self.on_job_settled(job_id, [r for r in rows if r.state == "failed"])
        return len(due)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_once()
            except Exception:
                log.exception("outbox loop failed")
            self._wake.wait(self.poll_seconds)
            self._wake.clear()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="outbox", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
