"""The trivial ``series_geometry`` pipeline: what it records from headers (classic and enhanced multi-frame)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom.dataset import Dataset

from neuronova.config import Settings
from neuronova.errors import SeriesError
from neuronova.jobs.model import Job
from neuronova.pipelines.geometry import SeriesGeometry, describe
from neuronova.pipelines.registry import PipelineContext, get_pipeline, pipelines
from neuronova.store import InstanceStore
from tests.factory import make_series
from tests.jobs.helpers import encode


def _coronal(n: int, step: float) -> list[Dataset]:
    datasets = make_series(n)
    for k, ds in enumerate(datasets):
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 0.0, -1.0]
        ds.ImagePositionPatient = [0.0, -float(k) * step, 0.0]  # the normal is (0, -1, 0)
        ds.PixelSpacing = [0.5, 0.8]
    return datasets


def test_describes_a_coronal_stack() -> None:
    s = describe(_coronal(6, 2.5))
    assert s["orientation"] == "coronal" and s["orientation_consistent"] is True
    assert s["slice_count"] == 6 and s["slice_spacing_mm"] == 2.5 and s["slice_spacing_uniform"] is True
    assert s["pixel_spacing_mm"] == [0.5, 0.8]
    # width: 64 columns x 0.8 mm; height: 64 rows x 0.5 mm; depth: 5 gaps x 2.5 + one slice
    assert s["extent_mm"] == [51.2, 32.0, 15.0]


def test_reports_gaps_duplicates_and_mixed_orientation() -> None:
    gap = _coronal(5, 2.0)
    gap[4].ImagePositionPatient = [0.0, -12.0, 0.0]
    assert describe(gap)["slice_spacing_uniform"] is False
    dup = _coronal(4, 2.0)
    dup[3].ImagePositionPatient = dup[2].ImagePositionPatient
    assert describe(dup)["duplicate_positions"] == 1
    mixed = _coronal(3, 2.0)
    mixed[1].ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    assert describe(mixed)["orientation"] == "mixed"


def test_describes_an_enhanced_multiframe_instance() -> None:
    ds = Dataset()
    ds.Modality, ds.Rows, ds.Columns, ds.NumberOfFrames = "MR", 32, 32, 3
    measures, orientation = Dataset(), Dataset()
    measures.PixelSpacing, measures.SliceThickness = [1.0, 1.0], 3.0
    orientation.ImageOrientationPatient = [0.0, 1.0, 0.0, 0.0, 0.0, -1.0]
    shared = Dataset()
    shared.PixelMeasuresSequence, shared.PlaneOrientationSequence = [measures], [orientation]
    ds.SharedFunctionalGroupsSequence = [shared]
    frames = []
    for k in range(3):
        position, group = Dataset(), Dataset()
        position.ImagePositionPatient = [float(k) * 3.0, 0.0, 0.0]
        group.PlanePositionSequence = [position]
        frames.append(group)
    ds.PerFrameFunctionalGroupsSequence = frames
    s = describe([ds])
    assert (s["orientation"], s["instances"], s["slice_count"], s["slice_spacing_mm"]) == ("sagittal", 1, 3, 3.0)
    assert s["slice_thickness_mm"] == 3.0


def test_no_geometry_is_a_series_error() -> None:
    ds = Dataset()
    ds.Modality = "SR"
    with pytest.raises(SeriesError, match="ImagePositionPatient"):
        describe([ds])


def test_runs_as_a_registered_pipeline_on_stored_files(tmp_path: Path) -> None:
    assert isinstance(get_pipeline("series_geometry"), SeriesGeometry) and "series_geometry" in pipelines()
    store = InstanceStore(tmp_path / "data")
    try:
        datasets = _coronal(4, 1.5)
        for ds in datasets:
            store.put(encode(ds))
        job = Job.new(study_uid=datasets[0].StudyInstanceUID, series_uid=datasets[0].SeriesInstanceUID,
                      pipeline="series_geometry", model_version="1", input_fingerprint="x")
        seen: list[float] = []
        result = SeriesGeometry()(context=PipelineContext(job=job, store=store, settings=Settings(data_dir=tmp_path),
                                                          progress=seen.append))
        assert result.datasets == [] and result.summary["orientation"] == "coronal"
        assert result.summary["slice_count"] == 4 and seen and seen[-1] == 90.0
        empty = Job.new(study_uid="1.2", series_uid="1.2.3", pipeline="series_geometry", model_version="1",
                        input_fingerprint="x")
        with pytest.raises(SeriesError, match="no stored instances"):
            SeriesGeometry()(context=PipelineContext(job=empty, store=store, settings=Settings(data_dir=tmp_path),
                                                     progress=seen.append))
    finally:
        store.close()
