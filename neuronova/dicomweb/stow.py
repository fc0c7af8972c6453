"""STOW-RS (PS3.18 10.5): ``POST /dicomweb/studies[/{study}]`` with multipart/related; type="application/dicom".

The body is streamed (``neuronova.multipart``, the reader every upload shares): each part goes straight into a
temporary file of the store as it arrives, and is committed (checked, fsync'd, renamed, indexed) at its closing
boundary. Memory holds one network chunk, never a part or the request. The response is sent only after every
stored part is durable.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from neuronova.dicomweb.deps import get_store
from neuronova.errors import InvalidRequest, NeuroNovaError
from neuronova.metrics import INSTANCES_RECEIVED, INSTANCES_REFUSED, INSTANCES_WARNED
from neuronova.multipart import Limits, PartHeaders, read_multipart
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
    """What the request's parts add up to (the sinks run in a worker thread, one part at a time)."""

    store: InstanceStore
    expected_study: str | None
    on_stored: Callable[[StoreResult], None] | None
    base_url: str
    stored: list[dict[str, Any]] = field(default_factory=list)
    failed: list[dict[str, Any]] = field(default_factory=list)
    warned: int = 0
    studies: set[str] = field(default_factory=set)

    def begin(self, part: PartHeaders) -> _StowPart:
        """A part's sink: a store temp file, or the reason the part is refused (reported at its end)."""
        media = part.media_type if part.media_type is not None else "application/dicom"
        if media != "application/dicom":
            error = NeuroNovaError(f"part media type {media} is not application/dicom", reason="media_type")
            error.dicom_status = SOP_CLASS_NOT_SUPPORTED
            return _StowPart(self, None, error)
        try:
            return _StowPart(self, self.store.new_tmp(), None)
        except NeuroNovaError as exc:
            return _StowPart(self, None, exc)

    def commit(self, tmp: TmpInstance) -> None:
        try:
            result = self.store.commit(tmp, expected_study_uid=self.expected_study)
        except NeuroNovaError as exc:
            self.fail(exc)
            return
        except Exception as exc:  # never let one part take down the request
            log.exception("STOW-RS part failed unexpectedly")
            failure = NeuroNovaError(f"processing failure: {type(exc).__name__}", reason="processing")
            failure.dicom_status = PROCESSING_FAILURE
            self.fail(failure)
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

    def fail(self, exc: NeuroNovaError) -> None:
        log.info("STOW-RS part refused (0x%04X, %s): %s", exc.dicom_status, exc.reason, exc)
        INSTANCES_REFUSED.labels("stow", exc.reason).inc()
        item = _item(exc.sop_class_uid, exc.sop_instance_uid)
        item["00081197"] = {"vr": "US", "Value": [exc.dicom_status]}
        self.failed.append(item)


class _StowPart:
    """One part: streamed into its temp file, committed (or reported refused) at its closing boundary."""

    def __init__(self, state: _StowState, tmp: TmpInstance | None, error: NeuroNovaError | None) -> None:
        self.state, self.tmp, self.error = state, tmp, error

    def write(self, data: memoryview) -> None:
        if self.tmp is not None:
            try:
                self.tmp.write(data)
            except NeuroNovaError as exc:  # the disk refused: the temp file is gone, the part fails at its end
                self.tmp, self.error = None, exc

    def end(self) -> None:
        tmp, self.tmp = self.tmp, None
        if self.error is not None or tmp is None:
            self.state.fail(self.error or NeuroNovaError("empty part"))
            return
        self.state.commit(tmp)  # commit keeps nothing of a refused part

    def abort(self) -> None:
        tmp, self.tmp = self.tmp, None
        if tmp is not None:
            tmp.discard()


async def _stow(request: Request, store: InstanceStore, study: str | None) -> JSONResponse:
    if study is not None:
        validate_uid(study, name="StudyInstanceUID")
    limits = Limits(body=request.app.state.settings.max_request_bytes)
    base_url = str(request.base_url).rstrip("/") + "/dicomweb"
    # The study watcher learns when this request (a transfer) ends: its studies are then complete after a
    # short grace instead of a quiet period.
    watcher = getattr(request.app.state, "watcher", None)
    transfer = object()
    on_stored = stored_in_transfer(getattr(request.app.state, "on_stored", None), watcher, transfer)
    state = _StowState(store=store, expected_study=study, on_stored=on_stored, base_url=base_url)
    if watcher is not None:
        watcher.transfer_started(transfer)
    try:
        # The sinks write and fsync files: in a worker thread, off the event loop.
        await read_multipart(request, state.begin, media_type="multipart/related", part_type="application/dicom",
                             limits=limits, in_thread=True)
    finally:
        if watcher is not None:
            watcher.transfer_ended(transfer, state.studies)

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
