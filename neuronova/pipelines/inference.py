"""Inference on numpy inputs: a loaded Volume, a 2D image or a biomarker payload in, a plain result out.

These functions are the "predict" and "postprocess" steps of the pipelines; they do no I/O. The Grad-CAM
helpers hand the XAI step the torch module, the exact tensor the network sees and the layer to target, so
explanations are computed on the same input as the prediction.
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from pydicom.dataset import Dataset
from pydicom.pixels import apply_modality_lut
from scipy import ndimage
from torch import nn

from neuronova.errors import InvalidRequest, ModelInferenceError, NeuroNovaError
from neuronova.models.base import NetworkModel
from neuronova.models.biomarkers import BiomarkerInput, BiomarkerModel, parse_biomarkers
from neuronova.models.classification import ClassificationModel, ClassificationResult
from neuronova.models.segmentation import SegmentationModel
from neuronova.pipelines.volume import Volume

logger = logging.getLogger(__name__)

__all__ = [
    "BiomarkerResult", "ClassificationResult", "GradCamInputs", "SegmentationResult", "classify_ct_series",
    "classify_dicom_slice", "classify_image", "gradcam_inputs_for_ct_slice", "gradcam_inputs_for_image",
    "gradcam_inputs_for_volume", "predict_biomarkers", "read_image", "segment_volume",
]

WHOLE_TUMOUR = "whole tumour"


@dataclass
class SegmentationResult:
    labels: np.ndarray  # uint8 (z, y, x), same geometry as the source Volume
    volumes_ml: dict[str, float]  # per label name, plus "whole tumour"
    key_slice_indices: list[int]  # source slice indices, the largest tumour first
    label_names: dict[int, str] = field(default_factory=dict)
    inference_seconds: float = 0.0


@dataclass
class BiomarkerResult:
    #: output -> {"predicted": str, "confidence": float, "probabilities": {class: p}}
    predictions: dict[str, dict[str, Any]]
    features: np.ndarray  # (1, n_features), the estimators' input (for SHAP)
    feature_names: list[str]
    input: BiomarkerInput


@dataclass
class GradCamInputs:
    module: nn.Module  # eval mode, weights loaded
    input_tensor: torch.Tensor  # exactly what the network sees, on the module's device
    target_layer_name: str
    target_layers: list[nn.Module]
    #: the class to explain (the predicted one), where the caller did not choose
    target_class: int | None = None


@contextmanager
def _guard(what: str) -> Iterator[None]:
    """Turn backend failures into ModelInferenceError; the node's own errors and bad inputs pass through."""
    try:
        yield
    except (NeuroNovaError, ValueError):
        raise
    except Exception as exc:  # ONNX Runtime and torch raise many types; all mean "the model failed"
        raise ModelInferenceError(f"{what} failed: {type(exc).__name__}: {exc}") from exc


def _key_slices(labels: np.ndarray, limit: int = 3) -> list[int]:
    """For each of the largest tumour components, the slice where it is widest."""
    whole = labels > 0
    if not whole.any():
        return []
    components, count = ndimage.label(whole)
    sizes = np.bincount(components.ravel())[1:]
    keys: list[int] = []
    for index in np.argsort(sizes)[::-1][:limit]:
        area = (components == index + 1).sum(axis=(1, 2))
        z = int(np.argmax(area))
        if z not in keys:
            keys.append(z)
    return keys


def segment_volume(volume: Volume, model: SegmentationModel, *, backend: str = "onnx") -> SegmentationResult:
    """Tumour labels in the source geometry, mL per label and the key slices."""
    if volume.modality not in ("MR", ""):
        raise InvalidRequest(f"MRI segmentation needs an MR series, got modality {volume.modality}")
    start = time.perf_counter()
    with _guard("MRI segmentation"):
        labels = model.predict(volume.array, backend=backend)
    counts = np.bincount(labels.ravel(), minlength=max(model.label_names, default=0) + 1)
    volumes = {name: round(float(counts[k]) * volume.voxel_volume_ml, 3) for k, name in model.label_names.items()}
    volumes[WHOLE_TUMOUR] = round(float(counts[1:].sum()) * volume.voxel_volume_ml, 3)
    return SegmentationResult(labels=labels, volumes_ml=volumes, key_slice_indices=_key_slices(labels),
                              label_names=dict(model.label_names), inference_seconds=time.perf_counter() - start)


def classify_ct_series(volume: Volume, model: ClassificationModel, *, backend: str = "onnx") -> ClassificationResult:
    """Classify a CT series: every slice with enough brain, aggregated (see ``aggregate_slices``);
    ``driving_slice_index`` indexes ``volume.datasets``."""
    if volume.modality not in ("CT", ""):
        raise InvalidRequest(f"CT classification needs a CT series in HU, got modality {volume.modality}")
    with _guard("CT classification"):
        return model.classify_volume(volume.array, pixel_area_mm2=volume.spacing[1] * volume.spacing[2],
                                     backend=backend)


