"""TID 1500 reports: volumes referencing the SEG, 2D outlines OHIF can draw, classification findings.

tests/viewer opens them in OHIF itself; ``_viewer_measurements`` here restates, in Python, what OHIF 3.13
needs of each measurement (groups merged by Tracking UID, each with a 2D SCOORD naming its image), so a
report a viewer cannot open fails fast without a browser.
"""

from __future__ import annotations

import copy

import highdicom as hd
import numpy as np
import pytest
from pydicom.sr.codedict import codes
from pydicom.uid import Comprehensive3DSRStorage

from neuronova.writers import (
    NOT_FOR_CLINICAL_USE,
    compute_segment_stats,
    write_classification_report,
    write_segmentation,
    write_segmentation_report,
)
from neuronova.writers import codes as nn_codes
from tests.writers.conftest import dicom3tools, save

PROBABILITIES = {"Glioma": 0.81, "Meningioma": 0.11, "No Tumor": 0.05, "Pituitary": 0.03}
REGIONS = [(20.0, 22.0, 14.0, 10.0, 0.92), (40.0, 8.0, 6.0, 6.0, 0.35)]


def _items(dataset):
    """Every content item of an SR tree, depth first."""
    for item in dataset.get("ContentSequence", []):
        yield item
        yield from _items(item)


def _report(sr) -> hd.sr.MeasurementReport:
    """The TID 1500 content of an SR, read back with highdicom."""
    return hd.sr.MeasurementReport.from_sequence([sr])


def _texts(sr):
    return [item.TextValue for item in _items(sr) if item.ValueType == "TEXT"]


def _viewer_measurements(sr) -> dict[str, dict[str, object]]:
    """Measurement groups merged by Tracking UID as OHIF merges them: label lines, SCOORDs and their images.

    OHIF opens a report only when every merged measurement has a 2D SCOORD (at the top of the group or
    INFERRED FROM by a NUM) whose SELECTED FROM IMAGE item names the image; its label lines are the
    group's Comments, then "<measurement>: <value> <unit>".
    """
    imaging = next(i for i in sr.ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == "126010")
    merged: dict[str, dict[str, object]] = {}
    for group in imaging.ContentSequence:
        items = list(group.ContentSequence)
        uid = next(i.UID for i in items if i.ValueType == "UIDREF")
        entry = merged.setdefault(uid, {"labels": [], "scoords": [], "identifier": None})
        entry["identifier"] = entry["identifier"] or next(i.TextValue for i in items if i.ValueType == "TEXT")
        for item in items:
            name = item.ConceptNameCodeSequence[0]
            if item.ValueType == "TEXT" and name.CodeValue == "121106":
                entry["labels"].insert(0, item.TextValue)
            if item.ValueType == "NUM":
                value = item.MeasuredValueSequence[0]
                entry["labels"].append(f"{name.CodeMeaning}: {float(value.NumericValue):.2f} "
                                       f"{value.MeasurementUnitsCodeSequence[0].CodeValue}")
            scoords = [item] if item.ValueType == "SCOORD" else [
                c for c in item.get("ContentSequence", []) if item.ValueType == "NUM" and c.ValueType == "SCOORD"]
            for scoord in scoords:
                image = scoord.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID
                entry["scoords"].append((scoord.GraphicType, np.asarray(scoord.GraphicData).reshape(-1, 2), image))
    return merged


@pytest.fixture
def seg(source_images, labels, label_names, algorithm):
    return write_segmentation(source_images, labels, label_names, algorithm=algorithm, series_number=901)


@pytest.fixture
def stats(source_images, labels, label_names):
    return compute_segment_stats(source_images, labels, label_names)


def _seg_report(source_images, seg, stats, algorithm, **kwargs):
    return write_segmentation_report(source_images, seg, stats, algorithm=algorithm, series_number=902, **kwargs)


