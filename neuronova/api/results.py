"""Results sent back by remote workers (``neuronova worker --node-url``): ``/api/v1/jobs/{job_id}/results``.

``POST``: a multipart/related body of application/dicom parts, as STOW-RS sends it, with the job's claim
token in ``X-NeuroNova-Claim``. The node checks that the job is being written by that claim (a worker that
lost its claim gets 409 and stops), that every part belongs to the job's study, stores the parts in place
of an earlier run's (``replace``: a re-run writes the same deterministic UIDs) and hands them to its outbox,
which delivers them and marks the job done. ``GET``: how many of the job's result rows are still to send.

The body is streamed by the reader every upload shares (``neuronova.multipart``): each part goes into a store
temp file as it arrives and is checked (a DICOM instance of the job's study) at its closing boundary; the parts
are committed only once every one has passed, so a request refused by those checks stores none of them.

Why not the STOW-RS route: STOW-RS follows the duplicate policy (a changed instance with a known UID is a
conflict), while a re-run's results must replace the previous ones; and only a job's claim may write them.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pydicom
from fastapi import APIRouter, Header, Request

from neuronova.errors import InvalidRequest, NeuroNovaError, NotFound, PayloadTooLarge
from neuronova.jobs.model import JobState
from neuronova.multipart import Limits, PartHeaders, read_multipart
from neuronova.store import TmpInstance

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


class _Results:
    """The body's parts, each streamed into a store temp file and checked at its end (a DICOM instance of the
    job's study); committed only when every part has passed."""

    def __init__(self, store: Any, job: Any) -> None:
        self.store, self.job = store, job
        self.parts: list[tuple[TmpInstance, str]] = []

    def begin(self, part: PartHeaders) -> _ResultPart:
        return _ResultPart(self, self.store.new_tmp())

    def discard(self) -> None:
        for tmp, _ in self.parts:
            tmp.discard()
        self.parts.clear()


class _ResultPart:
    def __init__(self, results: _Results, tmp: TmpInstance) -> None:
        self.results, self.tmp = results, tmp

    def write(self, data: memoryview) -> None:
        self.tmp.write(data)

    def end(self) -> None:
        try:
            with self.tmp.content() as fp:
                ds = pydicom.dcmread(fp, stop_before_pixels=True)
            study, sop = str(ds.StudyInstanceUID), str(ds.SOPInstanceUID)
        except Exception as exc:  # pydicom's many ways of saying "not DICOM"
            raise InvalidRequest(f"a part is not a DICOM instance with its UIDs: {exc}") from exc
        job = self.results.job
        if study != job.study_uid:
            raise InvalidRequest(f"result {sop} belongs to another study than job {job.job_id}")
        self.results.parts.append((self.tmp, sop))

    def abort(self) -> None:
        self.tmp.discard()


@router.post("/{job_id}/results", summary="A remote worker's results of a job (multipart/related application/dicom)")
async def post_results(job_id: str, request: Request,
                       x_neuronova_claim: str = Header("", alias="X-NeuroNova-Claim")) -> dict[str, Any]:
    job = _job(request, job_id)
    if job.state != JobState.WRITING or not x_neuronova_claim or job.claim_token != x_neuronova_claim:
        raise ClaimLost(f"job {job_id} is {job.state} and not being written by this claim")
    limit = request.app.state.settings.max_request_bytes
    store = request.app.state.store
    outbox = request.app.state.outbox
    results = _Results(store, job)
    try:
        try:
            # The sinks write temp files and read the parts' headers: in a worker thread.
            await read_multipart(request, results.begin, media_type="multipart/related", limits=Limits(body=limit),
                                 wrong_media=InvalidRequest, in_thread=True)
        except PayloadTooLarge as exc:
            raise InvalidRequest(f"results larger than {limit} bytes", http_status=413) from exc
        uids = [sop for _, sop in results.parts]

        def commit() -> int:
            while results.parts:
                tmp, _ = results.parts.pop(0)
                store.commit(tmp, replace=True)  # a refused one is discarded by commit, the rest below
            outbox.enqueue(job_id, uids)
            return int(outbox.pending(job_id))

        pending = await asyncio.to_thread(commit)
    finally:
        results.discard()  # what was not committed
    log.info("job %s: %d result instance(s) from a remote worker", job_id, len(uids))
    return {"job_id": job_id, "stored": uids, "pending": pending}


@router.get("/{job_id}/results", summary="How many of a job's result rows are still to be sent")
async def get_results(job_id: str, request: Request) -> dict[str, Any]:
    _job(request, job_id)
    outbox = request.app.state.outbox
    return {"job_id": job_id, "pending": int(await asyncio.to_thread(outbox.pending, job_id))}
