"""CT brain-tumour classification: a small ResNet on brain-windowed axial slices.

Input: one slice in Hounsfield units, brain window (WC 40 / WW 80) mapped to [0, 1], padded to a square,
resized (antialiased bilinear) to 128 x 128 and standardised. An image that is already windowed (PNG/JPEG
grayscale, 0-255) enters at the [0, 1] step, so a slice and its exported PNG give the same input.

Output: calibrated probabilities. The network's logits are divided by a temperature fitted on a held-out
calibration split (temperature scaling, Guo et al. 2017: one parameter, so the predicted class never changes),
read from the model's ``calibration.json`` (a hashed model file: it changes what the model answers). A result
whose calibrated confidence is below the model's ``indeterminate_below`` is *indeterminate*: the most likely
class is still reported, but the outcome is "Indeterminate" rather than a finding.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from neuronova.models.base import NetworkModel
from neuronova.models.metadata import ModelMetadata

DEFAULT_SIZE = 128
BRAIN_WINDOW = (40.0, 80.0)  # centre, width (HU)
NORMALISE = (0.5, 0.25)  # mean, std of the windowed [0, 1] image
#: Slices with less brain-density tissue than this (mm^2) are skull vertex, skull base or neck.
MIN_BRAIN_AREA_MM2 = 1500.0
#: The outcome of a result whose calibrated confidence is below the model's threshold.
INDETERMINATE = "Indeterminate"
#: Model file with the temperature and the indeterminate threshold (listed, hashed, in metadata.json).
CALIBRATION_FILE = "calibration.json"


def window(hu: np.ndarray, centre: float = BRAIN_WINDOW[0], width: float = BRAIN_WINDOW[1]) -> np.ndarray:
    """HU -> [0, 1] through a linear window."""
    low = centre - width / 2
    return np.clip((np.asarray(hu, np.float32) - low) / width, 0.0, 1.0)


def _to_model(unit: np.ndarray, size: int, normalise: tuple[float, float]) -> np.ndarray:
    """[0, 1] images (n, y, x) -> (n, 1, size, size) standardised float32."""
    n, h, w = unit.shape
    side = max(h, w)
    if h != w:  # pad to a square so anatomy keeps its aspect
        padded = np.zeros((n, side, side), np.float32)
        padded[:, (side - h) // 2:(side - h) // 2 + h, (side - w) // 2:(side - w) // 2 + w] = unit
        unit = padded
    tensor = torch.from_numpy(np.ascontiguousarray(unit, dtype=np.float32))[:, None]
    if side != size:
        tensor = F.interpolate(tensor, size=(size, size), mode="bilinear", antialias=side > size, align_corners=False)
    return ((tensor.numpy() - normalise[0]) / normalise[1]).astype(np.float32)


def preprocess_ct_slices(hu: np.ndarray, *, size: int = DEFAULT_SIZE, window_spec: tuple[float, float] = BRAIN_WINDOW,
                         normalise: tuple[float, float] = NORMALISE) -> np.ndarray:
    """Slices in HU, (n, y, x) or (y, x) -> network input (n, 1, size, size)."""
    hu = np.asarray(hu)
    if hu.ndim == 2:
        hu = hu[None]
    if hu.ndim != 3:
        raise ValueError(f"CT slices must be (n, y, x) or (y, x), got shape {hu.shape}")
    return _to_model(window(hu, *window_spec), size, normalise)


def windowed_to_unit(image: np.ndarray) -> np.ndarray:
    """An already windowed grayscale image (uint8 0-255, uint16, or float in [0, 1]) -> float32 [0, 1]."""
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[-1] in (3, 4):  # RGB(A) export of a grayscale image
        image = image[..., :3].mean(-1) if image.dtype.kind == "f" else image[..., :3].mean(-1).astype(image.dtype)
    if image.ndim != 2:
        raise ValueError(f"a 2D grayscale image is needed, got shape {image.shape}")
    if image.dtype == np.uint8:
        return image.astype(np.float32) / 255.0
    if image.dtype == np.uint16:
        return image.astype(np.float32) / 65535.0
    if image.dtype.kind == "f":
        if image.size and (np.nanmin(image) < -1e-3 or np.nanmax(image) > 1 + 1e-3):
            raise ValueError("a float image must already be windowed to [0, 1]")
        return np.clip(np.nan_to_num(image.astype(np.float32)), 0.0, 1.0)
    raise ValueError(f"unsupported image dtype {image.dtype}")


def brain_slice_mask(hu: np.ndarray, pixel_area_mm2: float) -> np.ndarray:
    """Which slices of a (z, y, x) HU volume show enough brain to classify."""
    brainish = ((hu > 15) & (hu < 60)).sum(axis=(1, 2)) * pixel_area_mm2
    return brainish >= MIN_BRAIN_AREA_MM2


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of ``logits / temperature``."""
    scaled = np.asarray(logits, np.float64) / temperature
    scaled -= scaled.max(axis=-1, keepdims=True)
    exp = np.exp(scaled)
    return exp / exp.sum(axis=-1, keepdims=True)


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """Temperature scaling: the T > 0 minimising the cross-entropy of ``softmax(logits / T)`` on ``labels``.

    Fitted on a held-out calibration split, never on training data (where the network is overconfident).
    One parameter fitted by L-BFGS on log T (torch's optimiser; no library ships temperature scaling).
    """
    x = torch.as_tensor(np.asarray(logits, np.float64))
    y = torch.as_tensor(np.asarray(labels, np.int64))
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimiser = torch.optim.LBFGS([log_t], lr=0.5, max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimiser.zero_grad()
        loss = F.cross_entropy(x / log_t.exp(), y)
        loss.backward()
        return loss

    optimiser.step(closure)
    return float(log_t.detach().exp())


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray, *, bins: int = 15) -> float:
    """Top-label ECE: the count-weighted mean |accuracy - confidence| over equal-width confidence bins.

    The bins come from MONAI's ``calibration_binning`` (given the top-label confidence and its correctness as
    one binary channel); MONAI's own metric is per class, not the top-label ECE of Guo et al. 2017.
    """
    from monai.metrics import calibration_binning  # heavy import, needed only by training and tests

    probabilities = np.asarray(probabilities, np.float64)
    labels = np.asarray(labels)
    if probabilities.ndim != 2 or len(probabilities) != len(labels) or len(labels) == 0:
        raise ValueError(f"need (n >= 1, classes) probabilities and n labels, got {probabilities.shape}, {labels.shape}")
    confidence = torch.as_tensor(probabilities.max(axis=1))[None, None]
    correct = torch.as_tensor((probabilities.argmax(axis=1) == labels).astype(np.float64))[None, None]
    mean_p, mean_acc, counts = calibration_binning(confidence, correct, num_bins=bins)
    gaps = torch.nan_to_num((mean_p - mean_acc).abs()) * counts
    return float(gaps.sum() / counts.sum())


