"""The predict API's long-lived parts, one set per app: batchers per model and the task manager.

Built by the router's lifespan (or on the first request, for an app run without lifespan events) and kept
in ``app.state.predict``. The models are the app's: ``app.state.models``, the process's ModelRegistry.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

from fastapi import Request

from neuronova.config import Settings
from neuronova.errors import ModelNotLoaded
from neuronova.models.classification import ClassificationModel
from neuronova.models.registry import ModelRegistry
from neuronova.models.segmentation import SegmentationModel
from neuronova.predict import classification, segmentation
from neuronova.predict.batching import MicroBatcher
from neuronova.predict.tasks import TaskManager, TaskRecord

log = logging.getLogger(__name__)

SEGMENTATION = "mri_segmentation"
#: Segmentation tasks run one at a time: one run already uses every core (or the GPU).
TASK_WORKERS = 1
_create_lock = threading.Lock()


class PredictService:
    def __init__(self, *, settings: Settings, state: Any, task_workers: int = TASK_WORKERS) -> None:
        self.settings = settings
        self._state = state
        self._lock = threading.Lock()
        self._batchers: dict[int, tuple[ClassificationModel, MicroBatcher[Any, Any]]] = {}
        self.tasks = TaskManager(Path(settings.data_dir) / "predict", runners={SEGMENTATION: self._run_segmentation},
                                 workers=task_workers)

    @property
    def registry(self) -> ModelRegistry:
        registry = getattr(self._state, "models", None)
        if registry is None:
            raise ModelNotLoaded("the models are not loaded (app.state.models is not set)")
        return registry  # type: ignore[no-any-return]

    def ct_batcher(self, model: ClassificationModel) -> MicroBatcher[classification.Work, classification.Outcome]:
        with self._lock:
            entry = self._batchers.get(id(model))
            if entry is None or entry[0] is not model:
                batcher = classification.make_batcher(model, max_batch_size=self.settings.max_batch_size,
                                                      wait_ms=self.settings.batch_wait_ms)
                entry = self._batchers[id(model)] = (model, batcher)
            return entry[1]

    def _run_segmentation(self, record: TaskRecord, task_dir: Path, progress: Any) -> dict[str, Any]:
        model = self.registry.get(SEGMENTATION, SegmentationModel)
        return segmentation.run_segmentation(
            task_dir=task_dir, description=record.params["input"], model=model, explain=bool(record.params["xai"]),
            xai_budget_s=self.settings.xai_time_budget_seconds, series_number_base=self.settings.series_number_base,
            progress=progress)

    def health(self) -> dict[str, Any]:
        with self._lock:
            batchers = {model.id: batcher.stats.as_dict() for model, batcher in self._batchers.values()}
        return {"batching": {"enabled": self.settings.max_batch_size > 1, "max_batch_size": self.settings.max_batch_size,
                             "wait_ms": self.settings.batch_wait_ms, "models": batchers},
                "tasks": self.tasks.counts()}

    def close(self) -> None:
        with self._lock:
            for _, batcher in self._batchers.values():
                batcher.close()
            self._batchers.clear()
        self.tasks.close()


def service_for(app: Any) -> PredictService:
    """The app's PredictService, created on first use."""
    service = getattr(app.state, "predict", None)
    if service is None:
        with _create_lock:
            service = getattr(app.state, "predict", None)
            if service is None:
                service = app.state.predict = PredictService(settings=app.state.settings, state=app.state)
    return service  # type: ignore[no-any-return]


def get_service(request: Request) -> PredictService:
    """Dependency: the app's PredictService."""
    return service_for(request.app)
