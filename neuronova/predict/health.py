"""The predict API's part of ``GET /health``: the models, the devices, the batchers and the task queue.

``health_provider(app)`` returns a function for ``app.state.health_providers`` (neuronova/api/health.py
merges the dicts it returns); the predict router's lifespan registers it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from neuronova.models.registry import MODEL_IDS


@functools.cache
def gpu_devices() -> tuple[str, ...]:
    """Names of the CUDA devices torch sees (asked once: the answer does not change while the process runs)."""
    try:
        import torch

        if not torch.cuda.is_available():
            return ()
        return tuple(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
    except Exception:  # a broken driver is "no GPU" for the health report, not a failed /health
        return ()


def onnx_providers() -> list[str]:
    """What this onnxruntime build offers (each model's ``runtime`` says what it uses)."""
    try:
        import onnxruntime

        return list(onnxruntime.get_available_providers())
    except Exception:
        return []


def predict_health(state: Any) -> dict[str, Any]:
    registry = getattr(state, "models", None)
    if registry is None:
        models = {m: {"loaded": False, "version": None, "last_updated": None, "error": "models not loaded yet"}
                  for m in MODEL_IDS}
    else:
        models = registry.status()
        # Where each model actually runs (backend, device, provider), not what the libraries could offer.
        for model_id, entry in registry.entries.items():
            if entry.model is not None and model_id in models:
                models[model_id]["runtime"] = entry.model.runtime_status()
    devices = list(gpu_devices())
    body: dict[str, Any] = {"models": models, "gpu_available": bool(devices), "gpu_devices": devices,
                            "onnx_providers_available": onnx_providers()}
    service = getattr(state, "predict", None)
    if service is not None:
        body["predict"] = service.health()
    return body


def health_provider(app: Any) -> Callable[[], dict[str, Any]]:
    return functools.partial(predict_health, app.state)
