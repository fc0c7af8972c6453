"""C-STORE into the real node process, sent by dcmtk and by pynetdicom."""

from __future__ import annotations

import io
import sqlite3
import subprocess
from pathlib import Path

import pydicom
from pynetdicom import AE
from pydicom.data import get_testdata_file

from tests.conftest import DCMTK_ENV, storescu
from tests.factory import make_series, write_series


def _indexed(node) -> set[str]:
    db = sqlite3.connect(f"file:{node.data_dir / 'index.sqlite3'}?mode=ro", uri=True)
    try:
        return {row[0] for row in db.execute("SELECT sop_uid FROM instances")}
    finally:
        db.close()


def test_echoscu(node) -> None:
    proc = subprocess.run(["echoscu", "-aec", "NEURONOVA", "127.0.0.1", str(node.dimse_port)],
                          env=DCMTK_ENV, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr


def test_storescu_series_is_stored_as_sent(node, tmp_path: Path) -> None:
    files = write_series(make_series(12), tmp_path / "series")
    files.append(Path(get_testdata_file("CT_small.dcm")))
    proc = storescu(node.dimse_port, files)
    assert proc.returncode == 0, proc.stderr
    # compressed (JPEG 2000 lossless, JPEG baseline, JPEG lossless), each proposed in its own syntax
    for name, option in (("MR_small_jp2klossless.dcm", "-xv"), ("SC_rgb_jpeg_dcmtk.dcm", "-xy"),
                         ("SC_rgb_jpeg_gdcm.dcm", "-xs")):
        path = Path(get_testdata_file(name))
        proc = storescu(node.dimse_port, [path], extra=[option])
        assert proc.returncode == 0 and "Warning" not in proc.stderr, proc.stderr
        files.append(path)
    for path in files:
        ds = pydicom.dcmread(path)
        stored = next(node.data_dir.glob(f"instances/*/*/{ds.SOPInstanceUID}.dcm"))
        got = pydicom.dcmread(stored)
        # the sender may re-encode the dataset (group lengths, VR), never the pixel data or the identity
        assert got.file_meta.TransferSyntaxUID == ds.file_meta.TransferSyntaxUID
        assert (got.SOPClassUID, got.PatientID, got.Rows, got.Columns) == (ds.SOPClassUID, ds.PatientID, ds.Rows,
                                                                          ds.Columns)
        assert got.PixelData == ds.PixelData
    assert {pydicom.dcmread(p).SOPInstanceUID for p in files} <= _indexed(node)


def _send(port: int, datasets) -> list[int]:
    ae = AE(ae_title="PYSCU")
    for ds in datasets:
        ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", port, ae_title="NEURONOVA")
    assert assoc.is_established
    try:
        return [assoc.send_c_store(ds).Status for ds in datasets]
    finally:
        assoc.release()


def test_bad_instances_get_failure_statuses_and_the_node_keeps_serving(node, tmp_path: Path) -> None:
    good = make_series(1)[0]
    assert _send(node.dimse_port, [good]) == [0x0000]
    stored = next(node.data_dir.glob(f"instances/*/*/{good.SOPInstanceUID}.dcm")).read_bytes()

    traversal = make_series(1)[0]
    traversal.SOPInstanceUID = "../../x"
    no_series = make_series(1)[0]
    del no_series.SeriesInstanceUID
    conflicting = pydicom.dcmread(io.BytesIO(stored))
    conflicting.PatientName = "Changed^Name"
    statuses = _send(node.dimse_port, [traversal, no_series, conflicting])
    assert statuses == [0xC211, 0xC210, 0x0111]

    # nothing was written outside the data directory, the stored instance is unchanged
    assert not (node.data_dir.parent / "x").exists() and not list(node.data_dir.parent.glob("**/x.dcm"))
    assert next(node.data_dir.glob(f"instances/*/*/{good.SOPInstanceUID}.dcm")).read_bytes() == stored
    # and the node still accepts instances
    later = make_series(2)
    assert _send(node.dimse_port, later) == [0x0000, 0x0000]


def test_calling_ae_allowlist(node_factory, tmp_path: Path) -> None:
    node = node_factory("--allowed-ae", "ORTHANC")
    files = write_series(make_series(1), tmp_path / "s")
    refused = storescu(node.dimse_port, files, aet="INTRUDER")
    assert refused.returncode != 0
    assert storescu(node.dimse_port, files, aet="ORTHANC").returncode == 0
