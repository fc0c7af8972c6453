"""A study-level segmentation model built from outside formats: the :class:`VolumeSegmenter` implementation shared
by MONAI bundles (torch weights or ONNX) and ONNX-only model directories.

The network itself sits behind a small runner (torch module or ONNX Runtime session); :meth:`VolumeModel.infer`
is the same for both: the model-side intensity transforms, padding to the network's multiple, MONAI's
``sliding_window_inference`` with the bundle's window, overlap and blending, then the activation.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import onnxruntime as ort
import torch
from monai.inferers import sliding_window_inference
from torch import nn

from neuronova.models.base import LoadedModel
from neuronova.models.metadata import ModelMetadata
from neuronova.models.runtime import autocast, onnx_session
from neuronova.models.volumetric import Postprocessing, Preprocessing, Runtime

logger = logging.getLogger(__name__)

GRADCAM_UNAVAILABLE_ONNX = "Grad-CAM unavailable (ONNX-only)"


class TorchRunner:
    """A torch network in eval mode on one device.

    On the CPU, 3D networks run in the channels_last_3d memory format: the BraTS SegResNet over one
    4x240x240x160 window took 21-24 s of CPU time against 32-35 s contiguous (2 threads; FACTS.md saw the same
    for the UNet). Results agree within float rounding (1.3e-5 on sigmoid outputs against MONAI's own contiguous run).
    """

    def __init__(self, network: nn.Module, device: torch.device, *, layer: str, precision: str = "fp32") -> None:
        self.device = device
        self.memory_format = torch.channels_last_3d if device.type == "cpu" else torch.contiguous_format
        self.network = network.to(device).to(memory_format=self.memory_format).eval()  # type: ignore[call-overload]
        self.layer = layer
        self.precision = precision if device.type == "cuda" else "fp32"

    @property
    def runtime(self) -> Runtime:
        notes = ("channels_last_3d",) if self.memory_format == torch.channels_last_3d else ()
        return Runtime(backend="torch", device=str(self.device), precision=self.precision, notes=notes)

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        x = batch.to(self.device)
        if x.dim() == 5:
            x = x.contiguous(memory_format=self.memory_format)
        with torch.inference_mode(), autocast(self.device, self.precision):
            return self.network(x).float().contiguous()

    def gradcam(self) -> tuple[nn.Module, nn.Module] | None:
        return self.network, dict(self.network.named_modules())[self.layer]


class OnnxRunner:
    """An ONNX Runtime session (no torch weights: no gradients, so no Grad-CAM)."""

    def __init__(self, path: Path, device: str) -> None:
        self.session: ort.InferenceSession = onnx_session(path, device=device)
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise ValueError(f"{path.name} has {len(inputs)} inputs; a segmentation model takes one image")
        self.input_name = inputs[0].name
        shape = list(inputs[0].shape)
        if len(shape) != 5:
            raise ValueError(f"{path.name} input {self.input_name!r} has shape {shape}; expected (N, C, I, J, K)")
        #: Fixed sizes the graph declares (None where the axis is dynamic).
        self.fixed = [d if isinstance(d, int) and d > 0 else None for d in shape]
        self.device = torch.device("cpu")

    @property
    def provider(self) -> str:
        return str(self.session.get_providers()[0])

    @property
    def runtime(self) -> Runtime:
        gpu = self.provider == "CUDAExecutionProvider"
        return Runtime(backend="onnxruntime", device="cuda" if gpu else "cpu", provider=self.provider,
                       notes=(GRADCAM_UNAVAILABLE_ONNX,))

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        array = np.ascontiguousarray(batch.detach().cpu().numpy(), dtype=np.float32)
        if self.fixed[0] == 1 and array.shape[0] > 1:  # a graph exported with batch 1: one window at a time
            return torch.cat([self(batch[i:i + 1]) for i in range(array.shape[0])])
        return torch.from_numpy(np.asarray(self.session.run(None, {self.input_name: array})[0], dtype=np.float32))

    def gradcam(self) -> None:
        return None


@dataclass
class WindowSteps:
    """How :meth:`VolumeModel.infer` runs the network (read from a bundle's config or a model card)."""

    roi_size: tuple[int, int, int] | None = None
    overlap: float = 0.0
    sw_batch_size: int = 1
    blend_mode: str = "constant"
    sigma_scale: float = 0.125
    #: (description, MONAI array transform) applied to the whole volume first.
    intensity: list[tuple[str, Any]] = field(default_factory=list)
    pad_k: int | None = None
    pad_size: tuple[int, int, int] | None = None


class VolumeModel(LoadedModel):
    """A loaded study-level segmentation model; implements :class:`neuronova.models.volumetric.VolumeSegmenter`.

    ``metadata`` is the node's model card: the directory's own (ONNX-only) or one written from a bundle's
    configs (:func:`neuronova.models.bundle.loader.bundle_card`), so id, version, hash and the clinical-use flag
    read the same for every layout.
    """

    task: ClassVar[str] = "segmentation"

    def __init__(self, path: Path, metadata: ModelMetadata, *, device: str, layout: str, roles: tuple[str, ...],
                 optional_roles: frozenset[str], preprocessing: Preprocessing, postprocessing: Postprocessing,
                 runner: TorchRunner | OnnxRunner, steps: WindowSteps, n_outputs: int | None = None,
                 notes: tuple[str, ...] = ()) -> None:
        super().__init__(path, metadata, device=device)
        self.name = metadata.name
        self.layout = layout
        self.roles = roles
        self.optional_roles = optional_roles
        self.preprocessing = preprocessing
        self.postprocessing = postprocessing
        self.runner = runner
        self.steps = steps
        self.roi_size = steps.roi_size
        self.overlap = steps.overlap
        self.n_outputs = n_outputs
        self.notes = notes

    @property
    def not_for_clinical_use(self) -> bool:
        return self.metadata.not_for_clinical_use

    @property
    def runtime(self) -> Runtime:
        return self.runner.runtime

    @property
    def gradcam_available(self) -> bool:
        return isinstance(self.runner, TorchRunner)

    @property
    def description(self) -> str:
        """What the model is and how the node runs it, in words (for /health and job summaries)."""
        regions = ", ".join(f"{r.index}: {r.name}" for r in self.postprocessing.regions)
        parts = [self.metadata.description.strip() or self.name,
                 f"inputs {', '.join(self.roles)}" + (f" (optional: {', '.join(sorted(self.optional_roles))})"
                                                     if self.optional_roles else ""),
                 f"{self.postprocessing.activation} outputs: {regions}"]
        if not self.gradcam_available:
            parts.append(GRADCAM_UNAVAILABLE_ONNX)
        return "; ".join(parts + list(self.notes))

    def gradcam_module(self) -> tuple[nn.Module, nn.Module] | None:
        return self.runner.gradcam()

    def runtime_status(self) -> dict[str, Any]:
        rt = self.runtime
        status: dict[str, Any] = {"backend": rt.backend, "device": rt.device, "precision": rt.precision}
        if rt.provider:
            status["provider"] = rt.provider
        status["gradcam"] = ({"backend": "torch", "device": rt.device} if self.gradcam_available
                             else {"available": False, "reason": GRADCAM_UNAVAILABLE_ONNX})
        return status

    def _check_image(self, image: np.ndarray) -> torch.Tensor:
        if not isinstance(image, np.ndarray):
            raise TypeError(f"image must be a numpy array, got {type(image).__name__}")
        if image.ndim != 4 or image.shape[0] != len(self.roles) or min(image.shape[1:]) < 1:
            raise ValueError(f"image must be ({len(self.roles)}, I, J, K) for roles {self.roles}, got shape {image.shape}")
        array = np.ascontiguousarray(image, dtype=np.float32)
        if not np.isfinite(array).all():
            raise ValueError("image has NaN or infinite values")
        return torch.from_numpy(array)

    def _pads(self, shape: tuple[int, ...]) -> list[tuple[int, int]]:
        # MONAI's DivisiblePad/SpatialPad "symmetric" placement, computed here so the crop back is exact
        # (MONAI's own inverse needs MetaTensor bookkeeping the node does not carry).
        pads = []
        for axis, size in enumerate(shape):
            target = size
            if self.steps.pad_size is not None:
                target = max(target, self.steps.pad_size[axis])
            if self.steps.pad_k:
                target = -(-target // self.steps.pad_k) * self.steps.pad_k
            pads.append(((target - size) // 2, target - size - (target - size) // 2))
        return pads

    def infer(self, image: np.ndarray) -> np.ndarray:
        x = self._check_image(image)
        for _, transform in self.steps.intensity:
            x = torch.as_tensor(transform(x), dtype=torch.float32)
        spatial = tuple(x.shape[1:])
        pads = self._pads(spatial)
        if any(p != (0, 0) for p in pads):
            flat = [v for before_after in reversed(pads) for v in before_after]  # F.pad wants the last axis first
            x = torch.nn.functional.pad(x, flat)
        batch = x[None]
        with torch.inference_mode():
            if self.roi_size is not None:
                out = sliding_window_inference(batch, self.roi_size, self.steps.sw_batch_size, self.runner,
                                               overlap=self.overlap, mode=self.steps.blend_mode,
                                               sigma_scale=self.steps.sigma_scale, sw_device=self.runner.device,
                                               device=torch.device("cpu"))
                logits = torch.as_tensor(out)
            else:
                logits = self.runner(batch).cpu()
            logits = logits[0].float().cpu()
            if self.n_outputs is not None and logits.shape[0] != self.n_outputs:
                raise ValueError(f"the network returned {logits.shape[0]} channels; the model declares {self.n_outputs}")
            (bi, _), (bj, _), (bk, _) = pads
            logits = logits[:, bi:bi + spatial[0], bj:bj + spatial[1], bk:bk + spatial[2]]
            probs = torch.sigmoid(logits) if self.postprocessing.activation == "sigmoid" else torch.softmax(logits, 0)
        return np.ascontiguousarray(probs.numpy(), dtype=np.float32)

    def warmup_shape(self) -> tuple[int, int, int]:
        if self.roi_size is not None:
            return tuple(v if v > 0 else 32 for v in self.roi_size)  # type: ignore[return-value]
        k = self.steps.pad_k or 16
        return (2 * k, 2 * k, 2 * k)

    def warmup(self) -> None:
        """Run once (twice on a GPU: the second call is the first at steady speed) on a dummy volume, checking
        the number of output channels; and a backward pass for Grad-CAM on torch models."""
        dummy = np.zeros((len(self.roles), *self.warmup_shape()), np.float32)
        for _ in range(2 if self.runner.device.type == "cuda" else 1):
            self.infer(dummy)
        target = self.gradcam_module()
        if target is not None and self.runner.device.type == "cuda":
            network = target[0]
            x = torch.zeros((1, len(self.roles), *self.warmup_shape()), device=self.runner.device, requires_grad=True)
            with torch.enable_grad():
                network(x).float().sum().backward()
            network.zero_grad(set_to_none=True)
