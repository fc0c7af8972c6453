"""A study-level segmentation model of the node's own layout: several MR sequences in, tumour labels out.

``<model_dir>/<id>/metadata.json`` with ``"task": "segmentation"`` and ``"input": {"roles": [...], ...}`` is
loaded as a :class:`StudySegmentationModel` (a :class:`~neuronova.models.volumetric.VolumeSegmenter`): the
network (``weights.npz`` + a named architecture for torch, ``model.onnx`` for ONNX Runtime) takes one channel per
role, in physical space (``input.axcodes``, ``input.pixdim`` mm), normalised as ``input.normalisation`` says;
the pipeline resamples and normalises, this class runs the windows, the network and the activation.

Input keys: ``roles`` (channel order), ``optional_roles`` (zero channels when absent: the demo model was
trained with those channels dropped at random), ``axcodes``, ``pixdim``, ``normalisation``, ``roi_size``
(None: the whole grid at once), ``overlap``; output: ``activation`` (softmax or sigmoid), ``threshold`` and
``labels`` (softmax label values or sigmoid channels -> names).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.inferers import sliding_window_inference
from torch import nn

from neuronova.models.architectures import unet_bottleneck_name
from neuronova.models.base import NetworkModel
from neuronova.models.metadata import ModelMetadata
from neuronova.models.volumetric import OutputRegion, Postprocessing, Preprocessing


def _triple(value: Any, key: str) -> tuple[Any, Any, Any] | None:
    if value is None:
        return None
    values = tuple(value)
    if len(values) != 3:
        raise ValueError(f"metadata.json input.{key} needs three values, found {value!r}")
    return values  # type: ignore[return-value]


class StudySegmentationModel(NetworkModel):
    """A multi-channel (one channel per series role) physical-space segmentation network."""

    task = "segmentation"

    def __init__(self, path: Path, metadata: ModelMetadata, *, device: str = "auto") -> None:
        super().__init__(path, metadata, device=device)
        spec = metadata.input
        roles = spec.get("roles")
        if not isinstance(roles, list) or not roles or not all(isinstance(r, str) for r in roles):
            raise ValueError("metadata.json input.roles must be a non-empty list of role names")
        self.roles: tuple[str, ...] = tuple(roles)
        self.optional_roles: frozenset[str] = frozenset(spec.get("optional_roles", ()))
        if not self.optional_roles <= set(self.roles) or self.optional_roles == set(self.roles):
            raise ValueError(f"input.optional_roles {sorted(self.optional_roles)} must be some of the roles {roles}")
        pixdim = _triple(spec.get("pixdim", (1.0, 1.0, 1.0)), "pixdim")
        self.preprocessing = Preprocessing(axcodes=str(spec.get("axcodes", "RAS")),
                                           pixdim=tuple(float(v) for v in pixdim) if pixdim else None,  # type: ignore[arg-type]
                                           normalisation=spec.get("normalisation", "zscore_nonzero"))
        roi = _triple(spec.get("roi_size"), "roi_size")
        self.roi_size: tuple[int, int, int] | None = tuple(int(v) for v in roi) if roi else None  # type: ignore[assignment]
        self.overlap = float(spec.get("overlap", 0.25))
        out = metadata.output
        activation = out.get("activation", "softmax")
        names = dict(metadata.labels) if isinstance(metadata.labels, dict) else dict(enumerate(metadata.labels))
        self.postprocessing = Postprocessing(
            activation=activation, threshold=float(out.get("threshold", 0.5)),
            regions=tuple(OutputRegion(int(k), str(v)) for k, v in sorted(names.items(), key=lambda kv: int(kv[0]))))
        self.sw_batch_size = 1
        self.item_shape = (len(self.roles), *(self.roi_size or (32, 32, 32)))

    def infer(self, image: np.ndarray) -> np.ndarray:
        """Activated outputs (n_out, I, J, K) of a preprocessed (len(roles), I, J, K) image."""
        if image.ndim != 4 or image.shape[0] != len(self.roles):
            raise ValueError(f"expected ({len(self.roles)}, I, J, K) for roles {self.roles}, got {image.shape}")
        batch = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None]

        def predictor(window: torch.Tensor) -> torch.Tensor:
            return torch.from_numpy(self.run(window.numpy()))

        with torch.inference_mode():
            if self.roi_size is None:
                logits = predictor(batch)
            else:
                logits = sliding_window_inference(batch, self.roi_size, self.sw_batch_size, predictor,
                                                  overlap=self.overlap, mode="gaussian")
            logits = torch.as_tensor(logits)
            probs = torch.softmax(logits, 1) if self.postprocessing.activation == "softmax" else torch.sigmoid(logits)
        return probs[0].numpy().astype(np.float32, copy=False)

    def gradcam_module(self) -> tuple[nn.Module, nn.Module]:
        return self._module, dict(self._module.named_modules())[self.gradcam_target_layer]

    @property
    def gradcam_target_layer(self) -> str:
        return unet_bottleneck_name(self._module)