def classify_image(image: np.ndarray, model: ClassificationModel, *, windowed: bool = True,
                   backend: str = "onnx") -> ClassificationResult:
    """Classify one 2D image: already brain-windowed grayscale (PNG/JPEG) or, with ``windowed=False``, HU."""
    with _guard("CT classification"):
        return model.classify_image(image, windowed=windowed, backend=backend)


def _slice_hu(ds: Dataset) -> np.ndarray:
    try:
        pixels = ds.pixel_array
    except Exception as exc:  # decoders raise many types
        raise InvalidRequest(f"cannot decode the DICOM pixels: {exc}", code="INVALID_IMAGE_FORMAT") from exc
    if pixels.ndim != 2:
        raise InvalidRequest(f"a single-frame grayscale slice is needed, got pixel shape {pixels.shape}",
                             code="INVALID_IMAGE_FORMAT")
    return np.asarray(apply_modality_lut(pixels, ds), np.float32)


def classify_dicom_slice(ds: Dataset, model: ClassificationModel, *, backend: str = "onnx") -> ClassificationResult:
    """Classify one CT DICOM slice (modality LUT applied, then the brain window)."""
    return classify_image(_slice_hu(ds), model, windowed=False, backend=backend)


def read_image(data: bytes) -> np.ndarray:
    """Decode a PNG/JPEG upload to a 2D grayscale array (uint8 or uint16)."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.mode in ("I;16", "I;16B", "I;16L"):
                return np.asarray(image, dtype=np.uint16)
            return np.asarray(image.convert("L"))
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise InvalidRequest(f"not a readable PNG/JPEG image: {exc}", code="INVALID_IMAGE_FORMAT") from exc


def predict_biomarkers(payload: Any, model: BiomarkerModel) -> BiomarkerResult:
    """Validate a ``biomarkers`` object (InvalidRequest names the field) and predict the three outputs."""
    parsed = payload if isinstance(payload, BiomarkerInput) else parse_biomarkers(payload)
    features = parsed.features()
    with _guard("biomarker prediction"):
        probabilities = model.predict_proba(features)
    predictions = {}
    for name, p in probabilities.items():
        classes = model.classes[name]
        best = int(np.argmax(p[0]))
        predictions[name] = {"predicted": classes[best], "confidence": float(p[0, best]),
                             "probabilities": {c: float(v) for c, v in zip(classes, p[0], strict=True)}}
    return BiomarkerResult(predictions=predictions, features=features, feature_names=list(model.feature_names),
                           input=parsed)


def _inputs(model: NetworkModel, batch: np.ndarray, target_class: int | None) -> GradCamInputs:
    return GradCamInputs(module=model.torch_module(), input_tensor=model.as_tensor(batch),
                         target_layer_name=model.gradcam_target_layer, target_layers=model.target_layers(),
                         target_class=target_class)


def gradcam_inputs_for_volume(volume: Volume, model: SegmentationModel, *, target_label: int = 1) -> GradCamInputs:
    """The UNet, its input on the model grid (1, 1, *grid) and the bottleneck layer; ``target_label`` is the
    tumour label to explain. The prediction runs this same tensor through overlapping windows; the network is
    fully convolutional, so Grad-CAM may take the whole grid at once (its instance normalisation then sees
    whole-grid statistics: fine for a heat map, not for the labels). Map a grid-sized map back with
    ``neuronova.models.segmentation.labels_to_source`` (nearest) or any resampling to ``volume.shape``."""
    return _inputs(model, model.preprocess(volume.array), target_label)


def gradcam_inputs_for_ct_slice(volume: Volume, slice_index: int, model: ClassificationModel,
                                *, target_class: int | None = None) -> GradCamInputs:
    """The classifier and the input of one slice of a CT volume (e.g. the driving slice)."""
    batch = model.preprocess_slices(volume.array[slice_index])
    if target_class is None:
        target_class = int(np.argmax(model.run(batch)[0]))
    return _inputs(model, batch, target_class)


def gradcam_inputs_for_image(image: np.ndarray, model: ClassificationModel, *, windowed: bool = True,
                             target_class: int | None = None) -> GradCamInputs:
    """The classifier and the input of one 2D image (as ``classify_image`` sees it)."""
    batch = model.preprocess_image(image) if windowed else model.preprocess_slices(image)
    if target_class is None:
        target_class = int(np.argmax(model.run(batch)[0]))
    return _inputs(model, batch, target_class)