def test_segmentation_report_is_valid_with_volumes_and_outlines(tmp_path, source_images, seg, stats, algorithm):
    sr_path = save(_seg_report(source_images, seg, stats, algorithm), tmp_path, "sr")
    seg_path = save(seg, tmp_path, "seg")
    errors, warnings = dicom3tools("dciodvfy", sr_path)
    assert errors == [] and warnings == []
    # the SR, the SEG and the sources agree on patient, study and frame of reference
    source_paths = [save(ds, tmp_path, f"src{i}") for i, ds in enumerate(source_images)]
    errors, _ = dicom3tools("dcentvfy", sr_path, seg_path, *source_paths)
    assert errors == []

    sr = hd.sr.srread(sr_path)
    assert sr.SOPClassUID == Comprehensive3DSRStorage
    report = _report(sr)
    volumes = report.get_volumetric_roi_measurement_groups()
    assert len(volumes) == len(stats)
    for group, stat in zip(volumes, stats, strict=True):
        (volume,) = group.get_measurements(name=codes.SCT.Volume)
        assert volume.value == pytest.approx(stat.volume_ml, abs=1e-4)
        assert volume.unit.value == "ml"
        ref = group.referenced_segment
        assert ref[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == seg.SOPInstanceUID
        assert ref[0].ReferencedSOPSequence[0].ReferencedSegmentNumber == stat.segment_number
        assert group.tracking_identifier == f"{stat.label_name} {stat.volume_ml:.1f} mL"

    # the area of each outline, inferred from the 2D SCOORD on the key slice, in a group sharing the Tracking UID
    areas = report.get_image_measurement_groups()
    assert len(areas) == len(stats)  # every tumour label has voxels in the phantom
    for group, volume_group, stat in zip(areas, volumes, stats, strict=True):
        assert group.tracking_uid == volume_group.tracking_uid
        (area,) = group.get_measurements(name=codes.SCT.Area)
        assert area.value > 0 and area.unit.value == "mm2"
        (roi,) = area.referenced_coordinates
        assert roi.ValueType == "SCOORD" and roi.GraphicType == "POLYLINE"  # 2D, not SCOORD3D
        points = roi.value
        assert np.array_equal(points[0], points[-1]) and len(points) >= 5
        image_ref = roi.ContentSequence[0].ReferencedSOPSequence[0]
        assert image_ref.ReferencedSOPInstanceUID == source_images[stat.key_slice_index].SOPInstanceUID

    tracking = [g.tracking_uid for g in volumes]
    assert len(set(tracking)) == len(tracking)


def test_segmentation_report_opens_in_viewers_with_words_as_labels(source_images, seg, stats, algorithm):
    sr = _seg_report(source_images, seg, stats, algorithm)
    measurements = list(_viewer_measurements(sr).values())
    assert len(measurements) == len(stats)
    for measurement, stat in zip(measurements, stats, strict=True):
        ((graphic, points, image),) = measurement["scoords"]
        assert graphic == "POLYLINE" and image == source_images[stat.key_slice_index].SOPInstanceUID
        np.testing.assert_allclose(points[:-1], stat.contour_xy[:-1], atol=1e-3)
        name = stat.label_name[:1].upper() + stat.label_name[1:]
        assert measurement["labels"][:2] == [name, f"Volume: {stat.volume_ml:.2f} ml"]
        assert measurement["identifier"] == f"{stat.label_name} {stat.volume_ml:.1f} mL"
    # OHIF prints a finding site as "363698007: Brain": the report has none (the SEG carries the anatomy)
    assert not [i for i in _items(sr) if i.ConceptNameCodeSequence[0].CodeValue == "363698007"]
    assert sr.SeriesDescription.startswith("AI SR tumour volumes")


def test_segmentation_report_observer_evidence_and_warning(source_images, seg, stats, algorithm):
    sr = _seg_report(source_images, seg, stats, algorithm)
    (device,) = _report(sr).get_observer_contexts(observer_type=codes.DCM.Device)
    assert device.observer_identifying_attributes.uid == algorithm.device_uid
    assert sr.DeviceUID == algorithm.device_uid and sr.Manufacturer == "NeuroNova"
    evidence = {
        item.ReferencedSOPInstanceUID
        for study in sr.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for item in series.ReferencedSOPSequence
    }
    assert evidence == {seg.SOPInstanceUID, *(ds.SOPInstanceUID for ds in source_images)}
    assert sr.PatientID == source_images[0].PatientID and sr.StudyInstanceUID == source_images[0].StudyInstanceUID
    assert sr.SeriesDescription.endswith(NOT_FOR_CLINICAL_USE)
    assert any(NOT_FOR_CLINICAL_USE in text for text in _texts(sr))


def test_segmentation_report_uids_are_deterministic(source_images, seg, stats, algorithm, clinical_algorithm):
    first = _seg_report(source_images, seg, stats, algorithm)
    again = _seg_report(copy.deepcopy(source_images), copy.deepcopy(seg), stats, algorithm)
    assert (first.SeriesInstanceUID, first.SOPInstanceUID) == (again.SeriesInstanceUID, again.SOPInstanceUID)
    uids = [g.tracking_uid for g in _report(first).get_volumetric_roi_measurement_groups()]
    assert uids == [g.tracking_uid for g in _report(again).get_volumetric_roi_measurement_groups()]
    assert first.SeriesInstanceUID != seg.SeriesInstanceUID
    clinical = _seg_report(source_images, seg, stats, clinical_algorithm)
    assert clinical.SOPInstanceUID != first.SOPInstanceUID
    assert not any(NOT_FOR_CLINICAL_USE in text for text in _texts(clinical))
    assert NOT_FOR_CLINICAL_USE not in clinical.SeriesDescription


def test_empty_segment_is_reported_with_zero_volume_and_no_outline(tmp_path, source_images, labels, label_names,
                                                                  algorithm):
    names = {**label_names, 4: "non-enhancing tumour"}
    seg = write_segmentation(source_images, labels, names, algorithm=algorithm, series_number=901)
    stats = compute_segment_stats(source_images, labels, names)
    assert stats[-1].volume_ml == 0 and stats[-1].contour_xy is None
    sr = _seg_report(source_images, seg, stats, algorithm)
    errors, _ = dicom3tools("dciodvfy", save(sr, tmp_path, "sr"))
    assert errors == []
    # no region to show: said in words, not as a measurement group a viewer could not place
    assert len(_report(sr).get_volumetric_roi_measurement_groups()) == 3
    assert "non-enhancing tumour: 0 mL (no voxels segmented)" in _texts(sr)
    assert all(m["scoords"] for m in _viewer_measurements(sr).values())


def test_segment_stats_as_plain_tuples_and_given_contours(source_images, seg, stats, algorithm):
    square = np.array([[10, 10], [20, 10], [20, 20], [10, 20]], dtype=np.float64)  # closed by the writer
    plain = [tuple(s) for s in stats[:1]]
    plain[0] = (*plain[0][:4], square)
    sr = _seg_report(source_images, seg, plain, algorithm)
    (outline,) = _report(sr).get_image_measurement_groups()
    (area,) = outline.get_measurements(name=codes.SCT.Area)
    assert len(area.referenced_coordinates[0].value) == 5
    spacing = [float(v) for v in source_images[0].PixelSpacing]
    assert area.value == pytest.approx(100 * spacing[0] * spacing[1], rel=1e-3)


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        (lambda s: [s[0]._replace(segment_number=9)], ValueError, "segment 9 is not in the SEG"),
        (lambda s: [s[0]._replace(label_name="tumour")], ValueError, "does not match SEG segment 1"),
        (lambda s: [s[0], s[0]], ValueError, "appears twice"),
        (lambda s: [s[0]._replace(volume_ml=-1.0)], ValueError, "volume_ml"),
        (lambda s: [s[0]._replace(volume_ml=float("nan"))], ValueError, "finite"),
        (lambda s: [s[0]._replace(key_slice_index=12)], ValueError, "key_slice_index"),
        (lambda s: [s[0]._replace(contour_xy=np.array([[0, 0], [100, 0], [100, 5]]))], ValueError, "leaves"),
        (lambda s: [s[0]._replace(contour_xy=[[0, 0], [1, 0], [1, 1]])], TypeError, "numpy array"),
        (lambda s: [s[0]._replace(contour_xy=None)], ValueError, "no outline"),
        (lambda s: [(1, "x")], TypeError, "SegmentStat"),
        (lambda s: [], ValueError, "at least one"),
    ],
)
def test_bad_segment_stats_are_refused(source_images, seg, stats, algorithm, change, error, match):
    with pytest.raises(error, match=match):
        _seg_report(source_images, seg, change(stats), algorithm)


