"""A study is complete a short grace after the associations or STOW-RS requests that brought it end, not only
after ``stable_seconds`` of quiet: the real node, storescu (both data phases) and STOW-RS."""

from __future__ import annotations

import io
import time
import uuid
from pathlib import Path

import httpx
import pydicom
import pytest

from tests.conftest import storescu
from tests.factory import make_series, write_series

pytestmark = pytest.mark.slow


def _stable_after(node, study_uid: str, timeout: float = 20.0) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        r = httpx.get(f"{node.url}/api/v1/studies/{study_uid}", headers=node.headers, timeout=10)
        if r.status_code == 200 and r.json()["stable"]:
            return time.monotonic() - start
        time.sleep(0.05)
    raise AssertionError(f"study not stable within {timeout} s although its transfer ended")


def test_association_and_stow_end_complete_the_study(node_factory, tmp_path: Path) -> None:
    # quiet rule far away (120 s): only the end of the transfers can make these studies stable in time
    node = node_factory("--stable-seconds", "120", "--workers", "0", start=False)
    node.start(timeout=120)

    series = make_series(12)
    proc = storescu(node.dimse_port, write_series(series, tmp_path / "a"))
    assert proc.returncode == 0, proc.stderr
    assert _stable_after(node, series[0].StudyInstanceUID) < 10

    stowed = make_series(5)
    boundary = uuid.uuid4().hex
    parts = []
    for ds in stowed:
        buf = io.BytesIO()
        pydicom.dcmwrite(buf, ds, enforce_file_format=True)
        parts.append(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + buf.getvalue() + b"\r\n")
    r = httpx.post(f"{node.url}/dicomweb/studies", content=b"".join(parts) + f"--{boundary}--\r\n".encode(),
                   headers={**node.headers,
                            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'})
    assert r.status_code == 200, r.text
    assert _stable_after(node, stowed[0].StudyInstanceUID) < 10

    # a study still being sent over an open association is not made stable by another transfer ending
    r = httpx.get(f"{node.url}/api/v1/studies/{series[0].StudyInstanceUID}", headers=node.headers, timeout=10)
    assert r.json()["stable_generation"] == 1
