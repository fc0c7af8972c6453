import io
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file

from neuronova.errors import InvalidDicom, InvalidUID
from neuronova.store import scan_part10, validate_uid


def _bytes(name: str) -> bytes:
    return Path(get_testdata_file(name)).read_bytes()


def _scan(data: bytes):
    return scan_part10(io.BytesIO(data), len(data))


@pytest.mark.parametrize("name", ["MR_small.dcm", "CT_small.dcm", "JPEG2000.dcm", "SC_rgb_jpeg.dcm",
                                  "MR_small_RLE.dcm", "MR_small_implicit.dcm", "MR_small_bigendian.dcm"])
def test_scan_reads_index_attributes_like_pydicom(name: str) -> None:
    data = _bytes(name)
    ds = pydicom.dcmread(io.BytesIO(data))
    scanned = _scan(data)
    assert scanned.sop_instance_uid == ds.SOPInstanceUID
    assert scanned.study_uid == ds.StudyInstanceUID
    assert scanned.series_uid == ds.SeriesInstanceUID
    assert scanned.attrs["Modality"] == ds.Modality
    assert scanned.attrs["PatientName"] == str(ds.PatientName)
    assert scanned.transfer_syntax == ds.file_meta.TransferSyntaxUID


@pytest.mark.parametrize("name", ["MR_small.dcm", "CT_small.dcm", "JPEG2000.dcm", "MR_small_RLE.dcm"])
@pytest.mark.parametrize("keep", [0.99, 0.5, 0.1])
def test_truncated_files_are_refused(name: str, keep: float) -> None:
    data = _bytes(name)
    with pytest.raises(InvalidDicom):
        _scan(data[: int(len(data) * keep)])


def test_cut_at_an_element_boundary_before_pixel_data_is_refused() -> None:
    data = _bytes("MR_small.dcm")
    ds = pydicom.dcmread(io.BytesIO(data))
    del ds.PixelData
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    with pytest.raises(InvalidDicom, match="Pixel Data"):
        _scan(buf.getvalue())


@pytest.mark.parametrize("payload", [b"", b"hello world", b"\0" * 128 + b"DICN" + b"\0" * 64, b"%PDF-1.4" * 50])
def test_non_dicom_is_refused(payload: bytes) -> None:
    with pytest.raises(InvalidDicom):
        _scan(payload)


@pytest.mark.parametrize("bad", ["../../x", "1.2.3/../../etc", "", "1..2", "1.02.3", "1.2." + "3" * 70, "1.2.a"])
def test_bad_uids_are_refused(bad: str) -> None:
    with pytest.raises(InvalidUID):
        validate_uid(bad)


def test_uid_like_path_in_dataset_is_refused() -> None:
    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    ds.SOPInstanceUID = "../../x"
    ds.file_meta.MediaStorageSOPInstanceUID = "../../x"
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    with pytest.raises(InvalidUID, match="SOPInstanceUID"):
        _scan(buf.getvalue())
