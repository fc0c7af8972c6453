"""Execution backends: devices, ONNX Runtime sessions, torch precision and weight files.

A device setting is ``auto`` (the first GPU when one is usable, else the CPU), ``cpu``, ``cuda`` or ``cuda:N``.
:func:`check_device` is called at start-up: ``cuda`` without a usable GPU stops the start with the reason
(a CPU-only torch build, no driver or device visible, an index past the last GPU), rather than every job
failing later.

Weights are stored as ``weights.npz`` (the state dict's tensors as plain arrays, read with
``allow_pickle=False``): a file that can hold only numbers, which no loader can be tricked into executing.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from neuronova.config import parse_device

logger = logging.getLogger(__name__)

DEVICES = ("auto", "cpu", "cuda")  # the plain names; "cuda:N" picks a GPU
#: Mixed-precision modes a model may declare (metadata ``framework.precision``); used on CUDA only.
PRECISIONS = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}


class DeviceError(RuntimeError):
    """The device asked for cannot be used; the message says why."""


def why_no_cuda() -> str | None:
    """None when torch can use a GPU, else the reason in words."""
    if torch.version.cuda is None:
        return f"this torch build ({torch.__version__}) has no CUDA support; install a CUDA build of torch"
    try:
        available = torch.cuda.is_available()
        count = torch.cuda.device_count() if available else 0
    except Exception as exc:  # a broken driver raises from deep inside torch
        return f"the CUDA driver failed to initialise: {exc}"
    if not available or count == 0:
        return (f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees no GPU: no NVIDIA driver or device "
                "is visible to this process (on a container host: the NVIDIA container toolkit and a GPU "
                "reservation; check CUDA_VISIBLE_DEVICES)")
    return None


def check_device(device: str) -> None:
    """Raise DeviceError when ``device`` names a GPU that cannot be used (``auto`` and ``cpu`` always pass)."""
    device = parse_device(device)
    if not device.startswith("cuda"):
        return
    reason = why_no_cuda()
    if reason is not None:
        raise DeviceError(f"device {device!r} was asked for but {reason}")
    index = int(device.partition(":")[2] or 0)
    if index >= torch.cuda.device_count():
        raise DeviceError(f"device {device!r} was asked for but only {torch.cuda.device_count()} GPU(s) are visible")


def torch_device(device: str = "auto") -> torch.device:
    """The torch device a setting resolves to (DeviceError when a GPU was asked for and is unusable)."""
    device = parse_device(device)
    if device == "cpu":
        return torch.device("cpu")
    if device == "auto":
        return torch.device("cuda", 0) if why_no_cuda() is None else torch.device("cpu")
    check_device(device)
    return torch.device("cuda", int(device.partition(":")[2] or 0))


def onnx_providers(device: str = "auto") -> list[Any]:
    """ONNX Runtime's CUDA provider when the device is a GPU and this onnxruntime build has it (the
    ``onnxruntime-gpu`` wheel), CPU always as the fallback. A GPU without ORT's CUDA provider is not an error:
    the model then runs on torch CUDA (see :func:`neuronova.models.base.NetworkModel`)."""
    target = torch_device(device)
    if target.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        return [("CUDAExecutionProvider", {"device_id": target.index or 0}), "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def onnx_session(path: Path, *, device: str = "auto", threads: int = 0) -> ort.InferenceSession:
    """A session built from the file's bytes: with no model path, ONNX Runtime cannot follow external-data
    references to other files, so the verified file is all that is read."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads  # 0: one per physical core
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(path.read_bytes(), sess_options=options, providers=onnx_providers(device))


@contextlib.contextmanager
def autocast(device: torch.device, precision: str) -> Iterator[None]:
    """torch autocast for ``precision`` (fp16/bf16) on ``device``; fp32 is a no-op."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
    dtype = PRECISIONS[precision]
    if dtype is None:
        yield
        return
    with torch.autocast(device_type=device.type, dtype=dtype):
        yield


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
