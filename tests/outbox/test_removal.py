"""Stale results of a re-run are deleted from a real Orthanc through its REST API (pyorthanc); an unreachable
REST API keeps them due for another try, counted as delivery failures."""

from __future__ import annotations

import io
from pathlib import Path

from neuronova.metrics import DELIVERY_FAILURES
from neuronova.outbox import OutboxStore, OutboxWorker, parse_destination
from neuronova.store import InstanceStore
from tests.conftest import get_port
from tests.factory import make_series


def _store_series(store: InstanceStore, n: int) -> list[str]:
    uids = []
    for ds in make_series(n):
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        uids.append(store.put(buf.getvalue()).instance.sop_instance_uid)
    return uids


def test_stale_results_are_deleted_from_orthanc(tmp_path: Path, orthanc) -> None:
    store = InstanceStore(tmp_path / "node")
    dest = parse_destination(f"{orthanc.url}/dicom-web?orthanc={orthanc.url}")
    settled: list[tuple[str, int]] = []
    worker = OutboxWorker(outbox=OutboxStore(tmp_path / "outbox.sqlite3"), store=store, destinations=[dest],
                          calling_ae="NEURONOVA", on_job_settled=lambda job, failed: settled.append((job, len(failed))))
    run1 = _store_series(store, 4)
    worker.enqueue("job", run1)
    worker.run_once()
    assert orthanc.sop_uids() == set(run1) and settled == [("job", 0)]

    worker.enqueue("job", run1[:2])  # the re-run keeps two of them
    assert worker.pending("job") == 4  # two to send again, two to remove
    worker.run_once()
    assert orthanc.sop_uids() == set(run1[:2])
    assert settled[-1] == ("job", 0)
    states = {r.sop_uid: r.state for r in worker.outbox.for_job("job")}
    assert states == {run1[0]: "sent", run1[1]: "sent", run1[2]: "removed", run1[3]: "removed"}

    # removing again what is gone already is no error (a crash between delete and record, say)
    worker.enqueue("job", run1[:1])
    worker.run_once()
    assert orthanc.sop_uids() == {run1[0]} and settled[-1] == ("job", 0)


def test_unreachable_rest_api_keeps_stale_rows_due(tmp_path: Path, orthanc) -> None:
    store = InstanceStore(tmp_path / "node")
    dest = parse_destination(f"dimse://ORTHANC@127.0.0.1:{orthanc.dicom_port}?orthanc=http://127.0.0.1:{get_port()}")
    worker = OutboxWorker(outbox=OutboxStore(tmp_path / "outbox.sqlite3"), store=store, destinations=[dest],
                          calling_ae="NEURONOVA")
    run1 = _store_series(store, 2)
    worker.enqueue("job", run1)
    worker.run_once()
    before = DELIVERY_FAILURES.labels(destination=dest.name, kind="removal_retry")._value.get()
    worker.enqueue("job", run1[:1])
    worker.run_once()
    stale = [r for r in worker.outbox.for_job("job") if r.sop_uid == run1[1]]
    assert [(r.state, r.attempts, r.last_status) for r in stale] == [("stale", 1, "no response")]
    assert worker.pending("job") == 1 and run1[1] in orthanc.sop_uids()
    assert DELIVERY_FAILURES.labels(destination=dest.name, kind="removal_retry")._value.get() == before + 1
