"""Results sent back by remote workers (``neuronova worker --node-url``): ``/api/v1/jobs/{job_id}/results``.

``POST``: a multipart/related body of application/dicom parts, as STOW-RS sends it, with the job's claim
token in ``X-NeuroNova-Claim``. The node checks that the job is being written by that claim (a worker that
lost its claim gets 409 and stops), that every part belongs to the job's study, stores the parts in place
of an earlier run's (``replace``: a re-run writes the same deterministic UIDs) and hands them to its outbox,
which delivers them and marks the job done. ``GET``: how many of the job's result rows are still to send.

Why not the STOW-RS route: STOW-RS follows the duplicate policy (a changed instance with a known UID is a
conflict), while a re-run's results must replace the previous ones; and only a job's claim may write them.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pydicom
from fastapi import APIRouter, Header, Request
from pydicom.errors import InvalidDicomError

from neuronova.errors import InvalidRequest, NeuroNovaError, NotFound
from neuronova.jobs.model import JobState
from neuronova.jobs.remote import split_multipart

log = logging.getLogger(__name__)

router = APIRouter(prefix="/api/v1/jobs", tags=["workers"])


class ClaimLost(NeuroNovaError):
    def __init__(self, message: str) -> None:
        super().__init__(message, code="CLAIM_LOST", http_status=409)


def _job(request: Request, job_id: str) -> Any:
    job = request.app.state.jobs.get(job_id)
    if job is None:
        raise NotFound(f"no job {job_id}")
    return job


@router.post("/{job_id}/results", summary="A remote worker's results of a job (multipart/related application/dicom)")
async def post_results(job_id: str, request: Request,
                       x_neuronova_claim: str = Header("", alias="X-NeuroNova-Claim")) -> dict[str, Any]:
    job = _job(request, job_id)
    if job.state != JobState.WRITING or not x_neuronova_claim or job.claim_token != x_neuronova_claim:
        raise ClaimLost(f"job {job_id} is {job.state} and not being written by this claim")
    content_type = request.headers.get("content-type", "")
    if not content_type.lower().startswith("multipart/related"):
        raise InvalidRequest(f"results must be multipart/related application/dicom, got {content_type!r}")
    limit = request.app.state.settings.max_request_bytes
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise InvalidRequest(f"results larger than {limit} bytes", http_status=413)
    try:
        parts = split_multipart(bytes(body), content_type)
    except ValueError as exc:
        raise InvalidRequest(str(exc)) from exc
    uids: list[str] = []
    for part in parts:
        try:
            ds = pydicom.dcmread(pydicom.filebase.DicomBytesIO(part), stop_before_pixels=True)
            study, sop = str(ds.StudyInstanceUID), str(ds.SOPInstanceUID)
        except (InvalidDicomError, AttributeError, ValueError) as exc:
            raise InvalidRequest(f"a part is not a DICOM instance with its UIDs: {exc}") from exc
        if study != job.study_uid:
            raise InvalidRequest(f"result {sop} belongs to another study than job {job_id}")
        uids.append(sop)
    store = request.app.state.store
    outbox = request.app.state.outbox

    def commit() -> int:
        for part in parts:
            store.put(part, replace=True)
        outbox.enqueue(job_id, uids)
        return int(outbox.pending(job_id))

    pending = await asyncio.to_thread(commit)
    log.info("job %s: %d result instance(s) from a remote worker", job_id, len(uids))
    return {"job_id": job_id, "stored": uids, "pending": pending}


@router.get("/{job_id}/results", summary="How many of a job's result rows are still to be sent")
async def get_results(job_id: str, request: Request) -> dict[str, Any]:
    _job(request, job_id)
    outbox = request.app.state.outbox
    return {"job_id": job_id, "pending": int(await asyncio.to_thread(outbox.pending, job_id))}