def test_segmentation_report_needs_a_seg(source_images, stats, algorithm):
    with pytest.raises(ValueError, match="must be a Segmentation"):
        _seg_report(source_images, source_images[0], stats, algorithm)
    with pytest.raises(TypeError, match="seg_dataset"):
        _seg_report(source_images, "seg.dcm", stats, algorithm)


def _cls_report(source_images, algorithm, **kwargs):
    args = {"predicted_class": "Glioma", "probabilities": PROBABILITIES, "driving_slice_index": 6,
            "regions": REGIONS, "algorithm": algorithm, "series_number": 903}
    args.update(kwargs)
    return write_classification_report(source_images, **args)


def test_classification_report_codes_finding_probabilities_and_regions(tmp_path, source_images, algorithm):
    path = save(_cls_report(source_images, algorithm), tmp_path, "cls")
    errors, warnings = dicom3tools("dciodvfy", path)
    assert errors == [] and warnings == []
    sr = hd.sr.srread(path)
    driving = source_images[6].SOPInstanceUID

    groups = _report(sr).get_image_measurement_groups()
    classes, regions = groups[: len(PROBABILITIES)], groups[len(PROBABILITIES):]
    assert [g.finding_type.value for g in classes] == ["393564001", "302820008", "111286", "254956000"]
    values = [g.get_measurements(name=codes.DCM.Probability)[0] for g in classes]
    assert [m.value for m in values] == pytest.approx(list(PROBABILITIES.values()))
    assert all(m.unit.value == "1" for m in values)
    # each probability is inferred from the driving slice, given as the outline of the whole slice
    for measurement in values:
        (frame,) = measurement.referenced_coordinates
        assert frame.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == driving
        np.testing.assert_allclose(frame.value, [[0, 0], [64, 0], [64, 64], [0, 64], [0, 0]])
    assert classes[0].tracking_identifier == "Predicted: Glioma 81%"

    assert len(regions) == len(REGIONS)
    for group, (x, y, w, h, importance) in zip(regions, REGIONS, strict=True):
        assert group.finding_type == nn_codes.GLIOMA
        (score,) = group.get_measurements(name=nn_codes.SCORE)
        assert score.value == pytest.approx(importance)
        (box,) = score.referenced_coordinates
        assert box.GraphicType == "POLYLINE"
        np.testing.assert_allclose(box.value, [[x, y], [x + w, y], [x + w, y + h], [x, y + h], [x, y]])
    labels = [m["labels"][0] for m in _viewer_measurements(sr).values()]
    assert labels == ["Glioma (predicted)", "Meningioma", "No Tumor", "Pituitary",
                      "Grad-CAM region 1 (Glioma)", "Grad-CAM region 2 (Glioma)"]
    assert all(m["scoords"] for m in _viewer_measurements(sr).values())
    assert sr.SeriesDescription.startswith("AI SR MR classification")
    texts = _texts(sr)
    assert any("Predicted class: Glioma" in t for t in texts)
    assert any(NOT_FOR_CLINICAL_USE in t for t in texts)
    findings = [i for i in _items(sr) if i.ValueType == "CODE" and i.ConceptNameCodeSequence[0].CodeValue == "121071"]
    assert findings[-1].ConceptCodeSequence[0].CodeValue == "393564001"  # Qualitative Evaluations summary


