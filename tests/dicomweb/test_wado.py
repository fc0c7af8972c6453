"""WADO-RS against the routers on a real server: instances byte for byte, metadata, frames, bulk data."""

from __future__ import annotations

from typing import Any

import httpx
import numpy as np
import pydicom
import pytest
from dicomweb_client import DICOMwebClient
from pydicom import encaps
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from requests import HTTPError

from neuronova.dicomweb.wado import _native_frame, _Pixels, parse_accept
from tests.dicomweb.conftest import Corpus, multipart_parts, stored_path

OCTET = ("application/octet-stream",)


def _instance_url(base_url: str, corpus: Corpus, series_key: str, index: int = 0) -> str:
    study = corpus.studies[series_key.split("/")[0]]
    sop = corpus.instances[series_key][index]
    return f"{base_url}/studies/{study}/series/{corpus.series[series_key]}/instances/{sop}"


def test_study_parts_are_the_stored_files_in_series_order(base_url: str, corpus: Corpus) -> None:
    response = httpx.get(f"{base_url}/studies/{corpus.studies['jane']}",
                         headers={"Accept": 'multipart/related; type="application/dicom"'})
    assert response.status_code == 200
    assert 'type="application/dicom"' in response.headers["content-type"]
    parts = multipart_parts(response)
    expected = corpus.instances["jane/1"] + corpus.instances["jane/2"]
    assert [body for _, body in parts] == [corpus.files[sop] for sop in expected]
    assert {ctype for ctype, _ in parts} == {"application/dicom; transfer-syntax=1.2.840.10008.1.2.1"}


def test_series_keeps_each_stored_transfer_syntax(base_url: str, corpus: Corpus) -> None:
    response = httpx.get(f"{base_url}/studies/{corpus.studies['john']}/series/{corpus.series['john/1']}")
    parts = multipart_parts(response)
    assert [body for _, body in parts] == [corpus.files[sop] for sop in corpus.instances["john/1"]]
    assert [ctype.split("=")[1] for ctype, _ in parts] == ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"]
    assert stored_path(corpus, corpus.instances["john/1"][1]).read_bytes() == parts[1][1]


def test_dicomweb_client_retrieves_study_series_instance(client: DICOMwebClient, corpus: Corpus) -> None:
    study = client.retrieve_study(corpus.studies["anna"])
    assert sorted(ds.SOPInstanceUID for ds in study) == sorted(corpus.instances["anna/1"] + corpus.instances["anna/2"])
    series = client.retrieve_series(corpus.studies["jane"], corpus.series["jane/2"])
    assert [ds.SOPInstanceUID for ds in series] == corpus.instances["jane/2"]
    nm = client.retrieve_instance(corpus.studies["nm"], corpus.series["nm/1"], corpus.instances["nm/1"][0])
    original = pydicom.dcmread(stored_path(corpus, corpus.instances["nm/1"][0]))
    assert nm.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.91"
    assert np.array_equal(nm.pixel_array, original.pixel_array)


@pytest.mark.parametrize(("accept", "status"), [
    ('multipart/related; type="application/dicom"; transfer-syntax=*', 200),
    ('multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.91', 200),
    ('multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.1', 406),
    ('multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.1, '
     'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.91;q=0.5', 200),
    ("*/*", 200),
    ("application/json", 406),
    ('multipart/related; type="application/octet-stream"', 406),
])
def test_transfer_syntax_negotiation(base_url: str, corpus: Corpus, accept: str, status: int) -> None:
    response = httpx.get(_instance_url(base_url, corpus, "nm/1"), headers={"Accept": accept})
    assert response.status_code == status
    if status == 200:
        assert multipart_parts(response) == [
            ("application/dicom; transfer-syntax=1.2.840.10008.1.2.4.91", corpus.files[corpus.instances["nm/1"][0]])]
    else:
        assert response.json()["error"]["code"] == "NOT_ACCEPTABLE"


def _check_metadata(item: dict[str, Any], path: Any, bulk_prefix: str) -> None:
    source = pydicom.dcmread(path, stop_before_pixels=True)
    assert item["7FE00010"]["BulkDataURI"] == bulk_prefix + "/bulkdata/7FE00010"
    assert "Value" not in item["7FE00010"] and "InlineBinary" not in item["7FE00010"]
    decoded = Dataset.from_json(item, bulk_data_uri_handler=lambda tag, vr, uri: b"")
    for keyword in ("SOPInstanceUID", "PatientName", "StudyDate", "Rows", "Columns", "ImageOrientationPatient",
                    "PixelSpacing", "BitsAllocated", "WindowCenter", "SeriesNumber", "InstanceNumber"):
        if keyword in source:
            assert decoded[keyword].value == source[keyword].value, keyword


