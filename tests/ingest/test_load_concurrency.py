"""Load: 10 concurrent associations of 500 instances each plus 4 STOW-RS clients at once, into one node.

Every acknowledged instance is stored and indexed exactly once (file on disk, one index row, readable back
by WADO-RS), nothing is refused, and the node's resident memory stays bounded while it ingests. Speed is
not asserted here (bench/ingest.py measures it against Orthanc).
"""

from __future__ import annotations

import concurrent.futures
import io
import subprocess
import uuid
from pathlib import Path

import httpx
import pydicom
import pytest

from tests.conftest import storescu
from tests.factory import make_series, write_series

pytestmark = pytest.mark.slow

ASSOCIATIONS, PER_ASSOCIATION = 10, 500
STOW_CLIENTS, STOW_REQUESTS, PER_REQUEST = 4, 5, 25


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def _encode(ds: pydicom.Dataset) -> bytes:
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


def _stow(url: str, headers: dict[str, str], datasets: list[pydicom.Dataset]) -> list[str]:
    """POST the datasets in requests of PER_REQUEST; return the SOP Instance UIDs the node referenced."""
    stored: list[str] = []
    with httpx.Client(timeout=120) as client:
        for i in range(0, len(datasets), PER_REQUEST):
            boundary = uuid.uuid4().hex
            body = b"".join(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + _encode(ds) + b"\r\n"
                            for ds in datasets[i:i + PER_REQUEST]) + f"--{boundary}--\r\n".encode()
            r = client.post(f"{url}/dicomweb/studies", content=body, headers={
                **headers, "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
                "Accept": "application/dicom+json"})
            assert r.status_code == 200, r.text[:500]
            stored += [item["00081155"]["Value"][0] for item in r.json()["00081199"]["Value"]]
    return stored


def test_ten_associations_and_four_stow_clients_at_once(tmp_path: Path, node_factory) -> None:
    node = node_factory("--stable-seconds", "30", "--workers", "0", start=False)
    node.start(timeout=120)
    assert node.proc is not None
    dimse_dirs = []
    expected: set[str] = set()
    for a in range(ASSOCIATIONS):
        series = make_series(PER_ASSOCIATION, patient_id=f"LOAD-{a}", series_description="AX T1")
        expected |= {str(ds.SOPInstanceUID) for ds in series}
        dimse_dirs.append(write_series(series, tmp_path / f"assoc{a}"))
    stow_sets = []
    for c in range(STOW_CLIENTS):
        series = make_series(STOW_REQUESTS * PER_REQUEST, patient_id=f"STOW-{c}")
        expected |= {str(ds.SOPInstanceUID) for ds in series}
        stow_sets.append(series)
    rss_before = _rss_mb(node.proc.pid)
    peak = rss_before

    with concurrent.futures.ThreadPoolExecutor(ASSOCIATIONS + STOW_CLIENTS) as pool:
        sends = [pool.submit(storescu, node.dimse_port, files) for files in dimse_dirs]
        stows = [pool.submit(_stow, node.url, node.headers, series) for series in stow_sets]
        pending = set(sends) | set(stows)
        while pending:
            done, pending = concurrent.futures.wait(pending, timeout=0.5)
            peak = max(peak, _rss_mb(node.proc.pid))
        results: list[subprocess.CompletedProcess[str]] = [f.result() for f in sends]
        stowed = [uid for f in stows for uid in f.result()]

    for proc in results:
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert "Status" not in proc.stderr or "0x0000" in proc.stderr, proc.stderr[-2000:]
    assert len(stowed) == STOW_CLIENTS * STOW_REQUESTS * PER_REQUEST and len(set(stowed)) == len(stowed)

    # every instance indexed once, its file present, as many files as rows: nothing lost, nothing twice
    import sqlite3

    index = sqlite3.connect(f"file:{node.data_dir / 'index.sqlite3'}?mode=ro", uri=True)
    rows = index.execute("SELECT sop_uid, path FROM instances").fetchall()
    index.close()
    uids = [uid for uid, _ in rows]
    assert len(uids) == len(set(uids)) == len(expected) and set(uids) == expected
    for _, path in rows[:: max(1, len(rows) // 200)]:  # a sample read back from disk
        assert pydicom.dcmread(node.data_dir / "instances" / path, stop_before_pixels=True).SOPInstanceUID
    files = [p for p in (node.data_dir / "instances").rglob("*") if p.is_file()]
    assert len(files) == len(expected)
    # bounded memory: ingest must not hold instances (each ~10 kB; 6000 of them is 60 MB) or grow with them
    assert peak - rss_before < 400, f"RSS grew from {rss_before:.0f} to {peak:.0f} MB while ingesting"
    r = httpx.get(f"{node.url}/health", timeout=10)
    assert r.status_code == 200
