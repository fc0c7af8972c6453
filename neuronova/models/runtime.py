"""Execution backends: ONNX Runtime sessions, torch devices and weight files.

Weights are stored as ``weights.npz`` (the state dict's tensors as plain arrays, read with
``allow_pickle=False``): a file that can hold only numbers, which no loader can be tricked into executing.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

logger = logging.getLogger(__name__)

DEVICES = ("auto", "cpu", "cuda")


def onnx_providers(device: str = "auto") -> list[str]:
    """CUDA first when the device allows it and this onnxruntime build has it, CPU always as the fallback."""
    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
    available = ort.get_available_providers()
    if device != "cpu" and "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if device == "cuda":
        raise RuntimeError(f"device 'cuda' was asked for but onnxruntime offers only {available}")
    return ["CPUExecutionProvider"]


def torch_device(device: str = "auto") -> torch.device:
    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
    if device != "cpu" and torch.cuda.is_available():
        return torch.device("cuda")
    if device == "cuda":
        raise RuntimeError("device 'cuda' was asked for but torch sees no CUDA device")
    return torch.device("cpu")


def onnx_session(path: Path, *, device: str = "auto", threads: int = 0) -> ort.InferenceSession:
    """A session built from the file's bytes: with no model path, ONNX Runtime cannot follow external-data
    references to other files, so the verified file is all that is read."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads  # 0: one per physical core
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(path.read_bytes(), sess_options=options, providers=onnx_providers(device))


def save_weights(module: nn.Module, path: Path) -> None:
    arrays = {name: tensor.detach().cpu().numpy() for name, tensor in module.state_dict().items()}
    with path.open("wb") as fh:
        np.savez(fh, **arrays)  # type: ignore[arg-type]  # uncompressed: the same bytes for the same weights


def load_weights(module: nn.Module, path: Path) -> nn.Module:
    """Load a weights.npz into ``module`` (strict: every tensor present with its shape)."""
    with np.load(path, allow_pickle=False) as data:
        state = {name: torch.from_numpy(np.array(data[name])) for name in data.files}
    module.load_state_dict(state, strict=True)
    return module
