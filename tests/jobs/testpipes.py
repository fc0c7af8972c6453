"""Pipelines for tests only: importing this module registers them (worker subprocesses get it with
``--pipeline-module tests.jobs.testpipes``); in-process tests pass ``TEST_PIPELINES`` explicitly.

Each run appends ``<event> <job_id> <pid>`` lines to ``<data_dir>/runs.log`` (O_APPEND: whole lines from
several processes), so a test counts how often a job really ran. ``<data_dir>/testpipes.json`` sets the
sleep of ``test_slow_sc``.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

from neuronova.errors import ModelInferenceError, SeriesError
from neuronova.pipelines.registry import PipelineContext, PipelineResult, register

SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"


def log_event(context: PipelineContext, event: str) -> None:
    line = f"{event} {context.job.job_id} {os.getpid()}\n".encode()
    fd = os.open(Path(context.settings.data_dir) / "runs.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def read_runs(data_dir: Path) -> list[tuple[str, str, int]]:
    path = Path(data_dir) / "runs.log"
    if not path.exists():
        return []
    return [(e, j, int(p)) for e, j, p in (line.split() for line in path.read_text().splitlines())]


def tiny_secondary_capture(context: PipelineContext) -> Dataset:
    """A deterministic 8x8 Secondary Capture of the source series: same UIDs on every run."""
    source = pydicom.dcmread(context.instance_paths()[0], stop_before_pixels=True)
    uids = context.uids
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = SECONDARY_CAPTURE
    ds.file_meta.MediaStorageSOPInstanceUID = uids.instance("sc", 1)
    ds.SOPClassUID = SECONDARY_CAPTURE
    ds.SOPInstanceUID = uids.instance("sc", 1)
    ds.StudyInstanceUID = source.StudyInstanceUID
    ds.SeriesInstanceUID = uids.series("sc")
    ds.PatientID, ds.PatientName = source.get("PatientID", ""), source.get("PatientName", "")
    ds.Modality, ds.ConversionType, ds.SeriesNumber, ds.InstanceNumber = "OT", "WSD", 9001, 1
    ds.SeriesDescription = "TEST ONLY"
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.Rows, ds.Columns = 1, "MONOCHROME2", 8, 8
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = np.arange(64, dtype=np.uint8).tobytes()
    return ds


class SlowSecondaryCapture:
    name = "test_slow_sc"
    version = "t1"

    def __call__(self, *, context: PipelineContext) -> PipelineResult:
        log_event(context, "start")
        cfg_path = Path(context.settings.data_dir) / "testpipes.json"
        sleep = float(json.loads(cfg_path.read_text()).get("sleep", 0)) if cfg_path.exists() else 0.0
        for step in range(10):
            time.sleep(sleep / 10)
            context.progress(10.0 * (step + 1))
        ds = tiny_secondary_capture(context)
        log_event(context, "finish")
        return PipelineResult([ds], {"slept": sleep})


class CountRuns:
    name = "test_count"
    version = "t1"

    def __call__(self, *, context: PipelineContext) -> PipelineResult:
        log_event(context, "start")
        time.sleep(0.005)
        log_event(context, "finish")
        return PipelineResult([], {"pid": os.getpid()})


class Flaky:
    """Fails (transiently) on its first two attempts of a run."""

    name = "test_flaky"
    version = "t1"

    def __call__(self, *, context: PipelineContext) -> PipelineResult:
        log_event(context, "start")
        if context.job.attempts < 3:
            raise ModelInferenceError(f"flaky failure on attempt {context.job.attempts}")
        return PipelineResult([], {"attempt": context.job.attempts})


class BadSeries:
    name = "test_bad_series"
    version = "t1"

    def __call__(self, *, context: PipelineContext) -> PipelineResult:
        log_event(context, "start")
        raise SeriesError("slice 3 is missing")


class Crashes:
    name = "test_crashes"
    version = "t1"

    def __call__(self, *, context: PipelineContext) -> PipelineResult:
        log_event(context, "start")
        raise RuntimeError("a bug")


TEST_PIPELINES = {p.name: p for p in (SlowSecondaryCapture(), CountRuns(), Flaky(), BadSeries(), Crashes())}
for _pipeline in TEST_PIPELINES.values():
    register(_pipeline, replace=True)
