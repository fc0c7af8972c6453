"""The outbox loop: send what is due, remove a re-run's stale results, record each answer (only if the row
was not re-queued meanwhile), and tell the jobs when all their rows are settled."""

from __future__ import annotations

import logging
import ssl
import threading
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path

from neuronova.metrics import DELIVERY_FAILURES
from neuronova.outbox.destinations import Destination
from neuronova.outbox.removal import make_remover
from neuronova.outbox.senders import Delivery, make_sender
from neuronova.outbox.store import OPEN_STATES, OutboxRow, OutboxStore
from neuronova.store import InstanceStore

log = logging.getLogger(__name__)

#: Called when a job has no open row left: (job_id, failed rows).
JobSettled = Callable[[str, list[OutboxRow]], None]
#: Something that sends files to a destination and answers per SOP Instance UID (senders.py).
Sender = Callable[[Destination, Sequence[tuple[str, Path]]], dict[str, Delivery]]


class OutboxWorker:
    def __init__(self, *, outbox: OutboxStore, store: InstanceStore, destinations: Sequence[Destination],
                 calling_ae: str, on_job_settled: JobSettled | None = None, poll_seconds: float = 0.5,
                 tls: ssl.SSLContext | None = None, send: Sender | None = None) -> None:
        self.outbox = outbox
        self.store = store
        self.destinations = {d.name: d for d in destinations}
        self.calling_ae = calling_ae
        self.on_job_settled = on_job_settled
        self.poll_seconds = poll_seconds
        #: The client context of ``dimses://`` destinations (the node's certificate, the CA of its peers).
        self.tls = tls
        self.send = send or self._send
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def enqueue(self, job_id: str, sop_instance_uids: list[str]) -> None:
        """Queue a job's results for every destination (the jobs' Outbox protocol)."""
        self.outbox.enqueue(job_id, sop_instance_uids, list(self.destinations))
        self._wake.set()

    def pending(self, job_id: str) -> int:
        return self.outbox.pending(job_id)

    def _send(self, destination: Destination, files: Sequence[tuple[str, Path]]) -> dict[str, Delivery]:
        return make_sender(destination, calling_ae=self.calling_ae, tls=self.tls).send(files)

    def run_once(self) -> int:
        """Send and remove everything due now; return how many rows were attempted."""
        due = self.outbox.due()
        by_destination: dict[str, list[OutboxRow]] = defaultdict(list)
        for row in due:
            by_destination[row.destination].append(row)
        jobs: set[str] = set()
        for name, rows in by_destination.items():
            jobs.update(r.job_id for r in rows)
            destination = self.destinations.get(name)
            if destination is None:
                for row in rows:
                    self.outbox.mark_failed(row, status="unknown destination",
                                            error="the destination is no longer configured")
                    DELIVERY_FAILURES.labels(destination=name, kind="unknown_destination").inc()
                continue
            self._send_rows(destination, [r for r in rows if r.state == "pending"])
            self._remove_rows(destination, [r for r in rows if r.state == "stale"])
        for job_id in jobs:
            rows = self.outbox.for_job(job_id)
            if self.on_job_settled is not None and not any(r.state in OPEN_STATES for r in rows):
                self.on_job_settled(job_id, [r for r in rows if r.state == "failed"])
        return len(due)

    def _send_rows(self, destination: Destination, rows: list[OutboxRow]) -> None:
        name = destination.name
        files, present = [], []
        for row in rows:
            path = self.store.path_of(row.sop_uid)
            if path is not None and path.exists():
                files.append((row.sop_uid, path))
                present.append(row)
            else:
                self.outbox.mark_failed(row, status="missing", error="the result instance is not in the store")
                DELIVERY_FAILURES.labels(destination=name, kind="missing").inc()
        if not files:
            return
        try:
            answers = self.send(destination, files)
        except Exception as exc:  # a sender bug or an unreadable file must not stop the loop
            log.exception("sending to %s failed", name)
            answers = {uid: Delivery("retry", "error", f"{type(exc).__name__}: {exc}") for uid, _ in files}
        for row in present:
            answer = answers.get(row.sop_uid)
            if answer is None:
                continue
            if answer.outcome == "sent":
                if not self.outbox.mark_sent(row, status=answer.status):
                    log.info("%s: %s was re-queued while being sent; it goes again", name, row.sop_uid)
            elif answer.outcome == "retry":
                DELIVERY_FAILURES.labels(destination=name, kind="retry").inc()
                delay = self.outbox.mark_retry(row, status=answer.status, error=answer.error)
                if delay is not None:
                    log.info("%s: %s not acknowledged (%s); next try in %.0f s", name, row.sop_uid, answer.status,
                             delay)
            else:
                DELIVERY_FAILURES.labels(destination=name, kind="refused").inc()
                if self.outbox.mark_failed(row, status=answer.status, error=answer.error):
                    log.warning("%s refused %s: %s", name, row.sop_uid, answer.error)

    def _remove_rows(self, destination: Destination, rows: list[OutboxRow]) -> None:
        if not rows:
            return
        name = destination.name
        remover = make_remover(destination, store=self.store, send=self.send)
        if remover is None:
            for row in rows:
                if self.outbox.mark_kept(row, status="no removal method",
                                         error="a re-run no longer produces this instance; the destination has "
                                               "no removal method (orthanc= or reject=iocm), so it stays there"):
                    DELIVERY_FAILURES.labels(destination=name, kind="stale_kept").inc()
                    log.warning("%s: stale result %s stays in the destination (no removal method)", name,
                                row.sop_uid)
            return
        try:
            answers = remover.remove([r.sop_uid for r in rows])
        except Exception as exc:
            log.exception("removing stale results from %s failed", name)
            answers = {r.sop_uid: Delivery("retry", "error", f"{type(exc).__name__}: {exc}") for r in rows}
        for row in rows:
            answer = answers[row.sop_uid]
            if answer.outcome == "removed":
                self.outbox.mark_removed(row, status=answer.status)
            elif answer.outcome == "retry":
                DELIVERY_FAILURES.labels(destination=name, kind="removal_retry").inc()
                self.outbox.mark_retry(row, status=answer.status, error=answer.error)
            else:
                DELIVERY_FAILURES.labels(destination=name, kind="removal_refused").inc()
                if self.outbox.mark_failed(row, status=answer.status, error=f"removing a stale result: {answer.error}"):
                    log.warning("%s refused to remove stale result %s: %s", name, row.sop_uid, answer.error)

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
