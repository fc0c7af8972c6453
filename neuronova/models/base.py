"""What every loaded model offers: its card, warm-up, and for networks the ONNX session and the torch module.

Inference runs on ONNX Runtime; the torch module (same weights, architecture from package code) serves
Grad-CAM, which needs gradients, and benchmarks. Both are built once, at load.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from neuronova.models import architectures
from neuronova.models.metadata import ModelMetadata
from neuronova.models.runtime import load_weights, onnx_session, torch_device

logger = logging.getLogger(__name__)

ONNX_FILE = "model.onnx"
WEIGHTS_FILE = "weights.npz"
BACKENDS = ("onnx", "torch")


class LoadedModel:
    """A model whose files were verified and loaded."""

    task: ClassVar[str] = ""

    def __init__(self, path: Path, metadata: ModelMetadata, *, device: str = "auto") -> None:
        self.path = path
        self.metadata = metadata
        self.device = device

    @property
    def id(self) -> str:
        return self.metadata.id

    @property
    def version(self) -> str:
        return self.metadata.version

    @property
    def model_hash(self) -> str:
        return self.metadata.model_hash

    def warmup(self) -> None:
        """Run the model once on a dummy input so the first request does not pay for lazy initialisation."""


class NetworkModel(LoadedModel):
    """A network with ``model.onnx`` (inference) and ``weights.npz`` + an architecture name (torch)."""

    #: input shape of one item, without the batch axis, used for warm-up
    item_shape: tuple[int, ...] = ()

    def __init__(self, path: Path, metadata: ModelMetadata, *, device: str = "auto") -> None:
        super().__init__(path, metadata, device=device)
        for name in (ONNX_FILE, WEIGHTS_FILE):
            if name not in metadata.files:
                raise ValueError(f"metadata.json does not list {name} with its SHA-256")
        if metadata.architecture is None:
            raise ValueError("metadata.json names no architecture")
        self.session = onnx_session(path / ONNX_FILE, device=device)
        self.input_name = self.session.get_inputs()[0].name
        self.torch_device = torch_device(device)
        module = architectures.build(metadata.architecture.name, dict(metadata.architecture.params))
        self._module = load_weights(module, path / WEIGHTS_FILE).to(self.torch_device).eval()

    @property
    def providers(self) -> list[str]:
        return list(self.session.get_providers())

    def torch_module(self) -> nn.Module:
        """The network in eval mode with the weights loaded (the same weights as model.onnx)."""
        return self._module

    @property
    def gradcam_target_layer(self) -> str:
        """Name (as in ``named_modules()``) of the layer Grad-CAM should target."""
        raise NotImplementedError

    def target_layers(self) -> list[nn.Module]:
        return [dict(self._module.named_modules())[self.gradcam_target_layer]]

    def as_tensor(self, array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)).to(self.torch_device)

    def run(self, batch: np.ndarray, *, backend: str = "onnx") -> np.ndarray:
        """Raw network output (logits) for a preprocessed batch."""
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        if backend == "onnx":
            return self.session.run(None, {self.input_name: batch})[0]
        if backend == "torch":
            with torch.inference_mode():
                return self._module(self.as_tensor(batch)).float().cpu().numpy()
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")

    def warmup(self) -> None:
        dummy = np.zeros((1, *self.item_shape), np.float32)
        for _ in range(2):  # the second call is the first at steady speed
            self.run(dummy)
