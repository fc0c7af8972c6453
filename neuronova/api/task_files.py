"""A predict task's files for workers on other machines: ``/api/v1/tasks/{task_id}/...``.

- ``GET input/{name}``: one file of the task's upload, as the node checked and kept it;
- ``PUT result/{name}``: one result file (``mask.nii.gz``, ``seg.dcm``, ``gradcam_<z>_heatmap.png`` ...), which
  replaces the node's file of that name atomically (written aside, fsync'd, renamed).

Every request carries the job's claim token in ``X-NeuroNova-Claim`` and is answered only while that claim
runs the job (409 CLAIM_LOST otherwise): a worker that lost its job (lease expired, taken over) cannot read
for it or overwrite what the run that replaced it wrote. Authenticated by the node's bearer token (the
worker mints it from the shared secret), not rate limited. File names are checked against the names the
task made (input) or may make (result); a client's name never becomes a path unchecked.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Header, Request
from fastapi.responses import FileResponse

from neuronova.api.results import ClaimLost
from neuronova.errors import NotFound, PayloadTooLarge
from neuronova.jobs.model import ACTIVE_STATES, Job
from neuronova.predict.segmentation import RESULT_NAME
from neuronova.predict.tasks import INPUT_DIR, PIPELINES, RESULT_DIR, check_task_id, decode_params, task_job_id

router = APIRouter(prefix="/api/v1/tasks", tags=["workers"])


def _claimed(request: Request, task_id: str, claim: str) -> tuple[Job, Path]:
    """The task's job, held by ``claim``, and the task's directory."""
    check_task_id(task_id)
    jobs = request.app.state.jobs
    job = next((j for kind in PIPELINES if (j := jobs.get(task_job_id(task_id, kind))) is not None), None)
    if job is None:
        raise NotFound(f"no task {task_id}")
    if job.state not in ACTIVE_STATES or not claim or job.claim_token != claim:
        raise ClaimLost(f"task {task_id} is {job.state} and not being run by this claim")
    return job, Path(request.app.state.settings.data_dir) / "predict" / task_id


@router.get("/{task_id}/input/{name}", summary="A file of a predict task's upload (for the worker running it)")
def get_input(task_id: str, name: str, request: Request,
              x_neuronova_claim: str = Header("", alias="X-NeuroNova-Claim")) -> FileResponse:
    job, task_dir = _claimed(request, task_id, x_neuronova_claim)
    if name not in decode_params(job.input_fingerprint)["input"]["files"]:
        raise NotFound(f"task {task_id} has no input file {name[:64]!r}")
    path = task_dir / INPUT_DIR / name
    if not path.is_file():
        raise NotFound(f"the input file {name} of task {task_id} is gone")
    return FileResponse(path, media_type="application/octet-stream")


@router.put("/{task_id}/result/{name}", summary="A result file of a predict task (from the worker running it)")
async def put_result(task_id: str, name: str, request: Request,
                     x_neuronova_claim: str = Header("", alias="X-NeuroNova-Claim")) -> dict[str, Any]:
    _, task_dir = _claimed(request, task_id, x_neuronova_claim)
    if not RESULT_NAME.fullmatch(name):
        raise NotFound(f"{name[:64]!r} is not a result file name")
    limit = request.app.state.settings.max_request_bytes
    result_dir = task_dir / RESULT_DIR
    result_dir.mkdir(parents=True, exist_ok=True)
    tmp = result_dir / f".tmp-{os.getpid()}-{id(request)}-{name}"
    size = 0
    try:
        with tmp.open("wb") as fh:
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise PayloadTooLarge(f"a result file larger than {limit} bytes")
                fh.write(chunk)
            fh.flush()
            os.fsync(fh.fileno())
        # Checked again after the upload: the claim may have been lost while it streamed.
        _claimed(request, task_id, x_neuronova_claim)
        tmp.replace(result_dir / name)
    finally:
        tmp.unlink(missing_ok=True)
    return {"task_id": task_id, "file": name, "size": size}
