"""Synthetic phantoms as DICOM series: MR Image Storage and CT Image Storage, axial, head first supine.

Every UID is derived from the seed under the 2.25 root (the value of a name-based UUID), so
the same seed always gives the same study, and a test can store it twice to check idempotence. The datasets
carry the geometry a volume loader needs (ImagePositionPatient, ImageOrientationPatient, PixelSpacing,
SliceThickness, SpacingBetweenSlices) and, for CT, RescaleSlope/RescaleIntercept in Hounsfield units.
"""

from __future__ import annotations

import datetime
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage

from neuronova.phantoms.head import Phantom, make_ct_phantom, make_mr_phantom

_AXIAL = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
_CT_INTERCEPT = -1024.0


@dataclass
class SyntheticStudy:
    """One synthetic series (sorted by slice position, bottom to top) and its ground truth."""

    datasets: list[Dataset]
    phantom: Phantom

    @property
    def labels(self) -> np.ndarray:
        """Tumour labels (z, y, x), slice z belonging to ``datasets[z]``."""
        return self.phantom.labels

    @property
    def tumour_class(self) -> str:
        return self.phantom.tumour_class

    @property
    def study_instance_uid(self) -> str:
        return str(self.datasets[0].StudyInstanceUID)

    @property
    def series_instance_uid(self) -> str:
        return str(self.datasets[0].SeriesInstanceUID)


_UID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:neuronova:phantoms")


def _uid(*parts: object) -> str:
    # A 2.25 UID is the decimal value of a UUID (ISO/IEC 9834-8); a name-based UUID makes it repeatable.
    # (pydicom's generate_uid(prefix=None) ignores entropy_srcs and returns a random UUID.)
    return f"2.25.{uuid.uuid5(_UID_NAMESPACE, '/'.join(str(p) for p in parts)).int}"


