"""SEG writer: valid, deterministic, referencing its source, and the mask survives a round trip."""

from __future__ import annotations

import copy

import highdicom as hd
import numpy as np
import pytest
from pydicom.sr.codedict import codes

from neuronova.writers import NOT_FOR_CLINICAL_USE, segment_numbers, write_segmentation
from neuronova.writers import codes as nn_codes
from tests.writers.conftest import dicom3tools, save


def _read_back(path, source_images, label_names):
    """The SEG as a label volume in source order, label values restored."""
    seg = hd.seg.segread(path)
    uids = [ds.SOPInstanceUID for ds in source_images]
    numbers = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=uids, combine_segments=True, assert_missing_frames_are_empty=True
    )
    values = np.zeros(len(label_names) + 1, np.uint8)  # segment number -> label value
    for value, number in segment_numbers(label_names).items():
        values[number] = value
    return seg, values[numbers]


def test_seg_is_valid_and_round_trips(tmp_path, source_images, labels, label_names, algorithm):
    seg = write_segmentation(source_images, labels, label_names, algorithm=algorithm, series_number=901)
    path = save(seg, tmp_path, "seg")
    errors, warnings = dicom3tools("dciodvfy", path)
    assert errors == [] and warnings == []

    read, volume = _read_back(path, source_images, label_names)
    np.testing.assert_array_equal(volume, labels)
    assert read.SegmentationType == "BINARY"
    # every frame names its source slice and sits at that slice's position: viewers cannot shift it
    positions = {ds.SOPInstanceUID: [float(v) for v in ds.ImagePositionPatient] for ds in source_images}
    assert read.NumberOfFrames < len(source_images) * len(label_names)  # empty frames omitted
    for frame in read.PerFrameFunctionalGroupsSequence:
        uid = frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        assert [float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient] == positions[uid]


def test_seg_references_identity_and_algorithm(source_images, labels, label_names, algorithm):
    seg = write_segmentation(source_images, labels, label_names, algorithm=algorithm, series_number=901,
                             series_description="Tumour segmentation")
    src = source_images[0]
    for keyword in ("PatientID", "PatientName", "StudyInstanceUID", "AccessionNumber", "StudyDate",
                    "FrameOfReferenceUID"):
        assert seg[keyword].value == src[keyword].value, keyword
    (series,) = seg.ReferencedSeriesSequence
    assert series.SeriesInstanceUID == src.SeriesInstanceUID
    assert [i.ReferencedSOPInstanceUID for i in series.ReferencedInstanceSequence] == [
        ds.SOPInstanceUID for ds in source_images
    ]
    assert seg.SeriesNumber == 901 and seg.InstanceNumber == 1
    assert seg.SeriesDescription == f"Tumour segmentation - {NOT_FOR_CLINICAL_USE}"
    assert seg.Manufacturer == "NeuroNova" and seg.DeviceUID == algorithm.device_uid
    ours = [e for e in seg.ContributingEquipmentSequence if e.Manufacturer == "NeuroNova"]
    assert len(ours) == 1 and ours[0].ManufacturerModelName == algorithm.name

    by_label = {s.SegmentLabel: s for s in seg.SegmentSequence}
    assert list(by_label) == [label_names[v] for v in sorted(label_names)]
    for label, segment in by_label.items():
        assert segment.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "49755003"
        expected = nn_codes.segment_type(label)
        assert segment.SegmentedPropertyTypeCodeSequence[0].CodeValue == expected.value
        assert segment.SegmentAlgorithmType == "AUTOMATIC"
        (ident,) = segment.SegmentationAlgorithmIdentificationSequence
        assert (ident.AlgorithmName, ident.AlgorithmVersion) == (algorithm.name, algorithm.version)
        assert "RecommendedDisplayCIELabValue" in segment
    assert by_label["enhancing tumour"].SegmentedPropertyTypeCodeSequence[0].CodeValue == "C113842"
    assert by_label["edema"].SegmentedPropertyTypeCodeSequence[0].CodeValue == codes.SCT.Edema.value


def test_seg_uids_are_deterministic(source_images, labels, label_names, algorithm, clinical_algorithm):
    first = write_segmentation(source_images, labels, label_names, algorithm=algorithm, series_number=5)
    again = write_segmentation(copy.deepcopy(source_images), labels.copy(), label_names, algorithm=algorithm,
                               series_number=5)
    assert (first.SeriesInstanceUID, first.SOPInstanceUID) == (again.SeriesInstanceUID, again.SOPInstanceUID)
    assert [s.TrackingUID for s in first.SegmentSequence] == [s.TrackingUID for s in again.SegmentSequence]
    other = write_segmentation(source_images, labels, label_names, algorithm=clinical_algorithm, series_number=5)
    assert other.SeriesInstanceUID != first.SeriesInstanceUID and other.SOPInstanceUID != first.SOPInstanceUID
    assert NOT_FOR_CLINICAL_USE not in other.SeriesDescription
    piped = write_segmentation(source_images, labels, label_names, algorithm=algorithm, series_number=5,
                               pipeline="other-pipeline")
    assert piped.SeriesInstanceUID != first.SeriesInstanceUID


