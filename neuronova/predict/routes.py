"""The predict API (the backend guide's section 2.4): thin routes over the services of this package.

- ``POST /predict/ct_classification`` (multipart: image = DICOM CT slice, PNG or JPEG; patient_id, request_id,
  xai, xai_methods, xai_required, metadata): synchronous, batched with concurrent requests (batching.py).
- ``POST /predict/mri_segmentation`` (multipart: image = DICOM files, one zip of them, or one NIfTI;
  patient_id, request_id, sequence_type, xai): asynchronous, answers 202 with a task id.
- ``GET /predict/task_status/{task_id}``, ``GET /predict/task_result/{task_id}/{file}``: the task and its files.
- ``POST /predict/biomarker_prediction`` (JSON): synchronous, with SHAP.

Every route takes the bearer token and is rate limited per subject (``require_token_rate_limited``).
Failures answer ``{"success": false, "error": {"code", "message"}}`` (neuronova/api/errors.py).

Explanations: a failed explanation (error, or its time budget ``xai_time_budget_seconds`` ran out) leaves
the prediction standing: 200 with ``"xai": {"error": {"code": "XAI_GENERATION_ERROR", ...}}``. With
``xai_required=true`` the client says the explanation is the point of the request, and then the whole
request fails with 500 XAI_GENERATION_ERROR. An unknown task id answers 404 NOT_FOUND (a task of another
subject too); a malformed one 400 INVALID_REQUEST.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
import shutil
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import FileResponse
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from neuronova.api.auth import TokenClaims
from neuronova.api.ratelimit import require_token_rate_limited
from neuronova.errors import InvalidRequest, NotFound, PayloadTooLarge, XAIGenerationError
from neuronova.models.biomarkers import BiomarkerModel
from neuronova.models.classification import ClassificationModel
from neuronova.models.segmentation import SegmentationModel
from neuronova.predict import biomarkers, classification, segmentation
from neuronova.predict.forms import FormData, read_form
from neuronova.predict.health import health_provider
from neuronova.predict.schemas import (
    ERROR_RESPONSES,
    BiomarkerRequest,
    BiomarkerResponse,
    CTClassificationResponse,
    TaskCreated,
    TaskStatus,
    check_methods,
    check_patient_id,
    inline_schema,
    request_id_or_new,
)
from neuronova.predict.service import SEGMENTATION, PredictService, get_service, service_for
from neuronova.predict.tasks import COMPLETED, FAILED, RESULT_DIR, TaskRecord

log = logging.getLogger(__name__)

CT_MODEL, BIOMARKER_MODEL = "ct_classification", "biomarker_prediction"
MAX_JSON_BYTES = 1024 * 1024
_TRUE, _FALSE = {"true", "1", "yes", "on"}, {"false", "0", "no", "off", ""}


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    providers = getattr(app.state, "health_providers", None)
    provider = health_provider(app)
    if providers is not None:
        providers.append(provider)
    settings = getattr(app.state, "settings", None)
    # A node that ran predict tasks before: tidy their directory now (the jobs themselves are the job
    # system's: interrupted ones run again). Otherwise the service is made on the first predict request.
    if settings is not None and (settings.data_dir / "predict").is_dir() and getattr(app.state, "jobs", None):
        service = await run_in_threadpool(service_for, app)
        await run_in_threadpool(lambda: service.tasks)
    try:
        yield
    finally:
        if providers is not None and provider in providers:
            providers.remove(provider)
        service = getattr(app.state, "predict", None)
        if service is not None:
            app.state.predict = None
            await run_in_threadpool(service.close)


router = APIRouter(tags=["predict"], lifespan=lifespan, responses=ERROR_RESPONSES)


# ---- form fields -----------------------------------------------------------------------------------------


def _flag(form: FormData, name: str) -> bool:
    value = form.get(name)
    if value is None:
        return False
    text = value.strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise InvalidRequest(f"{name}: expected true or false, got {value[:20]!r}")


def _methods(form: FormData) -> list[str] | None:
    """xai_methods as a JSON list (``["grad_cam"]``), comma-separated text, or repeated fields."""
    values = form.fields.get("xai_methods")
    if not values:
        return None
    methods: list[str] = []
    for value in values:
        text = value.strip()
        if text.startswith("["):
            try:
                parsed = json.loads(text)
            except json.JSONDecodeError:
                raise InvalidRequest("xai_methods: not a JSON list") from None
            if not isinstance(parsed, list) or not all(isinstance(m, str) for m in parsed):
                raise InvalidRequest("xai_methods: a list of method names is expected")
            methods += parsed
        else:
            methods += [m.strip() for m in text.split(",") if m.strip()]
    return methods


def _metadata(form: FormData) -> dict[str, Any] | None:
    value = form.get("metadata")
    if value is None or not value.strip():
        return None
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError:
        raise InvalidRequest("metadata: not valid JSON (a JSON object is expected)") from None
    if not isinstance(parsed, dict):
        raise InvalidRequest("metadata: a JSON object is expected")
    return parsed


def _one_file(form: FormData, names: tuple[str, ...]) -> bytes:
    files = form.files_named(names)
    if not files:
        raise InvalidRequest("no image: send it as the file part 'image'")
    if len(files) > 1:
        raise InvalidRequest(f"{len(files)} images; this route takes one")
    return files[0].read_bytes()


def _xai_error(exc: XAIGenerationError, required: bool) -> dict[str, Any]:
    if required:
        raise exc
    return {"error": {"code": exc.code, "message": exc.message}}


# ---- CT classification -----------------------------------------------------------------------------------


@router.post("/predict/ct_classification", response_model=CTClassificationResponse,
             summary="Classify a CT slice (DICOM, PNG or JPEG), optionally with Grad-CAM")
async def ct_classification(
    request: Request,
    _claims: TokenClaims = Depends(require_token_rate_limited),
    service: PredictService = Depends(get_service),
) -> CTClassificationResponse:
    arrived = time.monotonic()
    settings = service.settings
    model = service.registry.get(CT_MODEL, ClassificationModel)  # 503 before the upload is read
    batcher = service.ct_batcher(model)
    with batcher.slot() as slot:
        form = await read_form(request, max_file_bytes=settings.max_upload_bytes, file_fields=("image",))
        request_id = request_id_or_new(form.get("request_id"))
        check_patient_id(form.get("patient_id"))
        methods = _methods(form)
        check_methods(CT_MODEL, methods)
        explain = _flag(form, "xai") and (methods is None or "grad_cam" in methods)
        required = explain and _flag(form, "xai_required")
        _metadata(form)  # checked, not kept: it may hold identifiers
        data = _one_file(form, ("image",))
        started = time.perf_counter()
        image = await run_in_threadpool(classification.decode_ct_upload, data, model)
        decode_ms = (time.perf_counter() - started) * 1000
        work = classification.Work(network_input=image.network_input, explain=explain,
                                   xai_deadline=arrived + settings.xai_time_budget_seconds)
        if batcher.enabled:
            future = slot.submit(work)
        else:  # the forward runs in the submitting thread: not the event loop's
            future = await run_in_threadpool(slot.submit, work)
        outcome = await asyncio.wrap_future(future)
    xai: dict[str, Any] | None = None
    if explain:
        if outcome.xai_error is not None:
            xai = _xai_error(outcome.xai_error, required)
        else:
            try:
                xai = {"grad_cam": await run_in_threadpool(classification.grad_cam_part, image, outcome, model)}
            except Exception as exc:  # drawing the explanation failed: the prediction still stands
                log.warning("Grad-CAM pictures failed: %s", type(exc).__name__)
                xai = _xai_error(XAIGenerationError(f"Grad-CAM pictures failed: {type(exc).__name__}"), required)
    return CTClassificationResponse(
        request_id=request_id, model_id=model.id, model_version=model.version,
        inference_time_ms=round(decode_ms + outcome.forward_ms, 2), batch_size=outcome.batch_size,
        result=classification.result_part(model, outcome.probabilities),  # type: ignore[arg-type]
        xai=xai, not_for_clinical_use=bool(model.metadata.not_for_clinical_use))


# ---- MRI segmentation (asynchronous) ---------------------------------------------------------------------


@router.post("/predict/mri_segmentation", response_model=TaskCreated, status_code=202,
             summary="Segment an MR series (DICOM files, a zip, or NIfTI) in a background task")
async def mri_segmentation(
    request: Request,
    claims: TokenClaims = Depends(require_token_rate_limited),
    service: PredictService = Depends(get_service),
) -> TaskCreated:
    settings = service.settings
    service.registry.get(SEGMENTATION, SegmentationModel)  # 503 before the upload is read
    task_id, task_dir = await run_in_threadpool(service.tasks.new_task, SEGMENTATION)
    try:
        input_dir = task_dir / segmentation.INPUT_DIR
        input_dir.mkdir()
        form = await read_form(request, max_file_bytes=settings.max_upload_bytes, file_fields=("image", "images"),
                               spool_dir=input_dir)
        request_id = request_id_or_new(form.get("request_id"))
        check_patient_id(form.get("patient_id"))
        methods = _methods(form)
        check_methods(SEGMENTATION, methods)
        explain = _flag(form, "xai") and (methods is None or "grad_cam" in methods)
        sequence = form.get("sequence_type")
        if sequence is not None and len(sequence) > 32:
            raise InvalidRequest("sequence_type: at most 32 characters (T1, T1c, T2, FLAIR, ...)")
        description = await run_in_threadpool(segmentation.prepare_upload, form.files_named(("image", "images")),
                                              input_dir, max_upload_bytes=settings.max_upload_bytes)
        params = {"input": description, "xai": explain, "request_id": request_id, "sequence_type": sequence}
        await run_in_threadpool(service.tasks.submit, task_id=task_id, kind=SEGMENTATION, owner=claims.sub,
                                params=params)
    except BaseException:
        shutil.rmtree(task_dir, ignore_errors=True)
        raise
    estimate = await run_in_threadpool(service.tasks.estimate_seconds, SEGMENTATION)
    return TaskCreated(task_id=task_id, request_id=request_id, status="pending", estimated_time_seconds=estimate,
                       status_url=request.app.url_path_for("task_status", task_id=task_id))


def _iso(timestamp: float) -> str:
    return datetime.datetime.fromtimestamp(timestamp, datetime.UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


def _with_urls(request: Request, record: TaskRecord) -> dict[str, Any]:
    """The stored result with each file name turned into its download path."""
    result = json.loads(json.dumps(record.result))  # a copy

    def url(name: str) -> str:
        return request.app.url_path_for("task_result", task_id=record.task_id, name=name)

    result["mask_url"] = url(result["mask"]["file"])
    if "seg" in result:
        result["seg_url"] = url(result["seg"]["file"])
    for item in (result.get("xai") or {}).get("grad_cam", {}).get("key_slices", []):
        item["heatmap_url"] = url(item["heatmap"])
        item["overlay_url"] = url(item["overlay"])
    return result


@router.get("/predict/task_status/{task_id}", response_model=TaskStatus, name="task_status",
            summary="Progress and, when done, the result of a task")
def task_status(
    task_id: str,
    request: Request,
    claims: TokenClaims = Depends(require_token_rate_limited),
    service: PredictService = Depends(get_service),
) -> TaskStatus:
    record = service.tasks.get(task_id, owner=claims.sub)
    body: dict[str, Any] = {"task_id": record.task_id, "status": record.status, "progress": record.progress,
                            "created_at": _iso(record.created_at), "updated_at": _iso(record.updated_at),
                            "request_id": record.params.get("request_id")}
    if record.status == COMPLETED and record.result is not None:
        body["result"] = _with_urls(request, record)
    elif record.status == FAILED:
        body["error"] = {"code": record.error_code or "INTERNAL_SERVER_ERROR", "message": record.error_message or ""}
    return TaskStatus(**body)


@router.get("/predict/task_result/{task_id}/{name}", name="task_result", response_class=FileResponse,
            summary="A result file of a completed task (mask.nii.gz, seg.dcm, Grad-CAM PNGs)")
def task_result(
    task_id: str,
    name: str,
    claims: TokenClaims = Depends(require_token_rate_limited),
    service: PredictService = Depends(get_service),
) -> FileResponse:
    record = service.tasks.get(task_id, owner=claims.sub)
    if record.status != COMPLETED or record.result is None:
        raise NotFound(f"task {task_id} has no result yet (it is {record.status})")
    # Only names this package made and listed for the task; never a path from the client.
    if not segmentation.RESULT_NAME.fullmatch(name) or name not in record.result.get("files", []):
        raise NotFound(f"task {task_id} has no file {name[:64]!r}")
    path = service.tasks.task_dir(task_id) / RESULT_DIR / name
    if not path.is_file():
        raise NotFound(f"the file {name} of task {task_id} is gone")
    return FileResponse(path, media_type=segmentation.media_type(name), filename=name)


# ---- biomarkers ------------------------------------------------------------------------------------------


async def _json_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 at the chunk that crosses ``limit`` (FastAPI would read it whole first)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"the request declares {declared} bytes; the limit is {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"the request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _parse(model: type[BiomarkerRequest], raw: bytes) -> BiomarkerRequest:
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        # Field names and reasons, never the values (patient data).
        problems = [f"{'.'.join(str(p) for p in err['loc']) or 'body'}: {err['msg']}" for err in exc.errors()]
        raise InvalidRequest("invalid request: " + "; ".join(problems[:10])) from None


@router.post("/predict/biomarker_prediction", response_model=BiomarkerResponse,
             summary="Tumour type, metastasis site and degree from biomarkers, optionally with SHAP",
             openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
                 "schema": inline_schema(BiomarkerRequest)}}}})
async def biomarker_prediction(
    request: Request,
    _claims: TokenClaims = Depends(require_token_rate_limited),
    service: PredictService = Depends(get_service),
) -> BiomarkerResponse:
    body = _parse(BiomarkerRequest, await _json_body(request, MAX_JSON_BYTES))
    return await run_in_threadpool(_biomarkers, body, service)


def _biomarkers(body: BiomarkerRequest, service: PredictService) -> BiomarkerResponse:
    model = service.registry.get(BIOMARKER_MODEL, BiomarkerModel)
    check_methods(BIOMARKER_MODEL, body.xai_methods)
    explain = body.xai and (body.xai_methods is None or "shap" in body.xai_methods)
    started = time.perf_counter()
    result = biomarkers.predict(model, body.biomarkers)
    inference_ms = (time.perf_counter() - started) * 1000
    xai: dict[str, Any] | None = None
    if explain:
        try:
            xai = {"shap": biomarkers.shap_part(model, result, budget_s=service.settings.xai_time_budget_seconds)}
        except XAIGenerationError as exc:
            xai = _xai_error(exc, body.xai_required)
    return BiomarkerResponse(
        request_id=request_id_or_new(body.request_id), model_id=model.id, model_version=model.version,
        inference_time_ms=round(inference_ms, 2), result=biomarkers.result_part(result),  # type: ignore[arg-type]
        xai=xai, not_for_clinical_use=bool(model.metadata.not_for_clinical_use))