def test_series_metadata(client: DICOMwebClient, corpus: Corpus, base_url: str) -> None:
    metadata = client.retrieve_series_metadata(corpus.studies["jane"], corpus.series["jane/1"])
    assert [m["00080018"]["Value"][0] for m in metadata] == corpus.instances["jane/1"]
    for index, item in enumerate(metadata):
        sop = corpus.instances["jane/1"][index]
        _check_metadata(item, stored_path(corpus, sop), _instance_url(base_url, corpus, "jane/1", index))
        assert item["00083002"] == {"vr": "UI", "Value": ["1.2.840.10008.1.2.1"]}
    study = client.retrieve_study_metadata(corpus.studies["jane"])
    assert len(study) == 5


def test_metadata_of_implicit_vr_instance(client: DICOMwebClient, corpus: Corpus, base_url: str) -> None:
    sop = corpus.instances["john/1"][1]
    item = client.retrieve_instance_metadata(corpus.studies["john"], corpus.series["john/1"], sop)
    assert item["7FE00010"]["vr"] == "OW"
    _check_metadata(item, stored_path(corpus, sop), _instance_url(base_url, corpus, "john/1", 1))
    assert item["00083002"] == {"vr": "UI", "Value": ["1.2.840.10008.1.2"]}
    assert item["00100010"] == {"vr": "PN", "Value": [{"Alphabetic": "DOE^JOHN"}]}


def test_bulkdata_of_native_and_compressed_pixel_data(client: DICOMwebClient, corpus: Corpus) -> None:
    for key, index in (("john/1", 1), ("ct/1", 0)):
        sop = corpus.instances[key][index]
        item = client.retrieve_instance_metadata(corpus.studies[key.split("/")[0]], corpus.series[key], sop)
        (value,) = client.retrieve_bulkdata(item["7FE00010"]["BulkDataURI"], media_types=OCTET)
        assert value == pydicom.dcmread(stored_path(corpus, sop)).PixelData
    sop = corpus.instances["nm/1"][0]
    item = client.retrieve_instance_metadata(corpus.studies["nm"], corpus.series["nm/1"], sop)
    (value,) = client.retrieve_bulkdata(item["7FE00010"]["BulkDataURI"], media_types=OCTET)
    assert value == pydicom.dcmread(stored_path(corpus, sop)).pixel_array.astype("<u2", copy=False).tobytes()


def test_frames_of_a_native_multiframe_instance(client: DICOMwebClient, corpus: Corpus, base_url: str) -> None:
    sop = corpus.instances["anna/2"][0]
    frames = pydicom.dcmread(stored_path(corpus, sop)).pixel_array
    got = client.retrieve_instance_frames(corpus.studies["anna"], corpus.series["anna/2"], sop, [3, 1],
                                          media_types=OCTET)
    assert got == [frames[2].astype("<i2").tobytes(), frames[0].astype("<i2").tobytes()]
    assert not np.array_equal(frames[0], frames[2])
    url = f"{base_url}/studies/{corpus.studies['anna']}/series/{corpus.series['anna/2']}/instances/{sop}/frames/2"
    response = httpx.get(url, headers={"Accept": "multipart/related; type=application/octet-stream; transfer-syntax=*"})
    assert multipart_parts(response) == [("application/octet-stream; transfer-syntax=1.2.840.10008.1.2.1",
                                          frames[1].astype("<i2").tobytes())]
    single = corpus.instances["john/1"][1]  # implicit VR: the frame is the value as stored
    (frame,) = client.retrieve_instance_frames(corpus.studies["john"], corpus.series["john/1"], single, [1],
                                               media_types=OCTET)
    assert frame == pydicom.dcmread(stored_path(corpus, single)).PixelData


