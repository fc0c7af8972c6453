"""POST /api/v1/jobs/{id}/results (neuronova/api/results.py) on a real store: the parts stream into store temp
files through the shared multipart reader and are committed (replace) only once all have passed; the refusals
keep their codes (409 claim lost, 400 not DICOM / another study / malformed, 413 too large) and store nothing."""

from __future__ import annotations

import io
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from neuronova.api.errors import install_error_handlers
from neuronova.api.results import router
from neuronova.config import Settings
from neuronova.jobs.model import JobState
from neuronova.store import InstanceStore
from tests.factory import make_series

JOB = "job-1"
CLAIM = "claim-token"


def _encode(ds: Any) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _multipart(parts: list[bytes], *, close: bool = True) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = b"".join(b"--" + boundary.encode() + b"\r\nContent-Type: application/dicom\r\n\r\n" + p + b"\r\n"
                    for p in parts)
    if close:
        body += b"--" + boundary.encode() + b"--\r\n"
    return body, f'multipart/related; type="application/dicom"; boundary="{boundary}"'


class Outbox:
    def __init__(self) -> None:
        self.enqueued: list[tuple[str, list[str]]] = []

    def enqueue(self, job_id: str, uids: list[str]) -> None:
        self.enqueued.append((job_id, uids))

    def pending(self, job_id: str) -> int:
        return sum(len(uids) for j, uids in self.enqueued if j == job_id)


@pytest.fixture
def node(tmp_path: Path) -> Iterator[SimpleNamespace]:
    series = make_series(3)
    store = InstanceStore(tmp_path / "data")  # duplicate policy "reject": results replace all the same
    job = SimpleNamespace(job_id=JOB, state=JobState.WRITING, claim_token=CLAIM, study_uid=series[0].StudyInstanceUID)
    app = FastAPI()
    install_error_handlers(app)
    app.include_router(router)
    app.state.settings = Settings(max_request_bytes=200_000)
    app.state.store, app.state.outbox, app.state.jobs = store, Outbox(), {JOB: job}
    with TestClient(app) as client:
        yield SimpleNamespace(client=client, store=store, job=job, series=series, outbox=app.state.outbox)
    store.close()


def _post(node: SimpleNamespace, body: bytes, content_type: str, claim: str = CLAIM) -> Any:
    return node.client.post(f"/api/v1/jobs/{JOB}/results", content=body,
                            headers={"Content-Type": content_type, "X-NeuroNova-Claim": claim})


def _nothing_kept(node: SimpleNamespace) -> None:
    assert list(node.store.instances_dir.rglob("*.dcm")) == []
    assert list(node.store.tmp_dir.iterdir()) == []
    assert node.outbox.enqueued == []


def test_results_are_stored_in_place_of_a_previous_run(node: SimpleNamespace) -> None:
    uids = [ds.SOPInstanceUID for ds in node.series]
    body, ctype = _multipart([_encode(ds) for ds in node.series])
    r = _post(node, body, ctype)
    assert r.status_code == 200, r.text
    assert r.json() == {"job_id": JOB, "stored": uids, "pending": 3}
    for ds in node.series:  # a re-run: same UIDs, other content, replaced despite the "reject" policy
        ds.SeriesDescription = "re-run"
    body, ctype = _multipart([_encode(ds) for ds in node.series])
    assert _post(node, body, ctype).status_code == 200
    assert node.outbox.enqueued == [(JOB, uids), (JOB, uids)]
    assert len(list(node.store.instances_dir.rglob("*.dcm"))) == 3
    assert list(node.store.tmp_dir.iterdir()) == []


def test_a_lost_claim_is_409(node: SimpleNamespace) -> None:
    body, ctype = _multipart([_encode(node.series[0])])
    r = _post(node, body, ctype, claim="someone-else")
    assert r.status_code == 409 and r.json()["error"]["code"] == "CLAIM_LOST"
    node.job.state = JobState.SENDING
    assert _post(node, body, ctype).status_code == 409
    _nothing_kept(node)


def test_a_part_that_is_not_dicom_is_400_and_nothing_is_stored(node: SimpleNamespace) -> None:
    body, ctype = _multipart([_encode(node.series[0]), b"not dicom at all", _encode(node.series[1])])
    r = _post(node, body, ctype)
    assert r.status_code == 400 and r.json()["error"]["code"] == "INVALID_REQUEST"
    assert "not a DICOM instance" in r.json()["error"]["message"]
    _nothing_kept(node)


def test_a_part_of_another_study_is_400_and_nothing_is_stored(node: SimpleNamespace) -> None:
    other = make_series(1)[0]
    body, ctype = _multipart([_encode(node.series[0]), _encode(other)])
    r = _post(node, body, ctype)
    assert r.status_code == 400 and "another study" in r.json()["error"]["message"]
    _nothing_kept(node)


def test_results_over_the_limit_are_413(node: SimpleNamespace) -> None:
    body, ctype = _multipart([_encode(ds) for ds in node.series] * 20)
    assert len(body) > 200_000
    r = _post(node, body, ctype)
    assert r.status_code == 413 and r.json()["error"]["code"] == "INVALID_REQUEST"

    def chunks() -> Iterator[bytes]:  # no Content-Length: refused while streaming
        for i in range(0, len(body), 4096):
            yield body[i:i + 4096]

    r = node.client.post(f"/api/v1/jobs/{JOB}/results", content=chunks(),
                         headers={"Content-Type": ctype, "X-NeuroNova-Claim": CLAIM})
    assert r.status_code == 413
    _nothing_kept(node)


@pytest.mark.parametrize("case", ["not multipart", "no boundary", "no closing boundary"])
def test_malformed_requests_are_400(node: SimpleNamespace, case: str) -> None:
    body, ctype = _multipart([_encode(node.series[0])], close=case != "no closing boundary")
    if case == "not multipart":
        ctype = "application/dicom"
    elif case == "no boundary":
        ctype = 'multipart/related; type="application/dicom"'
    r = _post(node, body, ctype)
    assert r.status_code == 400 and r.json()["error"]["code"] == "INVALID_REQUEST"
    _nothing_kept(node)
