"""What every loaded model offers: its card, warm-up, and for networks the ONNX session and the torch module.

A network has two runtimes built from the same weights: an ONNX Runtime session and a torch module (the
architecture from package code). Which one runs inference is chosen once, at load (:meth:`NetworkModel.
choose_backend`): the model's metadata may name it (``framework.backend``); otherwise on the CPU ONNX Runtime
(measured 1.7-5x faster than eager torch for the classifier, level for the UNet: bench/README-inference.md),
on a GPU torch CUDA unless ONNX Runtime has its CUDA provider too, in which case both are timed on the
warm-up input and the faster wins. Grad-CAM always uses the torch module (it needs gradients), on the same
device. Every runtime a model will use is warmed up before the first job.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from neuronova.models import architectures
from neuronova.models.metadata import ModelMetadata
from neuronova.models.runtime import PRECISIONS, autocast, load_weights, onnx_session, torch_device
from neuronova.models.volumetric import Runtime

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

    def runtime_status(self) -> dict[str, Any]:
        """Where this model runs, for /health and job summaries."""
        return {"backend": "python", "device": "cpu"}


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
        self.torch_device = torch_device(device)
        self.session = onnx_session(path / ONNX_FILE, device=device)
        self.input_name = self.session.get_inputs()[0].name
        module = architectures.build(metadata.architecture.name, dict(metadata.architecture.params))
        self._module = load_weights(module, path / WEIGHTS_FILE).to(self.torch_device).eval()
        precision = str(metadata.framework.get("precision", "fp32"))
        if precision not in PRECISIONS:
            raise ValueError(f"metadata.json framework.precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
        #: Mixed precision only on a GPU and only where the model's card declares it (checked against fp32
        #: by tests/models/test_device.py and bench/gpu.py).
        self.precision = precision if self.torch_device.type == "cuda" else "fp32"
        self.backend = "onnx"  # until choose_backend() runs (at warm-up)
        self.backend_timings: dict[str, float] = {}

    @property
    def providers(self) -> list[str]:
        return list(self.session.get_providers())

    @property
    def onnx_on_gpu(self) -> bool:
        return self.providers[0] == "CUDAExecutionProvider"

    def choose_backend(self) -> str:
        """Pick the inference backend (see the module docstring) and remember it in ``self.backend``."""
        declared = str(self.metadata.framework.get("backend", ""))
        on_gpu = self.torch_device.type == "cuda"
        if declared in ("onnx", "torch") and not (declared == "onnx" and on_gpu and not self.onnx_on_gpu):
            choice = declared
        elif not on_gpu:
            choice = "onnx"
        elif not self.onnx_on_gpu:
            choice = "torch"  # ONNX Runtime here is the CPU build: the GPU runs torch
        else:
            self.backend_timings = {b: self._time_backend(b) for b in ("onnx", "torch")}
            choice = min(self.backend_timings, key=self.backend_timings.__getitem__)
        if declared and choice != declared:
            logger.warning("model %s declares backend %r; running %r on %s", self.id, declared, choice,
                           self.torch_device)
        self.backend = choice
        return choice

    def _time_backend(self, backend: str, repeats: int = 3) -> float:
        dummy = np.zeros((1, *self.item_shape), np.float32)
        self.run(dummy, backend=backend)  # first call: lazy initialisation, not timed
        best = float("inf")
        for _ in range(repeats):
            t = time.perf_counter()
            self.run(dummy, backend=backend)
            best = min(best, time.perf_counter() - t)
        return best

    @property
    def runtime(self) -> Runtime:
        if self.backend == "onnx":
            gpu = self.onnx_on_gpu
            return Runtime(backend="onnxruntime", device=str(self.torch_device) if gpu else "cpu",
                           provider=self.providers[0])
        return Runtime(backend="torch", device=str(self.torch_device), precision=self.precision)

    def runtime_status(self) -> dict[str, Any]:
        rt = self.runtime
        status: dict[str, Any] = {"backend": rt.backend, "device": rt.device, "precision": rt.precision,
                                  "gradcam": {"backend": "torch", "device": str(self.torch_device)}}
        if rt.provider:
            status["provider"] = rt.provider
        if self.backend_timings:
            status["measured_s"] = {k: round(v, 5) for k, v in self.backend_timings.items()}
        return status

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

    def run(self, batch: np.ndarray, *, backend: str | None = None) -> np.ndarray:
        """Raw network output (logits) for a preprocessed batch, on ``backend`` (None: the chosen one)."""
        backend = backend or self.backend
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        if backend == "onnx":
            return self.session.run(None, {self.input_name: batch})[0]
        if backend == "torch":
            with torch.inference_mode(), autocast(self.torch_device, self.precision):
                return self._module(self.as_tensor(batch)).float().cpu().numpy()
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")

    def warmup(self) -> None:
        """Choose the backend, then warm up every runtime this model will use: the inference backend and the
        torch module Grad-CAM runs on (forward and backward: on a GPU the first backward sets up cuDNN too)."""
        self.choose_backend()
        dummy = np.zeros((1, *self.item_shape), np.float32)
        for _ in range(2):  # the second call is the first at steady speed
            self.run(dummy)
        x = self.as_tensor(dummy).requires_grad_(True)
        with torch.enable_grad():
            self._module(x).float().sum().backward()
        self._module.zero_grad(set_to_none=True)
