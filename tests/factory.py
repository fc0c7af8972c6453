"""Small DICOM instances for the ingest tests: copies of pydicom's MR_small with fresh UIDs and geometry."""

from __future__ import annotations

import copy
from pathlib import Path

import pydicom
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

_TEMPLATE = pydicom.dcmread(get_testdata_file("MR_small.dcm"))


def make_series(n: int, *, study_uid: str | None = None, series_uid: str | None = None,
                patient_id: str = "NN-TEST-1", patient_name: str = "Test^Patient",
                study_date: str = "20260101", series_description: str = "AX T1", modality: str = "MR",
                accession: str = "ACC1") -> list[Dataset]:
    study_uid = study_uid or generate_uid()
    series_uid = series_uid or generate_uid()
    out = []
    for i in range(n):
        ds = copy.deepcopy(_TEMPLATE)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.PatientID, ds.PatientName, ds.StudyDate = patient_id, patient_name, study_date
        ds.SeriesDescription, ds.Modality, ds.AccessionNumber = series_description, modality, accession
        ds.InstanceNumber = i + 1
        ds.ImagePositionPatient = [0.0, 0.0, float(i) * 5.0]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        out.append(ds)
    return out


def write_series(datasets: list[Dataset], directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for ds in datasets:
        path = directory / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