def phantom_header(*, sop_class: str, sop_uid: str, study_uid: str, study_date: str, seed: int, series_uid: str,
                   series_number: int, modality: str, frame_uid: str, patient_name: str, patient_id: str,
                   accession: str, study_description: str, series_description: str, body_part: str,
                   model_name: str) -> Dataset:
    """One phantom instance's file meta and patient, study, series, frame-of-reference and equipment modules
    (the image modules are the caller's)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.InstanceCreationDate = study_date
    # Patient and study
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.StudyInstanceUID = study_uid
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = study_date
    ds.StudyTime = "120000"
    ds.SeriesTime = ds.ContentTime = f"12{series_number % 60:02d}00"
    ds.ReferringPhysicianName = ""
    ds.StudyID = f"{seed % 10**6}"
    ds.AccessionNumber = accession[:16]
    ds.StudyDescription = study_description
    # Series, frame of reference, equipment
    ds.Modality = modality
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = series_number
    ds.SeriesDescription = series_description
    ds.PatientPosition = "HFS"
    ds.BodyPartExamined = body_part
    ds.FrameOfReferenceUID = frame_uid
    ds.PositionReferenceIndicator = ""
    ds.Manufacturer = "NeuroNova phantom"
    ds.ManufacturerModelName = model_name
    return ds


def phantom_to_datasets(phantom: Phantom, *, patient_id: str | None = None, patient_name: str | None = None,
                        study_instance_uid: str | None = None, series_number: int = 1) -> list[Dataset]:
    """Encode a phantom as one single-frame instance per axial slice (inferior to superior)."""
    modality, seed = phantom.modality, phantom.seed
    nz, ny, nx = phantom.image.shape
    sz, sy, sx = phantom.spacing
    study_uid = study_instance_uid or _uid("study", modality, seed)
    series_uid = _uid("series", study_uid, modality, seed, series_number)
    frame_uid = _uid("frame-of-reference", study_uid, seed)
    study_date = (datetime.date(2024, 1, 1) + datetime.timedelta(days=seed % 366)).strftime("%Y%m%d")
    # Voxel (0, 0, 0) in patient LPS mm; the grid centre sits at the scanner isocentre plus a table offset.
    origin = np.array([-(nx - 1) / 2 * sx, -(ny - 1) / 2 * sy, -(nz - 1) / 2 * sz + 40.0 + seed % 17])

    if modality == "CT":
        stored = np.clip(np.rint(phantom.image - _CT_INTERCEPT), 0, 4095).astype(np.uint16)
    else:
        stored = np.clip(np.rint(phantom.image), 0, 4095).astype(np.uint16)

    datasets = []
    for k in range(nz):
        ds = phantom_header(
            sop_class=CTImageStorage if modality == "CT" else MRImageStorage, sop_uid=_uid("instance", series_uid, k),
            study_uid=study_uid, study_date=study_date, seed=seed, series_uid=series_uid,
            series_number=series_number, modality=modality, frame_uid=frame_uid,
            patient_name=patient_name or f"Phantom^{modality}{seed}",
            patient_id=patient_id or f"PHANTOM-{modality}-{seed:06d}",
            accession=f"NN{modality}{seed:08d}", study_description="Synthetic head phantom - not patient data",
            series_description="Phantom T1 post-contrast axial" if modality == "MR" else "Phantom CT head non-contrast",
            body_part="BRAIN" if modality == "MR" else "HEAD", model_name="neuronova.phantoms")
        # Image
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL" if modality == "CT" else "OTHER"]
        ds.InstanceNumber = k + 1
        ds.AcquisitionNumber = 1
        ds.ImageComments = "Synthetic phantom, not for clinical use"
        position = origin + np.array([0.0, 0.0, k * sz])
        ds.ImagePositionPatient = [round(float(v), 4) for v in position]
        ds.ImageOrientationPatient = _AXIAL
        ds.PixelSpacing = [round(sy, 6), round(sx, 6)]
        ds.SliceThickness = round(sz, 6)
        ds.SpacingBetweenSlices = round(sz, 6)
        ds.SliceLocation = round(float(position[2]), 4)
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = ny, nx
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
        ds.PixelRepresentation = 0
        if modality == "CT":
            ds.RescaleIntercept = _CT_INTERCEPT
            ds.RescaleSlope = 1.0
            ds.RescaleType = "HU"
            ds.KVP = 120
            ds.WindowCenter, ds.WindowWidth = 40, 80
            ds.ConvolutionKernel = "STANDARD"
        else:
            ds.ScanningSequence = "GR"
            ds.SequenceVariant = "SP"
            ds.ScanOptions = ""
            ds.MRAcquisitionType = "3D"
            ds.RepetitionTime = 8.0
            ds.EchoTime = 3.0
            ds.EchoTrainLength = 1
            ds.FlipAngle = 12
            ds.MagneticFieldStrength = 3
            ds.ImagedNucleus = "1H"
            ds.WindowCenter, ds.WindowWidth = 500, 1000
        ds.PixelData = stored[k].tobytes()
        datasets.append(ds)
    return datasets


def make_mr_study(seed: int, *, shape: tuple[int, int, int] = (155, 256, 256),
                  spacing: tuple[float, float, float] | None = None, n_tumours: int | None = None,
                  patient_id: str | None = None) -> SyntheticStudy:
    """An MR head series (T1-like) with 0-3 tumours; ground truth labels in ``.labels``."""
    phantom = make_mr_phantom(seed, shape=shape, spacing=spacing, n_tumours=n_tumours)
    return SyntheticStudy(phantom_to_datasets(phantom, patient_id=patient_id), phantom)


def make_ct_study(seed: int, *, n_slices: int = 40, matrix: int = 256, tumour_class: str | None = None,
                  slice_thickness: float | None = None, patient_id: str | None = None) -> SyntheticStudy:
    """A CT head series in HU with one tumour of ``tumour_class`` ("Glioma", "Meningioma", "Pituitary",
    "No Tumor"; None: drawn from the seed); the class is in ``.tumour_class``."""
    spacing = None
    if slice_thickness is not None:
        pixel = float(np.random.default_rng([seed, 3]).uniform(220.0, 250.0)) / matrix
        spacing = (float(slice_thickness), pixel, pixel)
    phantom = make_ct_phantom(seed, shape=(n_slices, matrix, matrix), spacing=spacing, tumour_class=tumour_class)
    return SyntheticStudy(phantom_to_datasets(phantom, patient_id=patient_id), phantom)


def write_series(datasets: Sequence[Dataset], directory: str | Path) -> list[Path]:
    """Write each dataset as a DICOM Part-10 file ``<SOPInstanceUID>.dcm`` in ``directory``; returns the paths."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for ds in datasets:
        path = directory / f"{ds.SOPInstanceUID}.dcm"
        pydicom.dcmwrite(path, ds, enforce_file_format=True)
        paths.append(path)
    return paths
