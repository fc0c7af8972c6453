"""The models of this process: loaded once (per worker process, per node) and warmed up, then shared by the
job pipelines, the predict API and /health."""

from __future__ import annotations

import threading
from pathlib import Path

from neuronova.models.registry import ModelRegistry

_lock = threading.Lock()
_registries: dict[tuple[str, str], ModelRegistry] = {}


def shared_registry(model_dir: Path | None, *, device: str = "auto") -> ModelRegistry:
    """The process's registry for ``model_dir`` (None: the shipped demo models), loading it on first use."""
    key = (str(Path(model_dir).resolve()) if model_dir is not None else "", device)
    with _lock:
        registry = _registries.get(key)
        if registry is None:
            registry = _registries[key] = ModelRegistry.load(model_dir, device=device)
        return registry
