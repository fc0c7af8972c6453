"""Outbox rows carry versions: an outcome is recorded only for the content that was sent (no lost update), and
a re-run's smaller result set turns the rest of the job's rows stale."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import pydicom

from neuronova.outbox import OutboxStore, OutboxWorker, parse_destination
from neuronova.outbox.destinations import Destination
from neuronova.outbox.senders import Delivery, make_sender
from neuronova.store import InstanceStore
from tests.factory import make_series


def _put(store: InstanceStore, ds: pydicom.Dataset) -> str:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return store.put(buf.getvalue(), replace=True).instance.sop_instance_uid


def test_outcome_of_an_older_version_is_dropped(tmp_path: Path) -> None:
    outbox = OutboxStore(tmp_path / "outbox.sqlite3")
    outbox.enqueue("job", ["1.2.3"], ["d"])
    (in_flight,) = outbox.due()
    outbox.enqueue("job", ["1.2.3"], ["d"])  # a re-run re-queues it while the first send is in flight
    assert outbox.mark_sent(in_flight, status="0x0000") is False
    assert outbox.mark_retry(in_flight, status="HTTP 503", error="busy") is None
    assert outbox.mark_failed(in_flight, status="0xA900", error="refused") is False
    (row,) = outbox.for_job("job")
    assert (row.state, row.attempts, row.version) == ("pending", 0, in_flight.version + 1)
    assert outbox.pending("job") == 1
    (again,) = outbox.due()
    assert outbox.mark_sent(again, status="0x0000") is True
    assert outbox.pending("job") == 0 and outbox.for_job("job")[0].state == "sent"


def test_rerun_with_fewer_results_makes_the_rest_stale(tmp_path: Path) -> None:
    outbox = OutboxStore(tmp_path / "outbox.sqlite3")
    outbox.enqueue("job", ["1.1", "1.2", "1.3"], ["d1", "d2"])
    for row in outbox.due():
        assert outbox.mark_sent(row, status="0x0000")
    outbox.enqueue("job", ["1.1"], ["d1", "d2"])
    states = {(r.sop_uid, r.destination): r.state for r in outbox.for_job("job")}
    assert states == {("1.1", "d1"): "pending", ("1.1", "d2"): "pending", ("1.2", "d1"): "stale",
                      ("1.2", "d2"): "stale", ("1.3", "d1"): "stale", ("1.3", "d2"): "stale"}
    assert outbox.pending("job") == 6
    # a third run that brings 1.2 back sends it again; removed rows stay removed otherwise
    for row in outbox.due():
        if row.state == "stale":
            assert outbox.mark_removed(row, status="HTTP 200")
    outbox.enqueue("job", ["1.1", "1.2"], ["d1", "d2"])
    states = {(r.sop_uid, r.destination): r.state for r in outbox.for_job("job")}
    assert states[("1.2", "d1")] == "pending" and states[("1.3", "d1")] == "removed"


def test_stale_rows_without_removal_method_are_kept(tmp_path: Path) -> None:
    from neuronova.metrics import DELIVERY_FAILURES

    store = InstanceStore(tmp_path / "node")
    dest = parse_destination("dimse://PACS@127.0.0.1:1")
    outbox = OutboxStore(tmp_path / "outbox.sqlite3")
    outbox.enqueue("job", ["9.9.1"], [dest.name])
    (row,) = outbox.due()
    outbox.mark_sent(row, status="0x0000")
    settled: list[tuple[str, int]] = []
    worker = OutboxWorker(outbox=outbox, store=store, destinations=[dest], calling_ae="NEURONOVA",
                          on_job_settled=lambda job, failed: settled.append((job, len(failed))))
    before = DELIVERY_FAILURES.labels(destination=dest.name, kind="stale_kept")._value.get()
    worker.enqueue("job", [])
    worker.run_once()
    (row,) = outbox.for_job("job")
    assert row.state == "kept" and "no removal method" in (row.last_error or "")
    assert settled == [("job", 0)]
    assert DELIVERY_FAILURES.labels(destination=dest.name, kind="stale_kept")._value.get() == before + 1


def test_requeue_during_a_send_reaches_orthanc(tmp_path: Path, orthanc) -> None:
    """A real C-STORE to a real Orthanc; while it is in flight the job runs again and rewrites the instance:
    the new content is sent too, and the job settles only after that."""
    store = InstanceStore(tmp_path / "node", duplicate_policy="replace")
    dest = parse_destination(f"dimse://ORTHANC@127.0.0.1:{orthanc.dicom_port}")
    (ds,) = make_series(1)
    ds.SeriesDescription = "run 1"
    uid = _put(store, ds)
    settled: list[tuple[str, int]] = []
    sends: list[str] = []

    def send(destination: Destination, files: Sequence[tuple[str, Path]]) -> dict[str, Delivery]:
        sends.append(pydicom.dcmread(files[0][1]).SeriesDescription)
        answers = make_sender(destination, calling_ae="NEURONOVA").send(files)
        if len(sends) == 1:  # the re-run lands after the PACS read the old content, before it is recorded
            ds.SeriesDescription = "run 2"
            _put(store, ds)
            worker.enqueue("job", [uid])
        return answers

    worker = OutboxWorker(outbox=OutboxStore(tmp_path / "outbox.sqlite3"), store=store, destinations=[dest],
                          calling_ae="NEURONOVA", send=send,
                          on_job_settled=lambda job, failed: settled.append((job, len(failed))))
    worker.enqueue("job", [uid])
    worker.run_once()
    assert settled == [] and worker.pending("job") == 1  # the first answer was for the old content
    worker.run_once()
    assert sends == ["run 1", "run 2"] and settled == [("job", 0)]
    # with OverwriteInstances (orthanc/orthanc.json) the PACS holds the new content
    import httpx

    oid = httpx.post(f"{orthanc.url}/tools/lookup", content=uid).json()[0]["ID"]
    tags = httpx.get(f"{orthanc.url}/instances/{oid}/simplified-tags").json()
    assert tags["SeriesDescription"] == "run 2"
