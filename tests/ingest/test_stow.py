"""STOW-RS into the real node process: dicomweb-client and raw HTTP for the malformed cases."""

from __future__ import annotations

import io
import uuid

import httpx
import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient

from tests.factory import make_series


def _encode(ds) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _multipart(parts: list[bytes], *, part_type: str = "application/dicom") -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = b"".join(
        b"--" + boundary.encode() + b"\r\nContent-Type: " + part_type.encode() + b"\r\n\r\n" + p + b"\r\n"
        for p in parts
    ) + b"--" + boundary.encode() + b"--\r\n"
    return body, f'multipart/related; type="application/dicom"; boundary={boundary}'


def _post(node, body: bytes, content_type: str, path: str = "/dicomweb/studies") -> httpx.Response:
    return httpx.post(node.url + path, content=body, headers={**node.headers, "Content-Type": content_type},
                      timeout=30)


def test_dicomweb_client_stores_a_series(node) -> None:
    series = make_series(5)
    client = DICOMwebClient(url=node.url + "/dicomweb", headers=node.headers)
    response = client.store_instances(series)
    refs = response.ReferencedSOPSequence
    assert {item.ReferencedSOPInstanceUID for item in refs} == {ds.SOPInstanceUID for ds in series}
    for ds in series:
        stored = next(node.data_dir.glob(f"instances/*/*/{ds.SOPInstanceUID}.dcm"))
        assert pydicom.dcmread(stored).PixelData == ds.PixelData


def test_partial_failure_is_202_and_total_failure_is_409(node) -> None:
    good, other = make_series(2)
    truncated = _encode(other)[:-50]
    body, ctype = _multipart([_encode(good), truncated, b"not dicom at all"])
    r = _post(node, body, ctype)
    assert r.status_code == 202
    js = r.json()
    assert [i["00081155"]["Value"][0] for i in js["00081199"]["Value"]] == [good.SOPInstanceUID]
    assert [i["00081197"]["Value"][0] for i in js["00081198"]["Value"]] == [0xC210, 0xC210]

    body, ctype = _multipart([truncated])
    r = _post(node, body, ctype)
    assert r.status_code == 409
    assert r.json()["00081198"]["Value"][0]["00081197"]["Value"] == [0xC210]


def test_study_path_refuses_other_studies_and_bad_uids(node) -> None:
    a = make_series(1)[0]
    b = make_series(1)[0]
    body, ctype = _multipart([_encode(a), _encode(b)])
    r = _post(node, body, ctype, f"/dicomweb/studies/{a.StudyInstanceUID}")
    assert r.status_code == 202
    assert r.json()["00081198"]["Value"][0]["00081197"]["Value"] == [0xA900]
    r = _post(node, body, ctype, "/dicomweb/studies/..%2F..%2Fx")
    assert r.status_code in (400, 404)
    traversal = make_series(1)[0]
    traversal.SOPInstanceUID = "../../x"
    body, ctype = _multipart([_encode(traversal)])
    r = _post(node, body, ctype)
    assert r.status_code == 409
    assert r.json()["00081198"]["Value"][0]["00081197"]["Value"] == [0xC211]
    assert not list(node.data_dir.parent.rglob("x.dcm"))


@pytest.mark.parametrize("content_type", ["application/dicom", "multipart/form-data; boundary=x",
                                          'multipart/related; type="application/dicom+json"; boundary=x'])
def test_wrong_media_type_is_415(node, content_type: str) -> None:
    r = _post(node, b"--x\r\n\r\n--x--", content_type)
    assert r.status_code == 415
    assert r.json()["success"] is False


def test_malformed_body_is_400_and_stores_nothing(node) -> None:
    ds = make_series(1)[0]
    body, ctype = _multipart([_encode(ds)])
    r = _post(node, body[:-40], ctype)  # no closing boundary
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "INVALID_REQUEST"
    r = _post(node, body, "multipart/related; type=\"application/dicom\"")  # no boundary
    assert r.status_code == 400


def test_request_over_the_limit_is_413(node_factory) -> None:
    node = node_factory(env={"NEURONOVA_MAX_REQUEST_BYTES": "20000"})
    series = make_series(3)
    body, ctype = _multipart([_encode(ds) for ds in series])
    assert len(body) > 20000
    r = _post(node, body, ctype)
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "IMAGE_TOO_LARGE"

    def chunks():  # no Content-Length: the limit applies while streaming
        for i in range(0, len(body), 4096):
            yield body[i:i + 4096]

    r = httpx.post(node.url + "/dicomweb/studies", content=chunks(),
                   headers={**node.headers, "Content-Type": ctype}, timeout=30)
    assert r.status_code == 413


def test_stow_requires_a_token(node) -> None:
    body, ctype = _multipart([_encode(make_series(1)[0])])
    r = httpx.post(node.url + "/dicomweb/studies", content=body, headers={"Content-Type": ctype})
    assert r.status_code == 401
