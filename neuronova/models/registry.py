"""The model registry: one entry per model directory, loaded once at start-up and warmed up.

``<model_dir>/<model_id>/metadata.json`` describes each model; the files it lists are checked against their
SHA-256 before anything is read. A model that is missing, corrupt or unreadable does not stop the node: its
entry says ``loaded=False`` with the reason, /health shows it, and using it raises ModelNotLoaded.

Loading never executes code from the model directory: metadata is JSON, the architecture is a name looked
up in package code, weights are plain arrays (npz without pickle), ONNX graphs run in ONNX Runtime with no
custom-operator libraries, and the biomarker model is refitted from its recorded configuration.
"""

from __future__ import annotations

import datetime
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from neuronova.errors import ModelNotLoaded
from neuronova.models.base import LoadedModel
from neuronova.models.biomarkers import BiomarkerModel
from neuronova.models.classification import ClassificationModel
from neuronova.models.metadata import METADATA_FILE, ModelMetadata, read_metadata, verify_files
from neuronova.models.segmentation import SegmentationModel

logger = logging.getLogger(__name__)

DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "demo"
#: The models the node serves; each gets an entry even when its directory is missing.
MODEL_IDS = ("mri_segmentation", "ct_classification", "biomarker_prediction")
_CLASSES: dict[str, type[LoadedModel]] = {
    "segmentation": SegmentationModel,
    "classification": ClassificationModel,
    "tabular_classification": BiomarkerModel,
}

M = TypeVar("M", bound=LoadedModel)


@dataclass
class RegistryEntry:
    model_id: str
    path: Path
    loaded: bool
    error: str | None = None
    metadata: ModelMetadata | None = None
    model: LoadedModel | None = None
    loaded_at: datetime.datetime | None = None
    load_seconds: float = 0.0

    def status(self) -> dict[str, Any]:
        """The /health view of this model."""
        meta = self.metadata
        last_updated = None
        if self.metadata_path.is_file():
            mtime = self.metadata_path.stat().st_mtime
            last_updated = datetime.datetime.fromtimestamp(mtime, datetime.UTC).isoformat().replace("+00:00", "Z")
        return {
            "loaded": self.loaded,
            "version": meta.version if meta else None,
            "last_updated": (meta.created or last_updated) if meta else last_updated,
            "model_hash": meta.model_hash if meta else None,
            "not_for_clinical_use": meta.not_for_clinical_use if meta else None,
            "error": self.error,
        }

    @property
    def metadata_path(self) -> Path:
        return self.path / METADATA_FILE


def load_model(path: Path, *, device: str = "auto", warmup: bool = True) -> RegistryEntry:
    """Load one model directory; never raises: failures become ``loaded=False`` with the reason."""
    model_id = path.name
    start = time.perf_counter()
    metadata = None
    try:
        if not path.is_dir():
            raise FileNotFoundError(f"model directory {path.name!r} not found")
        metadata = read_metadata(path)
        if metadata.id != model_id:
            raise ValueError(f"metadata.json says id {metadata.id!r} but the directory is {model_id!r}")
        verify_files(path, metadata)
        model = _CLASSES[metadata.task](path, metadata, device=device)
        if warmup:
            model.warmup()
    except Exception as exc:  # a bad model must not stop the node; the entry carries the reason
        message = f"{type(exc).__name__}: {exc}"
        logger.error("model %s not loaded: %s", model_id, message)
        return RegistryEntry(model_id, path, loaded=False, error=message, metadata=metadata)
    seconds = time.perf_counter() - start
    logger.info("model %s %s loaded in %.2f s", model_id, metadata.version, seconds)
    return RegistryEntry(model_id, path, loaded=True, metadata=metadata, model=model,
                         loaded_at=datetime.datetime.now(datetime.UTC), load_seconds=seconds)


class ModelRegistry:
    """The loaded models, by id."""

    def __init__(self, entries: dict[str, RegistryEntry]) -> None:
        self.entries = entries

    @classmethod
    def load(cls, model_dir: Path | str | None = None, *, device: str = "auto", warmup: bool = True,
             model_ids: tuple[str, ...] | None = None) -> ModelRegistry:
        """Load ``model_ids`` (default: the node's three models plus any other directory with a metadata.json)."""
        root = Path(model_dir) if model_dir is not None else DEFAULT_MODEL_DIR
        ids = list(model_ids) if model_ids is not None else list(MODEL_IDS)
        if model_ids is None and root.is_dir():
            ids += sorted(p.name for p in root.iterdir() if (p / METADATA_FILE).is_file() and p.name not in ids)
        return cls({model_id: load_model(root / model_id, device=device, warmup=warmup) for model_id in ids})

    def get(self, model_id: str, kind: type[M] = LoadedModel) -> M:  # type: ignore[assignment]
        """The loaded model, or ModelNotLoaded (unknown id, failed load, or not of the expected ``kind``)."""
        entry = self.entries.get(model_id)
        if entry is None:
            raise ModelNotLoaded(f"unknown model {model_id!r}; known: {sorted(self.entries)}")
        if not entry.loaded or entry.model is None:
            raise ModelNotLoaded(f"model {model_id!r} is not loaded: {entry.error}")
        if not isinstance(entry.model, kind):
            raise ModelNotLoaded(f"model {model_id!r} is a {entry.model.task} model, not {kind.__name__}")
        return entry.model

    def status(self) -> dict[str, dict[str, Any]]:
        return {model_id: entry.status() for model_id, entry in self.entries.items()}

    def __contains__(self, model_id: object) -> bool:
        entry = self.entries.get(model_id) if isinstance(model_id, str) else None
        return bool(entry and entry.loaded)
