"""The contract between study-level segmentation pipelines and the models they run.

A multi-sequence, physical-space segmentation pipeline (several series of one study, resampled into one
reference grid) does not care whether its network is the node's own demo model, a MONAI bundle or an
ONNX-only model: it asks the model what it needs (which series roles as channels, in which orientation and
spacing, normalised how), prepares exactly that, calls :meth:`VolumeSegmenter.infer`, and maps the
activated outputs back onto the reference series' frames.

Conventions (MONAI's): arrays are channel-first ``(C, I, J, K)`` in the model's orientation ``axcodes``
(e.g. ``"RAS"``: I runs to the patient's right... as nibabel/MONAI define axis codes) with voxel spacing
``pixdim`` in millimetres along I, J, K. The pipeline does orientation, spacing and intensity normalisation
(MONAI transforms) and their inverse; the model does windowing (sliding windows), the network and the
activation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

import numpy as np
from torch import nn

#: Intensity normalisations a pipeline knows how to apply (MONAI NormalizeIntensity and friends):
#: ``zscore_nonzero``: per channel, z-score over non-zero voxels (MONAI NormalizeIntensityd(nonzero=True,
#: channel_wise=True), what BraTS bundles use); ``zscore_foreground``: per channel, z-score over voxels above
#: 10 % of the channel's 99th percentile (the node's demo models); ``none``.
Normalisation = Literal["zscore_nonzero", "zscore_foreground", "none"]


@dataclass(frozen=True)
class Preprocessing:
    """What the model expects its input to look like (applied by the pipeline, inverted for the output)."""

    #: Orientation of the array axes, as MONAI's Orientation(axcodes=...) takes it.
    axcodes: str = "RAS"
    #: Voxel spacing in mm along the array axes; None = keep the reference grid's spacing.
    pixdim: tuple[float, float, float] | None = (1.0, 1.0, 1.0)
    normalisation: Normalisation = "zscore_nonzero"


@dataclass(frozen=True)
class OutputRegion:
    """One output of the model as the SEG will carry it.

    For ``activation="softmax"`` outputs ``index`` is the label value after argmax (0 is background, never
    listed); for ``"sigmoid"`` outputs it is the output channel, each thresholded on its own (regions may
    overlap: tumour core inside whole tumour).
    """

    index: int
    #: Human name, also the key the writers map to a code (e.g. "enhancing tumour", "tumour core",
    #: "whole tumour", "edema", "necrosis").
    name: str


@dataclass(frozen=True)
class Postprocessing:
    activation: Literal["softmax", "sigmoid"] = "softmax"
    #: For sigmoid outputs: a voxel belongs to region c when probability[c] > threshold.
    threshold: float = 0.5
    regions: tuple[OutputRegion, ...] = ()


@dataclass(frozen=True)
class Runtime:
    """Where the model actually runs (reported per model on /health and in job summaries)."""

    backend: str  # "onnxruntime" or "torch"
    device: str  # "cpu", "cuda:0", ...
    provider: str = ""  # ONNX Runtime execution provider actually used, or ""
    precision: str = "fp32"
    notes: tuple[str, ...] = field(default_factory=tuple)


@runtime_checkable
class VolumeSegmenter(Protocol):
    """A loaded study-level segmentation model (demo model, MONAI bundle, ONNX-only model)."""

    @property
    def id(self) -> str: ...
    @property
    def version(self) -> str: ...
    @property
    def model_hash(self) -> str: ...

    #: Series roles in channel order, e.g. ("t1c", "t1", "t2", "flair") for MONAI's BraTS bundle.
    roles: tuple[str, ...]
    #: Roles the model can do without (their channel is filled with zeros); the rest are required.
    optional_roles: frozenset[str]
    preprocessing: Preprocessing
    postprocessing: Postprocessing
    #: Sliding-window size in voxels along I, J, K (None = the whole volume at once) and overlap.
    roi_size: tuple[int, int, int] | None
    overlap: float
    runtime: Runtime

    def infer(self, image: np.ndarray) -> np.ndarray:
        """Activated outputs for a preprocessed image.

        ``image``: float32 ``(len(roles), I, J, K)`` already oriented, resampled and normalised as
        :attr:`preprocessing` says. Returns float32 ``(n_out, I, J, K)``: softmax probabilities (n_out =
        number of classes incl. background) or sigmoid probabilities (n_out = number of regions), computed
        by sliding windows when :attr:`roi_size` is set.
        """
        ...

    def gradcam_module(self) -> tuple[nn.Module, nn.Module] | None:
        """(eval-mode torch network, layer to target) for Grad-CAM, or None when the model has no torch
        weights (ONNX-only): explanations are then skipped and the job summary says so."""
        ...

    def warmup(self) -> None: ...
