"""What the job runner needs from the outbox (built elsewhere: neuronova.outbox.worker.OutboxWorker fits).

The runner calls ``enqueue`` with a job's result instances while it still holds the job (so ``enqueue`` must be
idempotent: a retried job enqueues the same SOP Instance UIDs again), then moves the job to ``sending``; the
outbox calls ``JobStore.mark_sent(job_id)`` when every result was acknowledged by every destination (or
``JobStore.fail`` when one was refused for good). ``pending`` lets the runner and the reconciler finish a job
whose results were all acknowledged before it reached ``sending``.

``enqueue`` gives the job's whole result set of this run: the outbox sends it (again, even when an earlier
send of the same instance is still in flight: its outcome no longer counts), and removes from each
destination, where it can, the instances an earlier run of the job sent that this run no longer produced.
``pending`` counts both kinds of work left; a job is done when both are finished.
"""

from __future__ import annotations

from typing import Protocol


class Outbox(Protocol):
    def enqueue(self, job_id: str, sop_instance_uids: list[str]) -> None:
        """This run's results of the job replace the previous run's (idempotent for the same list)."""

    def pending(self, job_id: str) -> int:
        """Rows of the job still to send or to remove from a destination."""


class NullOutbox:
    """No destinations: results stay in the node (and its DICOMweb); a job is done once its results are stored."""

    def enqueue(self, job_id: str, sop_instance_uids: list[str]) -> None:
        return None

    def pending(self, job_id: str) -> int:
        return 0