def test_empty_label_keeps_its_segment_without_frames(tmp_path, source_images, labels, label_names, algorithm):
    names = {**label_names, 4: "non-enhancing tumour"}  # present in no voxel; BraTS-style gap in values
    seg = write_segmentation(source_images, labels, names, algorithm=algorithm, series_number=7)
    errors, _ = dicom3tools("dciodvfy", save(seg, tmp_path, "seg"))
    assert errors == []
    assert len(seg.SegmentSequence) == 4
    assert seg.SegmentSequence[3].SegmentLabel == "non-enhancing tumour"
    framed = {int(f.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
              for f in seg.PerFrameFunctionalGroupsSequence}
    assert framed == {1, 2, 3}
    _, volume = _read_back(tmp_path / "seg.dcm", source_images, names)
    np.testing.assert_array_equal(volume, labels)


def test_all_empty_labels_still_write_a_valid_seg(tmp_path, source_images, labels, label_names, algorithm):
    seg = write_segmentation(source_images, np.zeros_like(labels), label_names, algorithm=algorithm,
                             series_number=7)
    errors, _ = dicom3tools("dciodvfy", save(seg, tmp_path, "seg"))
    assert errors == []
    assert len(seg.SegmentSequence) == 3
    _, volume = _read_back(tmp_path / "seg.dcm", source_images, label_names)
    assert not volume.any()


def test_reversed_source_order_and_minimal_sources_round_trip(tmp_path, source_images, labels, label_names,
                                                              algorithm):
    """Slices given top to bottom, from an MR without Patient Position or Body Part Examined."""
    images = source_images[::-1]
    for ds in images:
        del ds.PatientPosition, ds.BodyPartExamined
    seg = write_segmentation(images, labels[::-1], label_names, algorithm=algorithm, series_number=7)
    path = save(seg, tmp_path, "seg")
    errors, _ = dicom3tools("dciodvfy", path)
    assert errors == []
    _, volume = _read_back(path, images, label_names)
    np.testing.assert_array_equal(volume, labels[::-1])


def test_property_types_override_names(source_images, labels, label_names, algorithm):
    seg = write_segmentation(source_images, labels, label_names, algorithm=algorithm, series_number=7,
                             property_types={1: codes.SCT.Neoplasm})
    assert seg.SegmentSequence[0].SegmentedPropertyTypeCodeSequence[0].CodeValue == codes.SCT.Neoplasm.value


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        (lambda a: {"labels": a["labels"][:-1]}, ValueError, "shape"),
        (lambda a: {"labels": a["labels"].astype(np.float32)}, TypeError, "dtype float32"),
        (lambda a: {"labels": a["labels"].tolist()}, TypeError, "numpy array"),
        (lambda a: {"label_names": {1: "enhancing tumour"}}, ValueError, r"values \[2, 3\]"),
        (lambda a: {"label_names": [(1, "x")]}, TypeError, "dict"),
        (lambda a: {"label_names": {0: "background"}}, ValueError, "label value"),
        (lambda a: {"label_names": {**a["label_names"], 5: ""}}, ValueError, r"label_names\[5\]"),
        (lambda a: {"series_number": 0}, ValueError, "series_number"),
        (lambda a: {"series_number": "9"}, TypeError, "series_number"),
        (lambda a: {"algorithm": "UNet"}, TypeError, "AlgorithmInfo"),
        (lambda a: {"source_images": a["source_images"][:1]}, ValueError, "shape"),
    ],
)
def test_bad_input_is_refused_with_a_message(source_images, labels, label_names, algorithm, change, error, match):
    args = {"source_images": source_images, "labels": labels, "label_names": label_names,
            "algorithm": algorithm, "series_number": 901}
    args.update(change(args))
    with pytest.raises(error, match=match):
        write_segmentation(args.pop("source_images"), args.pop("labels"), args.pop("label_names"), **args)


def test_label_values_with_gaps_map_to_consecutive_segments(tmp_path, source_images, labels, algorithm):
    """BraTS numbering (1, 2, 4): segments are 1, 2, 3 and the values come back on reading."""
    brats = labels.copy()
    brats[labels == 3] = 4
    names = {1: "necrotic core", 2: "edema", 4: "enhancing tumour"}
    assert segment_numbers(names) == {1: 1, 2: 2, 4: 3}
    seg = write_segmentation(source_images, brats, names, algorithm=algorithm, series_number=7)
    assert [s.SegmentNumber for s in seg.SegmentSequence] == [1, 2, 3]
    assert seg.SegmentSequence[2].SegmentLabel == "enhancing tumour"
    _, volume = _read_back(save(seg, tmp_path, "seg"), source_images, names)
    np.testing.assert_array_equal(volume, brats)
