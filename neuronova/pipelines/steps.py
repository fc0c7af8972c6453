"""Steps shared by the DICOM pipelines: read the series, find the model, name the algorithm."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from functools import cached_property
from pathlib import Path
from typing import TypeVar

import pydicom
from pydicom.errors import InvalidDicomError

from neuronova.errors import ModelNotLoaded, SeriesError, XAIGenerationError
from neuronova.models.base import LoadedModel
from neuronova.models.registry import DEFAULT_MODEL_DIR, read_model_version
from neuronova.models.shared import shared_registry
from neuronova.pipelines.registry import PipelineContext
from neuronova.pipelines.volume import Volume, load_series
from neuronova.writers.common import AlgorithmInfo

log = logging.getLogger(__name__)

M = TypeVar("M", bound=LoadedModel)
T = TypeVar("T")


def read_volume(context: PipelineContext) -> Volume:
    """The job's series as a volume sorted along its normal (SeriesError when it is not one consistent volume)."""
    paths = context.instance_paths()
    if not paths:
        raise SeriesError("the series has no stored instance")
    try:
        datasets = [pydicom.dcmread(p) for p in paths]
    except (InvalidDicomError, OSError) as exc:
        raise SeriesError(f"a stored instance cannot be read: {exc}") from exc
    return load_series(datasets)


def model_for(context: PipelineContext, model_id: str, kind: type[M]) -> M:
    s = context.settings
    return shared_registry(s.model_dir, device=s.device).get(model_id, kind)


def algorithm_info(model: LoadedModel, *, name: str) -> AlgorithmInfo:
    return AlgorithmInfo(name=name, version=model.version, model_sha256=model.model_hash,
                         demo=bool(model.metadata.not_for_clinical_use))


def try_explain(what: str, fn: Callable[[], T]) -> tuple[T | None, dict[str, str] | None]:
    """Run an explanation; a failure costs the explanation, never the prediction."""
    try:
        return fn(), None
    except XAIGenerationError as exc:
        log.warning("%s explanation failed: %s", what, exc)
        return None, {"code": exc.code, "message": exc.message}


class ModelPipeline:
    """A pipeline named for its model; its version is the model's (read from metadata.json, no loading)."""

    name: str = ""
    model_id: str = ""

    def __init__(self, model_dir: Path | None = None) -> None:
        self.model_dir = model_dir

    @cached_property
    def version(self) -> str:
        try:
            return read_model_version((self.model_dir or DEFAULT_MODEL_DIR) / self.model_id)  # any layout (bundles too)
        except Exception as exc:  # a missing model is reported by the job (MODEL_NOT_LOADED), not here
            log.warning("model %s metadata unreadable: %s", self.model_id, exc)
            return "unavailable"

    def load(self, context: PipelineContext, kind: type[M], timings: dict[str, float]) -> tuple[Volume, M]:
        """The first steps of every model pipeline: the series as a volume, and this pipeline's model."""
        t = time.perf_counter()
        volume = read_volume(context)
        model = model_for(context, self.model_id, kind)
        self.require_version(model)
        timings["load_s"] = time.perf_counter() - t
        context.progress(20)
        return volume, model

    def require_version(self, model: LoadedModel) -> None:
        if model.version != self.version:
            # A model replaced under a running node: its outputs would not match the job's UIDs.
            raise ModelNotLoaded(f"model {self.model_id} is {model.version}, the job expects {self.version}")