def test_classification_without_regions_or_tumour(tmp_path, source_images, clinical_algorithm):
    sr = _cls_report(source_images, clinical_algorithm, predicted_class="No Tumor", regions=[])
    errors, _ = dicom3tools("dciodvfy", save(sr, tmp_path, "cls"))
    assert errors == []
    assert len(_report(sr).get_image_measurement_groups()) == len(PROBABILITIES)  # no region groups
    assert _report(sr).get_image_measurement_groups(finding_type=codes.DCM.NoAbnormality)
    assert not any(NOT_FOR_CLINICAL_USE in text for text in _texts(sr))
    again = _cls_report(copy.deepcopy(source_images), clinical_algorithm, predicted_class="No Tumor", regions=[])
    assert again.SOPInstanceUID == sr.SOPInstanceUID


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"predicted_class": "Schwannoma"}, ValueError, "'Schwannoma' has no known code"),
        ({"probabilities": {"Meningioma": 1.0}}, ValueError, "not in probabilities"),
        ({"probabilities": {**PROBABILITIES, "Schwannoma": 0.0}}, ValueError, "'Schwannoma' has no known code"),
        ({"probabilities": {**PROBABILITIES, "Glioma": 1.5}}, ValueError, "<= 1.0"),
        ({"probabilities": {"Glioma": "high"}}, TypeError, "number"),
        ({"probabilities": {}}, ValueError, "empty"),
        ({"driving_slice_index": 12}, ValueError, "driving_slice_index"),
        ({"regions": [(60.0, 0.0, 10.0, 10.0, 1.0)]}, ValueError, "leaves the image"),
        ({"regions": [(0.0, 0.0, 0.0, 10.0, 1.0)]}, ValueError, "positive width"),
        ({"regions": [(0.0, 0.0, 10.0)]}, TypeError, "x, y, w, h, importance"),
        ({"predicted_class": 1}, TypeError, "predicted_class"),
    ],
)
def test_bad_classification_input_is_refused(source_images, algorithm, kwargs, error, match):
    with pytest.raises(error, match=match):
        _cls_report(source_images, algorithm, **kwargs)


