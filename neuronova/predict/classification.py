"""CT classification for the predict API: decode one upload, batched forward, Grad-CAM, response parts.

The prediction always comes from the ONNX session (batched across concurrent requests), whether or not an
explanation was asked for, so ``xai=true`` never changes the answer. Grad-CAM runs on the torch module
with the same weights, for the class the ONNX forward predicted, in the same batch worker: a batch of
explained requests costs one extra forward and one backward (explain_classification_batch).

The heatmap is mapped back from the network's square input to the uploaded image's own pixel grid (the
padding that made it square is cut off), so the regions are in the image's pixel coordinates and, for a
DICOM slice, in patient coordinates through its Image Position/Orientation and Pixel Spacing.
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pydicom
from PIL import Image, UnidentifiedImageError
from pydicom.pixels import apply_modality_lut

from neuronova.errors import (
    InvalidDicom,
    InvalidRequest,
    ModelInferenceError,
    NeuroNovaError,
    PayloadTooLarge,
    XAIGenerationError,
)
from neuronova.models.classification import INDETERMINATE, ClassificationModel, window
from neuronova.pipelines.inference import read_image
from neuronova.predict.batching import MicroBatcher
from neuronova.predict.render import heatmap_png
from neuronova.xai import (
    as_data_url,
    explain_classification_batch,
    important_regions,
    overlay_png,
    resize_heatmap,
    to_patient_coordinates,
)

log = logging.getLogger(__name__)

#: Largest image accepted, in pixels (a 4096 x 4096 slice); larger decoded images would cost memory out of
#: proportion to their upload size (a PNG compresses a flat image a thousandfold).
MAX_PIXELS = 4096 * 4096
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"


@dataclass
class CTImage:
    """One decoded upload: the network input and what the explanation needs to draw and place itself."""

    kind: str  #: "dicom", "png" or "jpeg"
    network_input: np.ndarray  #: (1, size, size) float32, one batch item
    display: np.ndarray  #: (rows, columns) uint8, the image as the model saw it (windowed)
    #: Image Position/Orientation (Patient) and Pixel Spacing of a DICOM slice that has them
    geometry: dict[str, list[float]] | None = None


def decode_ct_upload(data: bytes, model: ClassificationModel) -> CTImage:
    """DICOM (a CT slice), PNG or JPEG (already brain-windowed grayscale) -> CTImage.

    Raises InvalidDicom (400 INVALID_IMAGE_FORMAT) for anything else or an undecodable image, InvalidRequest
    for a DICOM image that is not a single-frame CT slice, PayloadTooLarge for more than MAX_PIXELS pixels.
    """
    if not data:
        raise InvalidRequest("the image is empty")
    if data.startswith(PNG_MAGIC) or data.startswith(JPEG_MAGIC):
        return _decode_picture(data, model, "png" if data.startswith(PNG_MAGIC) else "jpeg")
    return _decode_dicom(data, model)


def _decode_picture(data: bytes, model: ClassificationModel, kind: str) -> CTImage:
    try:
        with Image.open(io.BytesIO(data)) as probe:  # reads the header only
            width, height = probe.size
    except (UnidentifiedImageError, OSError) as exc:
        raise InvalidDicom(f"not a readable {kind.upper()} image: {exc}") from None
    if width * height > MAX_PIXELS:
        raise PayloadTooLarge(f"the image has {width}x{height} pixels; at most {MAX_PIXELS} pixels are accepted")
    image = read_image(data)  # InvalidRequest(code INVALID_IMAGE_FORMAT) when it does not decode
    display = image if image.dtype == np.uint8 else (image.astype(np.float32) / 257.0).round().astype(np.uint8)
    try:
        network_input = model.preprocess_image(image)[0]
    except ValueError as exc:
        raise InvalidDicom(f"unsupported image: {exc}") from None
    return CTImage(kind=kind, network_input=network_input, display=display)


def _decode_dicom(data: bytes, model: ClassificationModel) -> CTImage:
    try:
        ds = pydicom.dcmread(io.BytesIO(data))
    except Exception as exc:  # InvalidDicomError, or whatever a truncated or garbled file makes pydicom raise
        raise InvalidDicom(f"the image is neither DICOM, PNG nor JPEG ({type(exc).__name__})") from None
    modality = str(ds.get("Modality", ""))
    if modality and modality != "CT":
        raise InvalidRequest(f"CT classification needs a CT image, got a DICOM image of modality {modality}")
    if "PixelData" not in ds:
        raise InvalidDicom("the DICOM instance has no pixel data")
    rows, columns = int(ds.get("Rows", 0)), int(ds.get("Columns", 0))
    if rows * columns > MAX_PIXELS:
        raise PayloadTooLarge(f"the image has {rows}x{columns} pixels; at most {MAX_PIXELS} pixels are accepted")
    if int(ds.get("NumberOfFrames", 1) or 1) > 1 or int(ds.get("SamplesPerPixel", 1)) != 1:
        raise InvalidDicom("a single-frame grayscale CT slice is needed")
    try:
        hu = np.asarray(apply_modality_lut(ds.pixel_array, ds), np.float32)
    except Exception as exc:  # pixel decoders raise many types; all mean "cannot decode"
        raise InvalidDicom(f"cannot decode the DICOM pixels: {type(exc).__name__}: {exc}") from None
    if hu.ndim != 2:
        raise InvalidDicom(f"a single-frame grayscale CT slice is needed, got pixel shape {hu.shape}")
    display = np.rint(window(hu, *model.window_spec) * 255.0).astype(np.uint8)
    geometry = None
    if all(k in ds for k in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing")):
        geometry = {"image_position": [float(v) for v in ds.ImagePositionPatient],
                    "image_orientation": [float(v) for v in ds.ImageOrientationPatient],
                    "pixel_spacing": [float(v) for v in ds.PixelSpacing]}
    return CTImage(kind="dicom", network_input=model.preprocess_slices(hu)[0], display=display, geometry=geometry)


# ---- the batch worker ----------------------------------------------------------------------------------


@dataclass
class Work:
    network_input: np.ndarray
    explain: bool
    xai_deadline: float  #: time.monotonic() by which the explanation must be done


@dataclass
class Outcome:
    probabilities: np.ndarray  #: (K,)
    forward_ms: float  #: the batch's forward pass
    batch_size: int
    heatmap: np.ndarray | None = None  #: (size, size) in [0, 1]
    layer: str = ""
    xai_ms: float = 0.0
    xai_error: XAIGenerationError | None = None


def forward_batch(model: ClassificationModel, items: Sequence[Work]) -> list[Outcome]:
    """Probabilities for every item (one ONNX run), Grad-CAM for those that asked (one torch pass)."""
    batch = np.stack([w.network_input for w in items])
    started = time.perf_counter()
    try:
        probabilities = model.predict_proba(batch)
    except NeuroNovaError:
        raise
    except Exception as exc:  # ONNX Runtime raises many types; all mean "the model failed on this input"
        raise ModelInferenceError(f"CT classification failed: {type(exc).__name__}: {exc}") from exc
    forward_ms = (time.perf_counter() - started) * 1000
    outcomes = [Outcome(probabilities=p, forward_ms=forward_ms, batch_size=len(items)) for p in probabilities]
    wanted = [i for i, w in enumerate(items) if w.explain]
    if wanted:
        _explain(model, items, outcomes, wanted)
    return outcomes


def _explain(model: ClassificationModel, items: Sequence[Work], outcomes: list[Outcome], wanted: list[int]) -> None:
    started = time.perf_counter()
    budget = min(items[i].xai_deadline for i in wanted) - time.monotonic()
    try:
        if budget <= 0:
            raise XAIGenerationError("the explanation's time budget ran out before it could start")
        tensor = model.as_tensor(np.stack([items[i].network_input for i in wanted]))
        targets = [int(np.argmax(outcomes[i].probabilities)) for i in wanted]
        explanations = explain_classification_batch(model.torch_module(), model.target_layers()[0], tensor,
                                                    target_classes=targets, time_budget_s=budget)
    except XAIGenerationError as exc:
        for i in wanted:
            outcomes[i].xai_error = exc
        return
    except Exception as exc:  # a malformed input for the explainer: the prediction still stands
        log.warning("Grad-CAM failed: %s", type(exc).__name__)
        error = XAIGenerationError(f"Grad-CAM failed: {type(exc).__name__}: {exc}")
        for i in wanted:
            outcomes[i].xai_error = error
        return
    xai_ms = (time.perf_counter() - started) * 1000
    for i, explanation in zip(wanted, explanations, strict=True):
        outcomes[i].heatmap = explanation.heatmap
        outcomes[i].layer = explanation.layer
        outcomes[i].xai_ms = xai_ms


def make_batcher(model: ClassificationModel, *, max_batch_size: int, wait_ms: float) -> MicroBatcher[Work, Outcome]:
    size = min(max_batch_size, model.max_batch)
    return MicroBatcher(lambda items: forward_batch(model, items), max_batch_size=size, wait_ms=wait_ms,
                        name=model.id)


# ---- response parts ------------------------------------------------------------------------------------


def result_part(model: ClassificationModel, probabilities: np.ndarray) -> dict[str, Any]:
    best = int(np.argmax(probabilities))
    outcome = model.outcome(probabilities)
    # predicted_class stays the most probable class (the guide's contract); below the model's calibrated
    # threshold the outcome is "Indeterminate", and a client should show that rather than the class.
    return {"predicted_class": model.classes[best], "confidence": float(probabilities[best]),
            "probabilities": {c: float(p) for c, p in zip(model.classes, probabilities, strict=True)},
            "outcome": outcome, "indeterminate": outcome == INDETERMINATE,
            "indeterminate_below": float(model.indeterminate_below)}


def heatmap_to_image(heatmap: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Undo the model's pad-to-square and resize: the heatmap on the image's own (rows, columns) grid,
    rescaled so that its peak inside the image is 1 (all zero stays all zero)."""
    rows, columns = shape
    side = max(rows, columns)
    square = resize_heatmap(heatmap, (side, side))
    top, left = (side - rows) // 2, (side - columns) // 2
    heat = np.ascontiguousarray(square[top:top + rows, left:left + columns])
    peak = float(heat.max())
    return (heat / peak).astype(np.float32) if peak > 0 else heat


