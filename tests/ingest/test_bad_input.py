"""The corpus of bad and tricky instances (corpus.py) sent to the real node over both paths: C-STORE
(pynetdicom sending the file's bytes as they are, and dcmtk's storescu) and STOW-RS; each answer checked, and
nothing stored before changes when an instance is refused."""

from __future__ import annotations

import re
import secrets
import sqlite3
import subprocess
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pydicom
import pytest
from pynetdicom import AE
from pynetdicom import _config as pynetdicom_config

from tests.conftest import DCMTK_ENV, NodeProcess, get_port
from tests.factory import make_series
from tests.ingest.corpus import STANDALONE, Case, against, encode

pytestmark = pytest.mark.slow
RESULTS: Counter[str] = Counter()


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    data = tmp_path_factory.mktemp("bad-input") / "data"
    data.mkdir()
    process = NodeProcess(data_dir=data, http_port=get_port(), dimse_port=get_port(), secret=secrets.token_hex(32),
                          extra_args=["--workers", "0"])
    process.start(timeout=240)  # the full node loads its models first: slow on a busy shared machine
    yield process
    process.stop()
    print("answered as expected:", dict(RESULTS))


def _snapshot(node: NodeProcess) -> tuple[dict[str, bytes], list[tuple]]:
    files = {str(p.relative_to(node.data_dir)): p.read_bytes() for p in node.data_dir.glob("instances/*/*/*.dcm")}
    db = sqlite3.connect(f"file:{node.data_dir / 'index.sqlite3'}?mode=ro", uri=True)
    try:
        rows = list(db.execute("SELECT sop_uid, series_uid, study_uid, path, size FROM instances ORDER BY sop_uid"))
    finally:
        db.close()
    return files, rows


