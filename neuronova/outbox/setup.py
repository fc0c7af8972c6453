"""The outbox of a data directory, wired to the job table: a job is done when every destination
acknowledged its results (and removed a re-run's stale ones), failed when one refused them for good."""

from __future__ import annotations

from typing import TYPE_CHECKING

from neuronova.config import Settings
from neuronova.outbox.destinations import parse_destination
from neuronova.outbox.store import OutboxRow, OutboxStore
from neuronova.outbox.tls import sender_context
from neuronova.outbox.worker import OutboxWorker
from neuronova.store import InstanceStore

if TYPE_CHECKING:
    from neuronova.jobs.store import JobStore


def build_outbox(settings: Settings, *, store: InstanceStore, jobs: "JobStore") -> OutboxWorker:
    """The outbox of this data directory; a job is done when every destination acknowledged its results."""
    destinations = [parse_destination(d) for d in settings.destinations]
    tls = sender_context(settings) if any(d.tls for d in destinations) else None

    def settled(job_id: str, failed: list[OutboxRow]) -> None:
        if not failed:
            jobs.mark_sent(job_id)
        else:
            where = ", ".join(sorted({f"{r.destination} ({r.last_status})" for r in failed}))
            jobs.fail(job_id, error_code="SEND_REFUSED",
                      error_message=f"{len(failed)} result instance(s) refused by {where}")

    return OutboxWorker(outbox=OutboxStore(settings.data_dir / "outbox.sqlite3"), store=store,
                        destinations=destinations, calling_ae=settings.ae_title, on_job_settled=settled, tls=tls)
