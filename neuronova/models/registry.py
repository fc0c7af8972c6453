"""The model registry: one entry per model directory, loaded once at start-up and warmed up.

Three layouts of ``<model_dir>/<model_id>/`` are recognised (:func:`detect_layout`):

- ``node``: the node's own ``metadata.json`` at the top; the files it lists are checked against their SHA-256
  before anything is read. Within it, a segmentation card with ``input.roles`` is a study-level model
  (:class:`~neuronova.models.multiseq.StudySegmentationModel`), or, with ``model.onnx`` and no torch weights,
  an ONNX-only model (:mod:`neuronova.models.onnx_only`); other cards load as before by task.
- ``monai_bundle``: MONAI's ``configs/metadata.json`` + ``configs/inference.json``/``.yaml`` + ``models/``
  (:mod:`neuronova.models.bundle`).

A model that is missing, corrupt, unreadable or refused does not stop the node: its entry says
``loaded=False`` with the reason, /health shows it (with the name, version and hash when they could be read),
and using it raises ModelNotLoaded.

Loading never executes code from the model directory: metadata is JSON (or YAML read by the safe loader), the
architecture is a name looked up in package code (a bundle's ``network_def`` in an allow-list of MONAI
networks; its ``$`` expressions are never evaluated), weights are plain arrays (npz without pickle, safetensors,
or ``torch.load(weights_only=True)``), ONNX graphs run in ONNX Runtime with no custom-operator libraries, and the
biomarker model is refitted from its recorded configuration.
"""

from __future__ import annotations

import datetime
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from neuronova.errors import ModelNotLoaded
from neuronova.models.base import LoadedModel, NetworkModel
from neuronova.models.biomarkers import BiomarkerModel
from neuronova.models.bundle import LAYOUT as BUNDLE_LAYOUT
from neuronova.models.bundle import BundleInfo, is_bundle, load_bundle, read_bundle_info
from neuronova.models.bundle.loader import read_bundle_version
from neuronova.models.bundle.segmenter import GRADCAM_UNAVAILABLE_ONNX, VolumeModel
from neuronova.models.classification import ClassificationModel
from neuronova.models.metadata import METADATA_FILE, ModelMetadata, read_metadata, verify_files
from neuronova.models.onnx_only import LAYOUT as ONNX_ONLY_LAYOUT
from neuronova.models.onnx_only import is_onnx_only, load_onnx_only
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

NODE_LAYOUT = "node"
STUDY_LAYOUT = "node_study"

M = TypeVar("M")


def detect_layout(path: Path) -> str:
    """``node`` (metadata.json at the top) or ``monai_bundle`` (configs/metadata.json); FileNotFoundError else."""
    if not path.is_dir():
        raise FileNotFoundError(f"model directory {path.name!r} not found")
    if (path / METADATA_FILE).is_file():
        return NODE_LAYOUT
    if is_bundle(path):
        return BUNDLE_LAYOUT
    raise FileNotFoundError(f"model directory {path.name!r} has neither metadata.json nor configs/metadata.json")


def read_model_version(path: Path) -> str:
    """The version a model directory declares, for any layout, without loading it (OSError, ValueError)."""
    if detect_layout(path) == BUNDLE_LAYOUT:
        return read_bundle_version(path)
    return read_metadata(path).version


def _study_model(path: Path, metadata: ModelMetadata, device: str) -> Any:
    try:  # imported here: the study model is optional for the rest of the registry
        from neuronova.models.multiseq import StudySegmentationModel
    except ImportError as exc:
        raise ModelNotLoaded(f"study segmentation models are not available in this build ({exc})") from None
    return StudySegmentationModel(path, metadata, device=device)


def gradcam_available(model: Any) -> bool:
    """Whether explanations can be drawn for this model (torch weights behind it)."""
    if isinstance(model, VolumeModel):
        return model.gradcam_available
    if isinstance(model, NetworkModel):
        return True
    return False