def test_class_codes_name_unknown_classes(source_images, algorithm):
    sr = _cls_report(source_images, algorithm, predicted_class="Schwannoma",
                     probabilities={"Schwannoma": 0.7, "Glioma": 0.3}, class_codes={"Schwannoma": codes.SCT.Neoplasm})
    assert _report(sr).get_image_measurement_groups()[0].finding_type == codes.SCT.Neoplasm


def test_indeterminate_classification_is_a_valid_report_that_says_so(tmp_path, source_images, algorithm):
    sr = _cls_report(source_images, algorithm, predicted_class="indeterminate",
                     probabilities={"Glioma": 0.41, "Meningioma": 0.33, "No Tumor": 0.26})
    errors, warnings = dicom3tools("dciodvfy", save(sr, tmp_path, "cls"))
    assert errors == [] and warnings == []
    texts = _texts(sr)
    assert any(t.startswith("Indeterminate: no class reached") and "glioma" in t.lower() for t in texts)
    findings = [i for i in _items(sr) if i.ValueType == "CODE" and i.ConceptNameCodeSequence[0].CodeValue == "121071"]
    assert findings[-1].ConceptCodeSequence[0].CodeValue == "280416009"  # SCT Indeterminate result
    groups = _report(sr).get_image_measurement_groups()
    assert not any(g.tracking_identifier.startswith("Predicted") for g in groups)
    # the regions explain the most probable class
    assert [g.finding_type for g in groups[3:]] == [nn_codes.GLIOMA, nn_codes.GLIOMA]
    assert all(m["scoords"] for m in _viewer_measurements(sr).values())


def test_nothing_segmented_gives_a_valid_report_of_texts(tmp_path, source_images, labels, label_names, algorithm):
    empty = np.zeros_like(labels)
    seg = write_segmentation(source_images, empty, label_names, algorithm=algorithm, series_number=901)
    sr = _seg_report(source_images, seg, compute_segment_stats(source_images, empty, label_names), algorithm)
    errors, warnings = dicom3tools("dciodvfy", save(sr, tmp_path, "sr"))
    assert errors == [] and warnings == []
    # no measurement group (none would have a region a viewer can show), the volumes said in words
    assert not [i for i in _items(sr) if i.ConceptNameCodeSequence[0].CodeValue in ("126010", "125007")]
    assert [t for t in _texts(sr) if "0 mL" in t] == [f"{name}: 0 mL (no voxels segmented)"
                                                      for name in label_names.values()]