def _cstore(node: NodeProcess, path: Path) -> tuple[int, str]:
    meta = pydicom.dcmread(path, stop_before_pixels=True).file_meta
    ae = AE(ae_title="PYSCU")
    ae.add_requested_context(meta.MediaStorageSOPClassUID, meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", node.dimse_port, ae_title="NEURONOVA")
    assert assoc.is_established
    chunked = pynetdicom_config.STORE_SEND_CHUNKED_DATASET
    pynetdicom_config.STORE_SEND_CHUNKED_DATASET = True  # send the file's dataset bytes as they are, unread
    try:
        rsp = assoc.send_c_store(path)
        return int(rsp.Status), str(rsp.get("ErrorComment", ""))
    finally:
        pynetdicom_config.STORE_SEND_CHUNKED_DATASET = chunked
        assoc.release()


def _storescu(node: NodeProcess, path: Path) -> int:
    proc = subprocess.run(["storescu", "-d", "-R", "-aec", "NEURONOVA", "127.0.0.1", str(node.dimse_port), str(path)],
                          env=DCMTK_ENV, capture_output=True, text=True, timeout=60)
    found = re.search(r"DIMSE Status\s*:\s*0x([0-9a-fA-F]{4})", proc.stdout + proc.stderr)
    assert found, proc.stdout[-2000:] + proc.stderr[-2000:]
    return int(found.group(1), 16)


def _stow(node: NodeProcess, parts: list[bytes]) -> httpx.Response:
    boundary = uuid.uuid4().hex
    body = b"".join(b"--" + boundary.encode() + b"\r\nContent-Type: application/dicom\r\n\r\n" + p + b"\r\n"
                    for p in parts) + b"--" + boundary.encode() + b"--\r\n"
    return httpx.post(node.url + "/dicomweb/studies", content=body, timeout=60, headers={
        **node.headers, "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'})


def _check_stow(r: httpx.Response, case: Case) -> None:
    js = r.json()
    if case.refused:
        assert r.status_code == 409, (case.name, r.status_code, js)
        assert js["00081198"]["Value"][0]["00081197"]["Value"] == [case.status], case.name
    elif case.status:
        assert r.status_code == 202, (case.name, r.status_code, js)
        assert js["00081199"]["Value"][0]["00081196"]["Value"] == [case.status], case.name
    else:
        assert r.status_code == 200, (case.name, r.status_code, js)


def _send_both(node: NodeProcess, case: Case, tmp_path: Path, *, storescu: bool = False) -> None:
    for path_name in ("dimse", "storescu", "stow") if storescu else ("dimse", "stow"):
        data = case.build()
        file = tmp_path / f"{uuid.uuid4().hex}.dcm"
        file.write_bytes(data)
        before = _snapshot(node)
        if path_name == "dimse":
            status, comment = _cstore(node, file)
            assert status == case.status, (case.name, hex(status), comment)
            if case.status:
                assert comment, case.name  # every refusal and warning says why
        elif path_name == "storescu":
            assert _storescu(node, file) == case.status, case.name
        else:
            _check_stow(_stow(node, [data]), case)
        if case.refused:
            assert _snapshot(node) == before, f"{case.name}: a refusal changed what is stored"
        RESULTS[path_name] += 1


#: Cases dcmtk's storescu sends byte for byte (it re-encodes what it reads, and refuses to read some faults).
STORESCU_CASES = {"rows 0", "bits stored > bits allocated", "3 samples in MONOCHROME2", "SEG class with MR content",
                  "CT class with MR content", "pixel data 2 bytes short",
                  "backslash in PatientName", "over-long LO", "odd pixel count, padded"}


@pytest.mark.parametrize("case", STANDALONE, ids=lambda c: c.name)
def test_standalone_case_on_both_paths(node: NodeProcess, case: Case, tmp_path: Path) -> None:
    _send_both(node, case, tmp_path, storescu=case.name in STORESCU_CASES)


def test_cases_against_a_stored_instance_on_both_paths(node: NodeProcess, tmp_path: Path) -> None:
    for path_name in ("dimse", "stow"):
        stored = make_series(1)[0]
        first = encode(stored)
        if path_name == "stow":
            assert _stow(node, [first]).status_code == 200
        else:
            file = tmp_path / "first.dcm"
            file.write_bytes(first)
            assert _cstore(node, file)[0] == 0
        for case in against(stored):
            data = case.build()
            before = _snapshot(node)
            if path_name == "dimse":
                file = tmp_path / f"{uuid.uuid4().hex}.dcm"
                file.write_bytes(data)
                status, comment = _cstore(node, file)
                assert status == case.status, (case.name, hex(status), comment)
            else:
                _check_stow(_stow(node, [data]), case)
            if case.refused or case.name.startswith("same data set"):
                assert _snapshot(node) == before, f"{case.name} changed what is stored"
            RESULTS[path_name] += 1


def test_the_same_instance_by_cstore_then_stow_then_another_sender(node: NodeProcess, tmp_path: Path) -> None:
    ds = make_series(1)[0]
    file = tmp_path / "one.dcm"
    file.write_bytes(encode(ds))
    assert _storescu(node, file) == 0
    r = _stow(node, [file.read_bytes()])
    assert r.status_code == 200, r.json()
    assert _cstore(node, file)[0] == 0
    implicit = encode(pydicom.dcmread(file), transfer_syntax="1.2.840.10008.1.2")
    assert _stow(node, [implicit]).status_code == 200
    stored = pydicom.dcmread(next(node.data_dir.glob(f"instances/*/*/{ds.SOPInstanceUID}.dcm")))
    for dataset in (stored, ds):
        dataset.pop(0xFFFCFFFC, None)  # Data Set Trailing Padding: storescu drops it
    assert stored == ds  # the first arrival is what is kept


def test_a_mixed_request_is_202_with_the_failures_listed(node: NodeProcess) -> None:
    good = make_series(1)[0]
    bad = next(c for c in STANDALONE if c.name == "rows 0")
    r = _stow(node, [encode(good), bad.build()])
    assert r.status_code == 202
    js = r.json()
    assert [i["00081155"]["Value"][0] for i in js["00081199"]["Value"]] == [good.SOPInstanceUID]
    failed = js["00081198"]["Value"][0]
    assert failed["00081197"]["Value"] == [0xA900] and failed["00081155"]["Value"]  # the refused UID is named


def _counters(node: NodeProcess) -> dict[str, float]:
    text = httpx.get(node.url + "/metrics", headers=node.headers, timeout=30).text
    assert "NN-TEST" not in text and "Doe" not in text  # no patient data in labels
    return {m.group(1): float(m.group(2)) for m in re.finditer(
        r'^(neuronova_instances_(?:received|refused|warned)_total\{[^}]*\}) ([0-9.e+]+)$', text, re.M)}


def test_refusals_and_warnings_are_counted(node: NodeProcess, tmp_path: Path) -> None:
    before = _counters(node)
    for name in ("pixel data 2 bytes long", "over-long LO"):
        _send_both(node, next(c for c in STANDALONE if c.name == name), tmp_path)
    after = _counters(node)

    def delta(key: str) -> float:
        return after.get(key, 0) - before.get(key, 0)

    for path in ("dimse", "stow"):
        assert delta(f'neuronova_instances_refused_total{{path="{path}",reason="pixel_length"}}') == 1
        assert delta(f'neuronova_instances_warned_total{{path="{path}",reason="text_vr"}}') == 1
        assert delta(f'neuronova_instances_received_total{{path="{path}"}}') == 1
