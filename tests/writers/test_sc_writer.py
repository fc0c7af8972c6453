"""Secondary Capture overlays: the picture, the burned-in warning, the DICOM wrapping."""

from __future__ import annotations

import copy

import numpy as np
import pydicom
import pytest

from neuronova.writers import render_overlay, write_overlay
from neuronova.writers.sc import patient_orientation
from tests.writers.conftest import dicom3tools, save

KEY = 6


def _gray(source_images):
    return source_images[KEY].pixel_array


def test_render_overlay_blends_heatmap_and_outline(source_images, labels):
    gray = _gray(source_images)
    plain = render_overlay(gray)
    assert plain.shape == (*gray.shape, 3) and plain.dtype == np.uint8
    assert (plain[..., 0] == plain[..., 1]).all() and (plain[..., 1] == plain[..., 2]).all()  # grey only

    heat = np.zeros(gray.shape)
    heat[10:20, 10:20] = 1.0
    mask = labels[KEY] > 0
    assert mask.any()
    rgb = render_overlay(gray, heat, mask, window=(500, 1000), alpha=0.5)
    hot = rgb[12:18, 12:18].astype(int)
    assert (hot[..., 0] > hot[..., 2] + 30).all()  # jet's top end is red
    outline = (rgb == (255, 255, 0)).all(axis=2)
    assert outline.any() and not (outline & ~mask).any()  # drawn on the mask's own border pixels
    interior = mask & ~outline
    if interior.any():
        assert not outline[interior].any()


def test_heatmap_is_transparent_where_low_and_keeps_the_grey_image_where_high(source_images):
    gray = _gray(source_images)
    plain = render_overlay(gray, window=(500, 1000)).astype(int)
    heat = np.zeros(gray.shape)
    heat[:, 32:] = np.linspace(0.0, 1.0, 32)  # a ramp to the right half, nothing on the left
    rgb = render_overlay(gray, heat, window=(500, 1000)).astype(int)
    low = heat <= 0.2
    np.testing.assert_array_equal(rgb[low], plain[low])  # no tint at all where the map is low
    # at the peak the colour covers at most 60 %: the anatomy's contrast shows through the heat
    hot = heat >= 0.99
    grey_contrast = np.ptp(plain[hot][:, 0])
    assert grey_contrast > 0 and np.ptp(rgb[hot][:, 1]) >= 0.3 * grey_contrast
    assert (rgb[hot][:, 0] > rgb[hot][:, 2] + 20).all()  # red over the hottest pixels


def test_render_overlay_windowing_and_note(source_images):
    gray = _gray(source_images)
    narrow = render_overlay(gray, window=(-10, 1))  # everything above the window: white
    assert (narrow == 255).all()
    noted = render_overlay(gray, note="Grad-CAM layer4")
    assert not np.array_equal(noted[-12:], render_overlay(gray)[-12:])  # text drawn at the bottom
    assert np.array_equal(noted[:20], render_overlay(gray)[:20])


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"heat": np.full((64, 64), 1.5)}, ValueError, r"\[0, 1\]"),
        ({"heat": np.zeros((32, 32))}, ValueError, "shape of gray2d"),
        ({"outline_mask": np.zeros((64,), bool)}, ValueError, "2D"),
        ({"window": (40, 0)}, ValueError, "positive width"),
        ({"window": 40}, TypeError, "center, width"),
        ({"alpha": 2.0}, ValueError, "alpha"),
    ],
)
def test_render_overlay_refuses_bad_input(source_images, kwargs, error, match):
    with pytest.raises(error, match=match):
        render_overlay(_gray(source_images), **kwargs)