def choose_indeterminate_threshold(confidence: np.ndarray, correct: np.ndarray, *, target_accuracy: float = 0.95,
                                   floor: float = 0.5, step: float = 0.05) -> float:
    """The lowest threshold (``floor`` upwards in ``step``s) at which the results kept (confidence >= it) reach
    ``target_accuracy``; the highest tried when none does.

    ``floor`` 0.5: with calibrated probabilities, a top class below one half is more likely wrong than right,
    so no finding is claimed below it whatever the calibration data say.
    """
    confidence, correct = np.asarray(confidence, float), np.asarray(correct, bool)
    grid = np.round(np.arange(floor, 0.95 + 1e-9, step), 4)
    for threshold in grid:
        kept = confidence >= threshold
        if kept.any() and correct[kept].mean() >= target_accuracy:
            return float(threshold)
    return float(grid[-1])


def aggregate_slices(probabilities: np.ndarray, classes: list[str], *, no_tumour: str = "No Tumor") -> tuple[np.ndarray, int]:
    """Study-level probabilities from per-slice ones (n_slices, n_classes); returns them and the driving slice.

    Slices are in anatomical order. A slice's tumour evidence is 1 - P(no tumour); a real tumour spans
    adjacent slices, so each slice's evidence is taken as the geometric mean of its own and its stronger
    neighbour's, which silences a single spurious slice (with ~30 slices per series, a 1 % per-slice false
    positive rate would otherwise flag a quarter of normal series). A tumour is absent only if absent on
    every slice: the study's P(no tumour) is one minus the strongest supported evidence. The tumour type is the
    evidence-squared weighted mean of the slices' tumour-class probabilities, so the slices that show the tumour
    decide it and the normal slices do not dilute it. The driving slice has the strongest supported evidence.
    """
    if probabilities.ndim != 2 or len(probabilities) == 0:
        raise ValueError(f"need (n_slices >= 1, n_classes) probabilities, got shape {probabilities.shape}")
    k = classes.index(no_tumour)
    raw = 1.0 - probabilities[:, k]
    if len(raw) > 1:
        padded = np.pad(raw, 1)
        evidence = np.sqrt(raw * np.maximum(padded[:-2], padded[2:]))
    else:
        evidence = raw
    driving = int(np.argmax(evidence))
    weights = evidence**2 + 1e-12
    tumour_mix = (weights[:, None] * probabilities).sum(0) / weights.sum()
    tumour_mix[k] = 0.0
    tumour_mix /= max(float(tumour_mix.sum()), 1e-12)
    study = tumour_mix * float(evidence[driving])
    study[k] = 1.0 - float(evidence[driving])
    return study, driving


