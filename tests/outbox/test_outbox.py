"""The outbox against a real Orthanc: C-STORE and STOW-RS, classified failures, retry until acknowledged."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from neuronova.errors import ConfigError
from neuronova.outbox import OutboxStore, OutboxWorker, parse_destination
from neuronova.outbox.senders import classify_dimse
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


@pytest.mark.parametrize("raw", ["dimse://ORTHANC@127.0.0.1:4242", "http://127.0.0.1:8042/dicom-web",
                                 "https://u:p@pacs.example/dicom-web#token=abc",
                                 "dimses://PACS@pacs.example:2762?orthanc=https://u:p@pacs.example:8042/"])
def test_destinations_parse(raw: str) -> None:
    d = parse_destination(raw)
    assert "p@" not in d.name and "abc" not in d.name and "orthanc" not in d.name


def test_destination_options() -> None:
    d = parse_destination("dimses://PACS@pacs.example:2762?orthanc=https://u:p%40ss@pacs.example:8042/")
    assert (d.kind, d.tls, d.name) == ("dimse", True, "dimses://PACS@pacs.example:2762")
    assert (d.orthanc_url, d.orthanc_username, d.orthanc_password) == ("https://pacs.example:8042", "u", "p@ss")
    plain = parse_destination("http://127.0.0.1:8042/dicom-web?orthanc=http://127.0.0.1:8042")
    assert (plain.url, plain.orthanc_url, plain.tls) == ("http://127.0.0.1:8042/dicom-web", "http://127.0.0.1:8042",
                                                          False)
    assert parse_destination("dimse://DCM4CHEE@arc:11112?reject=iocm").reject == "iocm"


@pytest.mark.parametrize("raw", ["ftp://x", "dimse://host:11112", "dimse://WAYTOOLONGAETITLE123@h:1", "http://",
                                 "dimse://A@h:1?delete=yes", "dimse://A@h:1?orthanc=ftp://x", "dimse://A@h:1?reject=x",
                                 "dimse://A@h:1?reject=iocm&orthanc=http://h:8042"])
def test_bad_destinations_name_the_setting(raw: str) -> None:
    with pytest.raises(ConfigError, match="NEURONOVA_DESTINATIONS"):
        parse_destination(raw)


def test_dimse_status_classes() -> None:
    assert [classify_dimse(s) for s in (0x0000, 0xB000, 0xA700, 0xA900, 0xC000, 0x0111)] == \
        ["sent", "sent", "retry", "failed", "failed", "sent"]


@pytest.mark.parametrize("kind", ["dimse", "dicomweb"])
def test_results_reach_orthanc_and_survive_its_downtime(tmp_path: Path, orthanc, kind: str) -> None:
    store = InstanceStore(tmp_path / "node")
    raw = (f"dimse://ORTHANC@127.0.0.1:{orthanc.dicom_port}" if kind == "dimse"
           else f"http://127.0.0.1:{orthanc.http_port}/dicom-web")
    settled: list[tuple[str, int]] = []
    worker = OutboxWorker(outbox=OutboxStore(tmp_path / "node" / "outbox.sqlite3", backoff_base=0.2),
                          store=store, destinations=[parse_destination(raw)], calling_ae="NEURONOVA",
                          on_job_settled=lambda job, failed: settled.append((job, len(failed))))
    first = _store_series(store, 3)
    worker.enqueue("job-1", first)
    worker.run_once()
    assert settled == [("job-1", 0)]
    assert set(first) <= orthanc.sop_uids()

    # the PACS is down: rows stay pending with the reason, and go once it is back
    orthanc.stop()
    second = _store_series(store, 2)
    worker.enqueue("job-2", second)
    worker.run_once()
    rows = worker.outbox.for_job("job-2")
    assert {r.state for r in rows} == {"pending"} and all(r.attempts == 1 and r.last_error for r in rows)
    assert settled == [("job-1", 0)]
    orthanc.start()
    import time

    deadline = time.monotonic() + 10
    while worker.outbox.pending("job-2") and time.monotonic() < deadline:
        time.sleep(0.2)
        worker.run_once()
    assert settled[-1] == ("job-2", 0)
    assert set(second) <= orthanc.sop_uids()


def test_unreachable_destination_backs_off(tmp_path: Path) -> None:
    store = InstanceStore(tmp_path / "node")
    dest = parse_destination(f"dimse://NOBODY@127.0.0.1:{get_port()}")
    worker = OutboxWorker(outbox=OutboxStore(tmp_path / "outbox.sqlite3"), store=store, destinations=[dest],
                          calling_ae="NEURONOVA")
    worker.enqueue("j", _store_series(store, 1))
    worker.run_once()
    worker.run_once()  # not due yet: no second attempt
    (row,) = worker.outbox.for_job("j")
    assert row.state == "pending" and row.attempts == 1 and row.next_try > 0