@dataclass
class RegistryEntry:
    model_id: str
    path: Path
    loaded: bool
    error: str | None = None
    metadata: ModelMetadata | None = None
    #: the node's own model classes, or a VolumeModel (bundle, ONNX-only): all LoadedModels with a card
    model: LoadedModel | None = None
    loaded_at: datetime.datetime | None = None
    load_seconds: float = 0.0
    layout: str | None = None
    #: a MONAI bundle's card (name, version, hash), known even when the bundle is refused
    bundle: BundleInfo | None = None

    def status(self) -> dict[str, Any]:
        """The /health view of this model."""
        meta, bundle = self.metadata, self.bundle
        last_updated = None
        if self.metadata_path.is_file():
            mtime = self.metadata_path.stat().st_mtime
            last_updated = datetime.datetime.fromtimestamp(mtime, datetime.UTC).isoformat().replace("+00:00", "Z")
        status: dict[str, Any] = {
            "loaded": self.loaded,
            "name": meta.name if meta else bundle.name if bundle else None,
            "version": meta.version if meta else bundle.version if bundle else None,
            "last_updated": (meta.created or last_updated) if meta else last_updated,
            "model_hash": meta.model_hash if meta else bundle.model_hash if bundle else None,
            "not_for_clinical_use": (meta.not_for_clinical_use if meta else
                                     getattr(self.model, "not_for_clinical_use", True) if bundle else None),
            "layout": self.layout,
            "gradcam": gradcam_available(self.model) if self.loaded else None,
            "error": self.error,
            "reason": self.error,
        }
        if isinstance(self.model, VolumeModel):
            status["description"] = self.model.description
            if not self.model.gradcam_available:
                status["gradcam_reason"] = GRADCAM_UNAVAILABLE_ONNX
        return status

    @property
    def metadata_path(self) -> Path:
        if self.layout == BUNDLE_LAYOUT:
            return self.path / "configs" / METADATA_FILE
        return self.path / METADATA_FILE


def load_model(path: Path, *, device: str = "auto", warmup: bool = True) -> RegistryEntry:
    """Load one model directory; never raises: failures become ``loaded=False`` with the reason."""
    model_id = path.name
    start = time.perf_counter()
    metadata: ModelMetadata | None = None
    bundle: BundleInfo | None = None
    layout: str | None = None
    model: Any = None
    try:
        layout = detect_layout(path)
        if layout == BUNDLE_LAYOUT:
            bundle = read_bundle_info(path)
            model = load_bundle(path, device=device, info=bundle)
            metadata = model.metadata  # the card written from the bundle's configs
        else:
            metadata = read_metadata(path)
            if metadata.id != model_id:
                raise ValueError(f"metadata.json says id {metadata.id!r} but the directory is {model_id!r}")
            verify_files(path, metadata)
            if is_onnx_only(path, metadata):
                layout = ONNX_ONLY_LAYOUT
                model = load_onnx_only(path, metadata, device=device)
            elif metadata.task == "segmentation" and "roles" in metadata.input:
                layout = STUDY_LAYOUT
                model = _study_model(path, metadata, device)
            else:
                model = _CLASSES[metadata.task](path, metadata, device=device)
        if warmup:
            model.warmup()
    except Exception as exc:  # a bad model must not stop the node; the entry carries the reason
        message = f"{type(exc).__name__}: {exc}"
        logger.error("model %s not loaded: %s", model_id, message)
        return RegistryEntry(model_id, path, loaded=False, error=message, metadata=metadata, layout=layout,
                             bundle=bundle)
    seconds = time.perf_counter() - start
    logger.info("model %s %s loaded in %.2f s", model_id, model.version, seconds)
    return RegistryEntry(model_id, path, loaded=True, metadata=metadata, model=model,
                         loaded_at=datetime.datetime.now(datetime.UTC), load_seconds=seconds, layout=layout,
                         bundle=bundle)


class ModelRegistry:
    """The loaded models, by id."""

    def __init__(self, entries: dict[str, RegistryEntry]) -> None:
        self.entries = entries

    @classmethod
    def load(cls, model_dir: Path | str | None = None, *, device: str = "auto", warmup: bool = True,
             model_ids: tuple[str, ...] | None = None) -> ModelRegistry:
        """Load ``model_ids`` (default: the node's three models plus any other directory with a metadata.json or
        a MONAI bundle's configs/metadata.json)."""
        root = Path(model_dir) if model_dir is not None else DEFAULT_MODEL_DIR
        ids = list(model_ids) if model_ids is not None else list(MODEL_IDS)
        if model_ids is None and root.is_dir():
            ids += sorted(p.name for p in root.iterdir()
                          if ((p / METADATA_FILE).is_file() or is_bundle(p)) and p.name not in ids)
        return cls({model_id: load_model(root / model_id, device=device, warmup=warmup) for model_id in ids})

    def get(self, model_id: str, kind: type[M] = object) -> M:  # type: ignore[assignment]
        """The loaded model, or ModelNotLoaded (unknown id, failed load, or not of the expected ``kind``; a
        protocol such as VolumeSegmenter works too)."""
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