def grad_cam_part(image: CTImage, outcome: Outcome, model: ClassificationModel) -> dict[str, Any]:
    """The ``xai.grad_cam`` object: heatmap and overlay as PNG data URLs, the important regions."""
    assert outcome.heatmap is not None
    started = time.perf_counter()
    heat = heatmap_to_image(outcome.heatmap, image.display.shape)  # type: ignore[arg-type]
    regions = []
    for region in important_regions(heat):
        item: dict[str, Any] = region.to_dict()
        if image.geometry is not None:
            patient = to_patient_coordinates(region, **image.geometry)
            item["patient_coordinates"] = {
                "frame": "LPS", "unit": "mm",
                "centre": [round(float(v), 3) for v in patient.centre],
                "corners": [[round(float(v), 3) for v in corner] for corner in patient.corners],
                "width_mm": round(patient.width_mm, 3), "height_mm": round(patient.height_mm, 3)}
        regions.append(item)
    part = {
        "method": "Grad-CAM",
        "target_class": model.classes[int(np.argmax(outcome.probabilities))],
        "layer": outcome.layer,
        "heatmap_base64": as_data_url(heatmap_png(heat)),
        "overlay_base64": as_data_url(overlay_png(image.display, heat)),
        "important_regions": regions,
        "image_size": {"rows": int(heat.shape[0]), "columns": int(heat.shape[1])},
    }
    part["time_ms"] = round(outcome.xai_ms + (time.perf_counter() - started) * 1000, 1)
    return part
