"""Grad-CAM Parametric Maps: valid (dciodvfy), float values that round-trip, the source's geometry, a
real-world value mapping with a unit, deterministic UIDs, the algorithm's identity."""

from __future__ import annotations

import copy

import numpy as np
import pydicom
import pytest

from neuronova.phantoms.dicom import make_ct_study
from neuronova.writers.common import MANUFACTURER
from neuronova.writers.pmap import write_parametric_map
from tests.writers.conftest import dicom3tools, save


def _heat(shape: tuple[int, ...]) -> np.ndarray:
    """A blob in [0, 1], zero at the borders (as a body-restricted map), different on every slice."""
    grids = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape[1:]], indexing="ij")
    blob = np.clip(1.0 - sum(g**2 for g in grids), 0.0, 1.0)
    return np.stack([blob * (k + 1) / shape[0] for k in range(shape[0])]).astype(np.float32)


def test_volume_map_is_valid_and_carries_the_values_on_the_source_geometry(tmp_path, source_images, algorithm):
    values = _heat((len(source_images), 64, 64))
    pmap = write_parametric_map(source_images, values, algorithm=algorithm, series_number=906, pipeline="mri")
    path = save(pmap, tmp_path, "pmap")
    errors, warnings = dicom3tools("dciodvfy", path)
    assert errors == [] and warnings == []
    read = pydicom.dcmread(path)
    assert read.SOPClassUID == "1.2.840.10008.5.1.4.1.1.30"  # Parametric Map Storage
    assert read.NumberOfFrames == len(source_images)
    assert "FloatPixelData" in read and "PixelData" not in read
    assert read.FrameOfReferenceUID == source_images[0].FrameOfReferenceUID
    assert read.StudyInstanceUID == source_images[0].StudyInstanceUID
    assert read.SeriesDescription == "AI Grad-CAM map - NOT FOR CLINICAL USE"
    # highdicom stores the frames in spatial order; each lies on, and refers to, the slice its values came from
    by_uid = {ds.SOPInstanceUID: k for k, ds in enumerate(source_images)}
    for j, frame in enumerate(read.PerFrameFunctionalGroupsSequence):
        k = by_uid[frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID]
        np.testing.assert_array_equal(read.pixel_array[j], values[k])
        position = frame.PlanePositionSequence[0].ImagePositionPatient
        np.testing.assert_allclose([float(v) for v in position],
                                   [float(v) for v in source_images[k].ImagePositionPatient])
    assert sorted(by_uid.values()) == list(range(len(source_images)))
    shared = read.SharedFunctionalGroupsSequence[0]
    spacing = shared.PixelMeasuresSequence[0].PixelSpacing
    np.testing.assert_allclose([float(v) for v in spacing], [float(v) for v in source_images[0].PixelSpacing])
    mapping = shared.RealWorldValueMappingSequence[0]
    assert mapping.LUTLabel == "Grad-CAM"
    unit = mapping.MeasurementUnitsCodeSequence[0]
    assert (unit.CodeValue, unit.CodingSchemeDesignator) == ("1", "UCUM")
    assert float(mapping.DoubleFloatRealWorldValueFirstValueMapped) == 0.0
    assert float(mapping.DoubleFloatRealWorldValueLastValueMapped) == 1.0
    voi = shared.FrameVOILUTSequence[0]
    assert float(voi.WindowCenter) == 0.5 and float(voi.WindowWidth) == 1.0
    # the algorithm as the other writers name it
    assert read.Manufacturer == MANUFACTURER and read.DeviceSerialNumber == algorithm.model_sha256
    assert read.DeviceUID == algorithm.device_uid
    [equipment] = [e for e in read.ContributingEquipmentSequence if e.get("ManufacturerModelName") == algorithm.name]
    assert equipment.Manufacturer == MANUFACTURER and "NOT FOR CLINICAL USE" in equipment.ContributionDescription
    assert read.BodyPartExamined == source_images[0].BodyPartExamined
    assert read.ContentLabel == "GRADCAM" and "NOT FOR CLINICAL USE" in read.DerivationDescription


def test_map_of_one_ct_slice_is_valid_and_uids_are_deterministic(tmp_path, algorithm, clinical_algorithm):
    study = make_ct_study(3, n_slices=6, matrix=48)
    driving = [study.datasets[2]]
    values = _heat((1, 48, 48))
    first = write_parametric_map(driving, values, algorithm=algorithm, series_number=907, pipeline="ct")
    errors, warnings = dicom3tools("dciodvfy", save(first, tmp_path, "ct"))
    assert errors == [] and warnings == []
    again = write_parametric_map(copy.deepcopy(driving), values * 0.5, algorithm=algorithm, series_number=907,
                                 pipeline="ct")
    assert (again.SOPInstanceUID, again.SeriesInstanceUID) == (first.SOPInstanceUID, first.SeriesInstanceUID)
    other = write_parametric_map(driving, values, algorithm=clinical_algorithm, series_number=907, pipeline="ct",
                                 series_description="AI Grad-CAM CT map")
    assert other.SOPInstanceUID != first.SOPInstanceUID  # another model version: another result
    assert other.SeriesDescription == "AI Grad-CAM CT map"  # validated weights: no warning appended
    assert "NOT FOR CLINICAL USE" not in other.DerivationDescription


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        (lambda v, s: (v.astype(np.uint8), s), TypeError, "floating point"),
        (lambda v, s: (v[:-1], s), ValueError, "shape"),
        (lambda v, s: (v * 2.0, s), ValueError, r"\[0, 1\]"),
        (lambda v, s: (np.where(v > 0.5, np.nan, v).astype(np.float32), s), ValueError, "finite"),
        (lambda v, s: (v.tolist(), s), TypeError, "numpy array"),
        (lambda v, s: (v, []), ValueError, "empty"),
    ],
)
def test_bad_inputs_are_refused(source_images, algorithm, change, error, match):
    values, sources = change(_heat((len(source_images), 64, 64)), source_images)
    with pytest.raises(error, match=match):
        write_parametric_map(sources, values, algorithm=algorithm, series_number=906)


def test_a_source_without_geometry_is_refused(source_images, algorithm):
    del source_images[0].ImagePositionPatient
    with pytest.raises(ValueError, match="ImagePositionPatient"):
        write_parametric_map(source_images, _heat((len(source_images), 64, 64)), algorithm=algorithm, series_number=9)