def test_frames_of_a_compressed_instance_decoded_or_as_stored(client: DICOMwebClient, corpus: Corpus,
                                                              base_url: str) -> None:
    sop = corpus.instances["nm/1"][0]
    source = pydicom.dcmread(stored_path(corpus, sop))
    (decoded,) = client.retrieve_instance_frames(corpus.studies["nm"], corpus.series["nm/1"], sop, [1],
                                                 media_types=OCTET)
    assert decoded == source.pixel_array.astype("<u2", copy=False).tobytes()
    (stored,) = client.retrieve_instance_frames(corpus.studies["nm"], corpus.series["nm/1"], sop, [1],
                                                media_types=("image/jp2",))
    assert stored == encaps.get_frame(source.PixelData, 0, number_of_frames=1)
    response = httpx.get(_instance_url(base_url, corpus, "nm/1") + "/frames/1",
                         headers={"Accept": 'multipart/related; type="image/jp2"'})
    assert multipart_parts(response)[0][0] == "image/jp2; transfer-syntax=1.2.840.10008.1.2.4.91"
    # OHIF's Accept: octet-stream with any transfer syntax gets the stored frame, its syntax in the part header
    response = httpx.get(_instance_url(base_url, corpus, "nm/1") + "/frames/1",
                         headers={"Accept": "multipart/related; type=application/octet-stream; transfer-syntax=*"})
    assert multipart_parts(response) == [("application/octet-stream; transfer-syntax=1.2.840.10008.1.2.4.91", stored)]
    # the client's default Accept (type="*/*") gets decoded octet-stream
    (default,) = client.retrieve_instance_frames(corpus.studies["nm"], corpus.series["nm/1"], sop, [1])
    assert default == decoded


@pytest.mark.parametrize(("suffix", "accept", "status"), [
    ("/frames/4", None, 404),
    ("/frames/0", None, 400),
    ("/frames/1,x", None, 400),
    ("/frames/1", 'multipart/related; type="image/jpeg"', 406),
    ("/bulkdata/00100010", None, 404),
    ("/bulkdata/7FE0", None, 400),
    ("/bulkdata/7FE00010", "application/dicom+json", 406),
    ("/metadata", "application/dicom+xml", 406),
])
def test_frame_and_bulkdata_errors(base_url: str, corpus: Corpus, suffix: str, accept: str | None,
                                   status: int) -> None:
    headers = {"Accept": accept} if accept else {}
    response = httpx.get(_instance_url(base_url, corpus, "anna/2") + suffix, headers=headers)
    assert response.status_code == status, response.text


@pytest.mark.parametrize("path", [
    "/studies/1.2.3.4", "/studies/1.2.3.4/metadata", "/studies/{jane}/series/1.2.3.4",
    "/studies/{jane}/series/{john_series}", "/studies/{jane}/series/{jane_series}/instances/1.2.3.4",
    "/studies/{jane}/series/{jane_series}/instances/1.2.3.4/frames/1",
    "/studies/{jane}/series/{jane_series}/instances/1.2.3.4/metadata",
])
def test_unknown_uids_are_404(base_url: str, corpus: Corpus, path: str) -> None:
    url = base_url + path.format(jane=corpus.studies["jane"], john_series=corpus.series["john/1"],
                                 jane_series=corpus.series["jane/1"])
    response = httpx.get(url)
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "NOT_FOUND"


@pytest.mark.parametrize("path", ["/studies/1.2.03", "/studies/abc/metadata", "/studies/1.2.3/series/x.y",
                                  "/studies/1.2.3/series/1.2.3/instances/1..2/frames/1"])
def test_malformed_uids_are_400(base_url: str, path: str) -> None:
    response = httpx.get(base_url + path)
    assert response.status_code == 400
    assert "not a valid DICOM UID" in response.json()["error"]["message"]


def test_dicomweb_client_sees_404(client: DICOMwebClient) -> None:
    with pytest.raises(HTTPError) as info:
        client.retrieve_study("1.2.3.4")
    assert info.value.response.status_code == 404


def test_unaligned_one_bit_frames_are_repacked() -> None:
    # Three 3x3 binary frames: 9 bits each, so frames 2 and 3 start inside a byte.
    frames = np.array([[1, 0, 1, 0, 1, 0, 1, 0, 1], [1, 1, 0, 0, 1, 1, 0, 0, 1], [0, 1, 1, 1, 0, 0, 0, 1, 1]],
                      dtype=np.uint8)
    ds = Dataset()
    ds.Rows, ds.Columns, ds.BitsAllocated, ds.SamplesPerPixel, ds.NumberOfFrames = 3, 3, 1, 1, 3
    packed = np.packbits(frames.ravel(), bitorder="little").tobytes()
    px = _Pixels(ds, DataElement(0x7FE00010, "OB", packed), None, "1.2.840.10008.1.2.1", 3)  # type: ignore[arg-type]
    for index in range(3):
        got = np.unpackbits(np.frombuffer(_native_frame(px, index), dtype=np.uint8), bitorder="little")[:9]
        assert np.array_equal(got, frames[index])


def test_parse_accept_orders_by_quality() -> None:
    ranges = parse_accept('multipart/related; type="image/jp2";q=0.4, multipart/related; '
                          'type="application/octet-stream", image/png;q=0')
    assert [(r.type, r.part_type, r.q) for r in ranges] == [
        ("multipart/related", "application/octet-stream", 1.0), ("multipart/related", "image/jp2", 0.4)]
