"""The pipelines a job can run, by name.

A pipeline is a callable with a ``name`` and a ``version`` (the model version: output UIDs derive from the
source series, the pipeline name and this version, so a retried run writes the same instances). It takes a
keyword-only :class:`PipelineContext` and returns a :class:`PipelineResult`; it reports progress through
``context.progress(percent)``, which raises when the job was taken away (reset or claimed elsewhere) so a
long step can stop early. It raises a NeuroNovaError for a known failure: a SeriesError or InvalidRequest is
permanent (no retry), anything else is retried with backoff up to the attempt limit.

Read the registry through :func:`get_pipeline` and :func:`pipelines`; both load the built-in pipelines.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from pydicom.dataset import Dataset

from neuronova.errors import InvalidRequest

if TYPE_CHECKING:
    from neuronova.config import Settings
    from neuronova.jobs.model import Job
    from neuronova.store import InstanceStore
    from neuronova.writers.uids import UIDScope


@dataclass(frozen=True)
class PipelineContext:
    job: Job
    store: InstanceStore
    settings: Settings
    #: Report progress in percent (0-100); raises JobLost when the job is no longer this worker's.
    progress: Callable[[float], None]

    @property
    def uids(self) -> UIDScope:
        """Deterministic output UIDs of this run: (source series, pipeline, model version)."""
        # Imported here: the writers package pulls in highdicom, which a worker without models need not load.
        from neuronova.writers.uids import UIDScope

        return UIDScope(self.job.series_uid, self.job.pipeline, self.job.model_version)

    def instance_paths(self, series_uid: str | None = None) -> list[Path]:
        """The series' stored files (the job's series unless ``series_uid``), in the index's order
        (InstanceNumber, then SOP Instance UID)."""
        rows = self.store.index.instances_of_series(series_uid or self.job.series_uid)
        return [self.store.instances_dir / r["path"] for r in rows]

    def role_series(self) -> dict[str, str]:
        """A study job's inputs: role -> series UID (empty for a single-series job)."""
        from neuronova.jobs.model import StudyInputs  # the jobs package imports this module

        inputs = StudyInputs.decode(self.job.input_fingerprint)
        return inputs.by_role if inputs is not None else {}

    def role_paths(self) -> dict[str, list[Path]]:
        """A study job's inputs: role -> the stored files of the series filling it."""
        return {role: self.instance_paths(uid) for role, uid in self.role_series().items()}


@dataclass(frozen=True)
class PipelineResult:
    #: DICOM objects to store and send (highdicom SEG/SR/SC...), UIDs from ``context.uids``.
    datasets: list[Dataset] = field(default_factory=list)
    #: JSON-serialisable outcome shown by the status API (class, volumes, geometry...).
    summary: dict[str, Any] = field(default_factory=dict)


class Pipeline(Protocol):
    name: str
    version: str

    def __call__(self, *, context: PipelineContext) -> PipelineResult: ...


PIPELINES: dict[str, Pipeline] = {}
_builtins_loaded = False
_lock = threading.Lock()


def register(pipeline: Pipeline, *, replace: bool = False) -> Pipeline:
    """Add ``pipeline`` under its name; a second pipeline with a taken name is refused unless ``replace``."""
    if not isinstance(getattr(pipeline, "name", None), str) or not pipeline.name:
        raise TypeError(f"a pipeline needs a non-empty str name, found {getattr(pipeline, 'name', None)!r}")
    if not isinstance(getattr(pipeline, "version", None), str) or not pipeline.version:
        raise TypeError(f"pipeline {pipeline.name!r} needs a non-empty str version")
    with _lock:
        if pipeline.name in PIPELINES and PIPELINES[pipeline.name] is not pipeline and not replace:
            raise ValueError(f"a pipeline named {pipeline.name!r} is already registered")
        PIPELINES[pipeline.name] = pipeline
    return pipeline


def _load_builtins() -> None:
    global _builtins_loaded
    if _builtins_loaded:
        return
    # Imported here: the built-in pipelines import this module's types.
    from neuronova.pipelines.ct_classification import CtClassification
    from neuronova.pipelines.geometry import SeriesGeometry
    from neuronova.pipelines.mri_segmentation import MriSegmentation
    from neuronova.pipelines.mri_tumour_study import MriTumourStudy

    _builtins_loaded = True
    for pipeline in (SeriesGeometry(), MriSegmentation(), MriTumourStudy(), CtClassification()):
        if pipeline.name not in PIPELINES:
            register(pipeline)


def pipelines() -> Mapping[str, Pipeline]:
    _load_builtins()
    return PIPELINES


def get_pipeline(name: str) -> Pipeline:
    _load_builtins()
    try:
        return PIPELINES[name]
    except KeyError:
        raise InvalidRequest(f"no pipeline named {name!r}; known: {', '.join(sorted(PIPELINES)) or 'none'}") from None


def model_pipelines(model_dir: Path | None) -> dict[str, Pipeline]:
    """The model pipelines reading their models (and versions) from ``model_dir`` (None: the demo models)."""
    from neuronova.pipelines.ct_classification import CtClassification
    from neuronova.pipelines.mri_segmentation import MriSegmentation
    from neuronova.pipelines.mri_tumour_study import MriTumourStudy
    from neuronova.predict.pipeline import PredictSegmentation

    return {p.name: p for p in (MriSegmentation(model_dir), MriTumourStudy(model_dir), CtClassification(model_dir),
                                PredictSegmentation(model_dir))}