def test_demo_overlay_is_valid_with_burned_in_warning(tmp_path, source_images, labels, algorithm):
    source = source_images[KEY]
    rgb = render_overlay(_gray(source_images), None, labels[KEY] > 0)
    sc = write_overlay(source, rgb, algorithm=algorithm, series_number=904, instance_number=1)
    path = save(sc, tmp_path, "sc")
    errors, warnings = dicom3tools("dciodvfy", path)
    assert errors == [] and warnings == []

    read = pydicom.dcmread(path)
    pixels = read.pixel_array
    assert pixels.shape == rgb.shape and read.PhotometricInterpretation == "RGB"
    assert read.BurnedInAnnotation == "YES"
    changed = (pixels != rgb).any(axis=2)
    assert changed[:16].sum() > 20 and not changed[32:].any()  # the warning sits in the top band only
    red = (pixels[..., 0] > 200) & (pixels[..., 1] < 100)
    assert red[:16].sum() > 5
    # what tells the series apart comes first; short enough for a viewer's series list
    assert read.SeriesDescription == "AI Grad-CAM MR - NOT FOR CLINICAL USE"
    named = write_overlay(source, rgb, algorithm=algorithm, series_number=904, instance_number=1,
                          series_description="AI Grad-CAM tumour")
    assert named.SeriesDescription == "AI Grad-CAM tumour - NOT FOR CLINICAL USE"

    (ref,) = read.SourceImageSequence
    assert (ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID) == (source.SOPClassUID, source.SOPInstanceUID)
    assert ref.PurposeOfReferenceCodeSequence[0].CodeValue == "121322"
    for keyword in ("PatientID", "PatientName", "StudyInstanceUID", "AccessionNumber", "BodyPartExamined"):
        assert read[keyword].value == source[keyword].value, keyword
    assert list(read.PatientOrientation) == ["L", "P"]
    assert read.DeviceUID == algorithm.device_uid
    assert any(e.Manufacturer == "NeuroNova" for e in read.ContributingEquipmentSequence)
    assert [float(v) for v in read.PixelSpacing] == [float(v) for v in source.PixelSpacing]


def test_clinical_overlay_keeps_pixels_and_uids_are_deterministic(source_images, algorithm, clinical_algorithm):
    rgb = render_overlay(_gray(source_images))
    sc = write_overlay(source_images[KEY], rgb, algorithm=clinical_algorithm, series_number=904, instance_number=2)
    assert np.array_equal(sc.pixel_array, rgb) and sc.BurnedInAnnotation == "NO"
    again = write_overlay(copy.deepcopy(source_images[KEY]), rgb, algorithm=clinical_algorithm, series_number=904,
                          instance_number=2)
    assert (again.SeriesInstanceUID, again.SOPInstanceUID) == (sc.SeriesInstanceUID, sc.SOPInstanceUID)
    second = write_overlay(source_images[KEY], rgb, algorithm=clinical_algorithm, series_number=904,
                           instance_number=3)
    assert second.SeriesInstanceUID == sc.SeriesInstanceUID and second.SOPInstanceUID != sc.SOPInstanceUID
    demo = write_overlay(source_images[KEY], rgb, algorithm=algorithm, series_number=904, instance_number=2)
    assert demo.SOPInstanceUID != sc.SOPInstanceUID


def test_overlay_of_a_minimal_oblique_source_is_valid(tmp_path, source_images):
    """No Patient Position or Body Part Examined, an oblique plane: still zero dciodvfy errors."""
    from neuronova.writers import AlgorithmInfo

    source = source_images[KEY]
    del source.PatientPosition, source.BodyPartExamined
    source.ImageOrientationPatient = [0.94, 0.34, 0.0, 0.0, 0.26, -0.97]
    assert patient_orientation(source) == ("L", "F")
    algorithm = AlgorithmInfo("UNet", "1", "0" * 64)
    sc = write_overlay(source, render_overlay(source.pixel_array), algorithm=algorithm, series_number=9,
                       instance_number=1)
    errors, _ = dicom3tools("dciodvfy", save(sc, tmp_path, "sc"))
    assert errors == []


@pytest.mark.parametrize(
    ("rgb", "kwargs", "error", "match"),
    [
        (np.zeros((64, 64, 3), np.float32), {}, TypeError, "uint8"),
        (np.zeros((64, 64, 4), np.uint8), {}, ValueError, "shape"),
        (np.zeros((64, 64), np.uint8), {}, ValueError, "3D"),
        (np.zeros((64, 64, 3), np.uint8), {"instance_number": 0}, ValueError, "instance_number"),
        (np.zeros((64, 64, 3), np.uint8), {"source_image": "x"}, TypeError, "source_image"),
    ],
)
def test_write_overlay_refuses_bad_input(source_images, algorithm, rgb, kwargs, error, match):
    args = {"source_image": source_images[KEY], "algorithm": algorithm, "series_number": 9, "instance_number": 1}
    args.update(kwargs)
    with pytest.raises(error, match=match):
        write_overlay(args.pop("source_image"), rgb, **args)
