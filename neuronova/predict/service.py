"""The predict API's long-lived parts, one set per app: batchers per model and the task queue.

Built by the router's lifespan (or on the first request, for an app run without lifespan events) and kept
in ``app.state.predict``. The models are the app's: ``app.state.models``, the process's ModelRegistry. Tasks
are jobs of the app's job system (``app.state.jobs``, ``enqueue``, ``pipelines``: the node's), run by its
workers; an app without one answers a task request with 503.
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
from neuronova.predict import classification
from neuronova.predict.batching import MicroBatcher
from neuronova.predict.tasks import PENDING, PIPELINES, RUNNING, TaskQueue

log = logging.getLogger(__name__)

SEGMENTATION = "mri_segmentation"
_create_lock = threading.Lock()


class TasksUnavailable(ModelNotLoaded):
    """503 MODEL_NOT_LOADED (the contract's code for "the model cannot run now"): no job system to run it."""


class PredictService:
    def __init__(self, *, settings: Settings, state: Any) -> None:
        self.settings = settings
        self._state = state
        self._lock = threading.Lock()
        self._batchers: dict[int, tuple[ClassificationModel, MicroBatcher[Any, Any]]] = {}
        self._tasks: TaskQueue | None = None

    @property
    def tasks(self) -> TaskQueue:
        """The task queue over the app's job system (TasksUnavailable, 503, when the app has none)."""
        with self._lock:
            if self._tasks is None:
                jobs, enqueue, pipelines = (getattr(self._state, n, None) for n in ("jobs", "enqueue", "pipelines"))
                if jobs is None or enqueue is None or pipelines is None:
                    raise TasksUnavailable("asynchronous tasks need the node's job queue, which this app does not run")

                def version(kind: str) -> str:
                    pipeline = pipelines.get(PIPELINES[kind])
                    if pipeline is None:
                        raise TasksUnavailable(f"the job system has no pipeline {PIPELINES[kind]!r}")
                    return str(pipeline.version)

                self._tasks = TaskQueue(Path(self.settings.data_dir) / "predict", jobs=jobs, enqueue=enqueue,
                                        versions=version)
            return self._tasks

    @property
    def has_tasks(self) -> bool:
        return all(getattr(self._state, n, None) is not None for n in ("jobs", "enqueue", "pipelines"))

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

    def health(self) -> dict[str, Any]:
        with self._lock:
            batchers = {model.id: batcher.stats.as_dict() for model, batcher in self._batchers.values()}
        return {"batching": {"enabled": self.settings.max_batch_size > 1, "max_batch_size": self.settings.max_batch_size,
                             "wait_ms": self.settings.batch_wait_ms, "models": batchers},
                "tasks": self.tasks.counts(SEGMENTATION) if self.has_tasks else {PENDING: 0, RUNNING: 0}}

    def close(self) -> None:
        with self._lock:
            for _, batcher in self._batchers.values():
                batcher.close()
            self._batchers.clear()


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
