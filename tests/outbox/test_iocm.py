"""IOCM rejection notes (``?reject=iocm``): a valid KOS titled "Rejected for Quality Reasons" naming the stale
instances reaches the destination. Orthanc implements no IOCM: it files the note and keeps the instances (the
documented limit; Orthanc destinations use ``?orthanc=``), which is what the test shows of the archive."""

from __future__ import annotations

import io
from pathlib import Path

import httpx
import pydicom
import pytest

from neuronova.outbox import OutboxStore, OutboxWorker, parse_destination
from neuronova.outbox.iocm import rejection_note
from neuronova.store import InstanceStore
from tests.conftest import dciodvfy_errors
from tests.factory import make_series

KOS = "1.2.840.10008.5.1.4.1.1.88.59"


def _store(store: InstanceStore, datasets) -> list[str]:
    uids = []
    for ds in datasets:
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        uids.append(store.put(buf.getvalue()).instance.sop_instance_uid)
    return uids


def test_rejection_note_is_valid_and_deterministic(tmp_path: Path) -> None:
    series = make_series(3)
    note = rejection_note(series[:2])
    again = rejection_note(list(reversed(series[:2])))
    assert note.SOPInstanceUID == again.SOPInstanceUID and note.SOPClassUID == KOS
    assert note.ConceptNameCodeSequence[0].CodeValue == "113001"
    assert note.StudyInstanceUID == series[0].StudyInstanceUID
    path = tmp_path / "kos.dcm"
    note.save_as(path, enforce_file_format=True)
    assert dciodvfy_errors(path) == []
    with pytest.raises(ValueError, match="one study"):
        rejection_note([series[0], make_series(1)[0]])


def test_stale_results_are_rejected_by_a_note(tmp_path: Path, orthanc) -> None:
    store = InstanceStore(tmp_path / "node")
    dest = parse_destination(f"dimse://ORTHANC@127.0.0.1:{orthanc.dicom_port}?reject=iocm")
    settled: list[tuple[str, int]] = []
    worker = OutboxWorker(outbox=OutboxStore(tmp_path / "outbox.sqlite3"), store=store, destinations=[dest],
                          calling_ae="NEURONOVA", on_job_settled=lambda job, failed: settled.append((job, len(failed))))
    run1 = _store(store, make_series(3))
    worker.enqueue("job", run1)
    worker.run_once()
    worker.enqueue("job", run1[:1])
    worker.run_once()
    assert settled[-1] == ("job", 0)
    rows = {r.sop_uid: r for r in worker.outbox.for_job("job")}
    assert {rows[u].state for u in run1[1:]} == {"removed"}
    assert all("IOCM" in (rows[u].last_status or "") for u in run1[1:])

    # the note in the archive: valid, in the study, naming exactly the stale instances
    notes = [i for i in orthanc.instances()
             if httpx.get(f"{orthanc.url}/instances/{i}/simplified-tags").json()["SOPClassUID"] == KOS]
    assert len(notes) == 1
    data = httpx.get(f"{orthanc.url}/instances/{notes[0]}/file").content
    (tmp_path / "note.dcm").write_bytes(data)
    assert dciodvfy_errors(tmp_path / "note.dcm") == []
    note = pydicom.dcmread(io.BytesIO(data))
    named = {ref.ReferencedSOPInstanceUID for item in note.CurrentRequestedProcedureEvidenceSequence
             for series in item.ReferencedSeriesSequence for ref in series.ReferencedSOPSequence}
    assert named == set(run1[1:])
    assert note.ConceptNameCodeSequence[0].CodeMeaning == "Rejected for Quality Reasons"
    assert set(run1) <= orthanc.sop_uids()  # Orthanc has no IOCM: it keeps them (README, "Re-runs")
