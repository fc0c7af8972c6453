"""STOW-RS (PS3.18 10.5): ``POST /dicomweb/studies[/{study}]`` with multipart/related; type="application/dicom".

The body is streamed: each part goes straight into a temporary file of the store as it arrives, and is
committed (checked, fsync'd, renamed, indexed) at its closing boundary. Memory holds one network chunk, never
a part or the request. The response is sent only after every stored part is durable.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.concurrency import run_in_threadpool

from neuronova.errors import (
    InvalidRequest,
    NeuroNovaError,
    PayloadTooLarge,
    UnsupportedMediaType,
)
from neuronova.dicomweb.deps import get_store
from neuronova.metrics import INSTANCES_RECEIVED, INSTANCES_REFUSED, INSTANCES_WARNED
from neuronova.store import InstanceStore, StoreResult, TmpInstance, validate_uid
from neuronova.store.watcher import stored_in_transfer

log = logging.getLogger(__name__)

router = APIRouter(prefix="/dicomweb", tags=["DICOMweb"])

DICOM_JSON = "application/dicom+json"
#: PS3.18 failure reasons used here.
PROCESSING_FAILURE = 0x0110
SOP_CLASS_NOT_SUPPORTED = 0x0122
#: Warning reason of an instance stored as sent although some of its text breaks its VR.
TEXT_WARNING = 0xB007


def _item(sop_class: str | None, sop_instance: str | None) -> dict[str, Any]:
    return {
        "00081150": {"vr": "UI", **({"Value": [sop_class]} if sop_class else {})},
        "00081155": {"vr": "UI", **({"Value": [sop_instance]} if sop_instance else {})},
    }


@dataclass
class _StowState:
    """What the multipart callbacks accumulate (they run in a worker thread, one request at a time)."""

    store: InstanceStore
    expected_study: str | None
    on_stored: Callable[[StoreResult], None] | None
    base_url: str
    header_field: bytes = b""
    headers: dict[bytes, bytes] = field(default_factory=dict)
    tmp: TmpInstance | None = None
    part_error: NeuroNovaError | None = None
    stored: list[dict[str, Any]] = field(default_factory=list)
    failed: list[dict[str, Any]] = field(default_factory=list)
    warned: int = 0
    studies: set[str] = field(default_factory=set)
    ended: bool = False

    def on_part_begin(self) -> None:
        self.headers, self.tmp, self.part_error = {}, None, None

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self.header_field += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        key = self.header_field.lower()
        self.headers[key] = self.headers.get(key, b"") + data[start:end]

    def on_header_end(self) -> None:
        self.header_field = b""

    def on_headers_finished(self) -> None:
        ctype, _ = parse_options_header(self.headers.get(b"content-type", b"application/dicom"))
        if ctype != b"application/dicom":
            media = ctype.decode(errors="replace")
            self.part_error = NeuroNovaError(f"part media type {media} is not application/dicom", reason="media_type")
            self.part_error.dicom_status = SOP_CLASS_NOT_SUPPORTED
            return
        try:
            self.tmp = self.store.new_tmp()
        except NeuroNovaError as exc:
            self.part_error = exc

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self.tmp is not None:
            try:
                self.tmp.write(memoryview(data)[start:end])
            except NeuroNovaError as exc:
                self.tmp, self.part_error = None, exc

    def on_part_end(self) -> None:
        if self.part_error is not None or self.tmp is None:
            self._fail(self.part_error or NeuroNovaError("empty part"))
            return
        tmp, self.tmp = self.tmp, None
        try:
            result = self.store.commit(tmp, expected_study_uid=self.expected_study)
        except NeuroNovaError as exc:
            self._fail(exc)
            return
        except Exception as exc:  # never let one part take down the request
            log.exception("STOW-RS part failed unexpectedly")
            failure = NeuroNovaError(f"processing failure: {type(exc).__name__}", reason="processing")
            failure.dicom_status = PROCESSING_FAILURE
            self._fail(failure)
            return
        inst = result.instance
        self.studies.add(inst.study_uid)
        item = _item(inst.sop_class_uid, inst.sop_instance_uid)
        item["00081190"] = {"vr": "UR", "Value": [
            f"{self.base_url}/studies/{inst.study_uid}/series/{inst.series_uid}/instances/{inst.sop_instance_uid}"]}
        INSTANCES_RECEIVED.labels("stow").inc()
        if result.warnings:
            # Stored as sent; the sender is told (PS3.18: Warning Reason, and the request answers 202).
            item["00081196"] = {"vr": "US", "Value": [TEXT_WARNING]}
            self.warned += 1
            INSTANCES_WARNED.labels("stow", "text_vr").inc()
            log.warning("STOW-RS instance stored with a warning: %d text elements break their VR (first: %s)",
                        len(result.warnings), result.warnings[0])
        self.stored.append(item)
        if self.on_stored is not None:
            self.on_stored(result)

    def _fail(self, exc: NeuroNovaError) -> None:
        log.info("STOW-RS part refused (0x%04X, %s): %s", exc.dicom_status, exc.reason, exc)
        INSTANCES_REFUSED.labels("stow", exc.reason).inc()
        item = _item(exc.sop_class_uid, exc.sop_instance_uid)
        item["00081197"] = {"vr": "US", "Value": [exc.dicom_status]}
        self.failed.append(item)

    def on_end(self) -> None:
        self.ended = True

    def discard(self) -> None:
        if self.tmp is not None:
            self.tmp.discard()
            self.tmp = None


def _boundary(request: Request) -> bytes:
    ctype, params = parse_options_header(request.headers.get("content-type", ""))
    if ctype != b"multipart/related":
        raise UnsupportedMediaType(
            f"STOW-RS takes multipart/related; type=\"application/dicom\", got {ctype.decode(errors='replace') or 'none'}")
    part_type = params.get(b"type", b"application/dicom").strip(b'"')
    if part_type != b"application/dicom":
        raise UnsupportedMediaType(f"only type=\"application/dicom\" parts are accepted, got {part_type.decode(errors='replace')}")
    boundary = params.get(b"boundary")
    if not boundary:
        raise InvalidRequest("multipart/related without a boundary parameter")
    return boundary.strip(b'"')


async def _stow(request: Request, store: InstanceStore, study: str | None) -> JSONResponse:
    if study is not None:
        validate_uid(study, name="StudyInstanceUID")
    limit: int = request.app.state.settings.max_request_bytes
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"the request declares {declared} bytes; the limit is {limit}")
    boundary = _boundary(request)
    base_url = str(request.base_url).rstrip("/") + "/dicomweb"
    # The study watcher learns when this request (a transfer) ends: its studies are then complete after a
    # short grace instead of a quiet period.
    watcher = getattr(request.app.state, "watcher", None)
    transfer = object()
    on_stored = stored_in_transfer(getattr(request.app.state, "on_stored", None), watcher, transfer)
    state = _StowState(store=store, expected_study=study, on_stored=on_stored, base_url=base_url)
    if watcher is not None:
        watcher.transfer_started(transfer)
    parser = MultipartParser(boundary, {
        "on_part_begin": state.on_part_begin, "on_part_data": state.on_part_data, "on_part_end": state.on_part_end,
        "on_header_field": state.on_header_field, "on_header_value": state.on_header_value,
        "on_header_end": state.on_header_end, "on_headers_finished": state.on_headers_finished,
        "on_end": state.on_end,
    })
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > limit:
                raise PayloadTooLarge(f"the request exceeds the limit of {limit} bytes")
            if chunk:
                # The callbacks write and fsync files: keep them off the event loop.
                await run_in_threadpool(parser.write, chunk)
    except NeuroNovaError:
        raise
    except Exception as exc:  # python-multipart's parse errors
        raise InvalidRequest(f"malformed multipart body: {exc}") from exc
    finally:
        state.discard()
        if watcher is not None:
            watcher.transfer_ended(transfer, state.studies)
    if not state.ended:
        raise InvalidRequest("malformed multipart body: it ends before the closing boundary")

    body: dict[str, Any] = {}
    if len(state.studies) == 1 or study is not None:
        body["00081190"] = {"vr": "UR", "Value": [f"{base_url}/studies/{study or next(iter(state.studies))}"]}
    if state.stored:
        body["00081199"] = {"vr": "SQ", "Value": state.stored}
    if state.failed:
        body["00081198"] = {"vr": "SQ", "Value": state.failed}
    if not state.stored and not state.failed:
        raise InvalidRequest("the multipart body holds no part")
    # PS3.18 10.5.3: 200 all stored, 202 some failed or stored with warnings, 409 none stored.
    status = 200 if not state.failed and not state.warned else (202 if state.stored else 409)
    return JSONResponse(body, status_code=status, media_type=DICOM_JSON)


@router.post("/studies", summary="STOW-RS: store instances")
async def stow_studies(request: Request, store: InstanceStore = Depends(get_store)) -> JSONResponse:
    return await _stow(request, store, None)


@router.post("/studies/{study}", summary="STOW-RS: store instances of one study")
async def stow_study(study: str, request: Request, store: InstanceStore = Depends(get_store)) -> JSONResponse:
    return await _stow(request, store, study)