@dataclass
class ClassificationResult:
    predicted_class: str
    confidence: float
    probabilities: dict[str, float]
    #: index (in the volume's slice order) of the slice that drove the decision; 0 for a single image
    driving_slice_index: int = 0
    #: the slices that were classified (brain slices of a series)
    slice_indices: list[int] = field(default_factory=list)
    #: per classified slice, probabilities in class order
    slice_probabilities: np.ndarray | None = None
    #: the calibrated confidence is below the model's ``indeterminate_below``: no finding is claimed
    indeterminate: bool = False

    @property
    def outcome(self) -> str:
        """What the result claims: ``predicted_class``, or INDETERMINATE when the confidence is too low."""
        return INDETERMINATE if self.indeterminate else self.predicted_class


class ClassificationModel(NetworkModel):
    task = "classification"

    def __init__(self, path: Path, metadata: ModelMetadata, *, device: str = "auto") -> None:
        super().__init__(path, metadata, device=device)
        spec = metadata.input
        self.size = int(spec["size"][0])
        self.window_spec = (float(spec["window"]["center"]), float(spec["window"]["width"]))
        self.normalise = (float(spec["normalise"]["mean"]), float(spec["normalise"]["std"]))
        self.classes: list[str] = list(metadata.labels)
        self.item_shape = (1, self.size, self.size)
        self.max_batch = 32
        calibration = _read_calibration(path, metadata)
        #: logits are divided by it before the softmax (1: uncalibrated)
        self.temperature = float(calibration.get("temperature", 1.0))
        #: calibrated confidence below which a result is indeterminate (0: never)
        self.indeterminate_below = float(calibration.get("indeterminate_below", 0.0))
        if not self.temperature > 0 or not 0 <= self.indeterminate_below < 1:
            raise ValueError(f"{CALIBRATION_FILE}: temperature must be > 0 and indeterminate_below in [0, 1), "
                             f"found {self.temperature} and {self.indeterminate_below}")

    def preprocess_slices(self, hu: np.ndarray) -> np.ndarray:
        """Exact network input for CT slices in HU: (n, 1, size, size)."""
        return preprocess_ct_slices(hu, size=self.size, window_spec=self.window_spec, normalise=self.normalise)

    def preprocess_image(self, image: np.ndarray) -> np.ndarray:
        """Exact network input for an already windowed 2D image: (1, 1, size, size)."""
        return _to_model(windowed_to_unit(image)[None], self.size, self.normalise)

    def predict_proba(self, batch: np.ndarray, *, backend: str = "onnx") -> np.ndarray:
        """Class probabilities (n, n_classes) for a preprocessed batch, run in chunks of ``max_batch``."""
        outputs = [self.run(batch[i:i + self.max_batch], backend=backend) for i in range(0, len(batch), self.max_batch)]
        logits = np.concatenate(outputs) if outputs else np.zeros((0, len(self.classes)), np.float32)
        logits = logits / np.float32(self.temperature)
        logits = logits - logits.max(axis=1, keepdims=True)
        exp = np.exp(logits)
        return exp / exp.sum(axis=1, keepdims=True)

    def outcome(self, probabilities: np.ndarray) -> str:
        """The class a probability vector claims, or INDETERMINATE below ``indeterminate_below``."""
        best = int(np.argmax(probabilities))
        return INDETERMINATE if float(probabilities[best]) < self.indeterminate_below else self.classes[best]

    def _result(self, probabilities: np.ndarray, driving: int, slices: list[int], per_slice: np.ndarray) -> ClassificationResult:
        best = int(np.argmax(probabilities))
        return ClassificationResult(
            predicted_class=self.classes[best], confidence=float(probabilities[best]),
            probabilities={c: float(p) for c, p in zip(self.classes, probabilities, strict=True)},
            driving_slice_index=driving, slice_indices=slices, slice_probabilities=per_slice,
            indeterminate=self.outcome(probabilities) == INDETERMINATE)

    def classify_volume(self, hu: np.ndarray, *, pixel_area_mm2: float, backend: str = "onnx") -> ClassificationResult:
        """Classify a CT volume (z, y, x) in HU: every brain slice, aggregated by ``aggregate_slices``."""
        if hu.ndim != 3 or hu.shape[0] == 0:
            raise ValueError(f"a CT volume must be (z, y, x) with at least one slice, got shape {hu.shape}")
        slices = np.flatnonzero(brain_slice_mask(hu, pixel_area_mm2))
        if slices.size == 0:  # no slice looks like brain: classify them all rather than nothing
            slices = np.arange(hu.shape[0])
        # chunk by chunk: a 200-slice 512x512 series windowed at once would cost another 200 MB
        per_slice = np.concatenate([
            self.predict_proba(self.preprocess_slices(hu[slices[i:i + self.max_batch]]), backend=backend)
            for i in range(0, len(slices), self.max_batch)])
        study, driving = aggregate_slices(per_slice, self.classes)
        return self._result(study, int(slices[driving]), [int(i) for i in slices], per_slice)

    def classify_image(self, image: np.ndarray, *, windowed: bool = True, backend: str = "onnx") -> ClassificationResult:
        """Classify one 2D image: already windowed grayscale (``windowed=True``) or a slice in HU."""
        batch = self.preprocess_image(image) if windowed else self.preprocess_slices(image)
        probabilities = self.predict_proba(batch, backend=backend)
        return self._result(probabilities[0], 0, [0], probabilities)

    @property
    def gradcam_target_layer(self) -> str:
        return "layer4"


def _read_calibration(path: Path, metadata: ModelMetadata) -> dict[str, float]:
    """The model's calibration file when its metadata lists it (verified with the other files); else none."""
    if CALIBRATION_FILE not in metadata.files:
        return {}
    data = json.loads((Path(path) / CALIBRATION_FILE).read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{CALIBRATION_FILE} must hold a JSON object")
    return data
