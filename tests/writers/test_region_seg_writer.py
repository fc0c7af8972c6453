"""Overlapping regions (sigmoid models: tumour core, whole tumour, enhancing tumour) as one BINARY SEG."""

from __future__ import annotations

import highdicom as hd
import numpy as np
import pytest
from pydicom.sr.codedict import codes

from neuronova.phantoms.head import TUMOUR_LABELS
from neuronova.writers import (
    compute_region_stats,
    region_segment_numbers,
    write_region_segmentation,
    write_segmentation_report,
)
from neuronova.writers import codes as nn_codes
from neuronova.writers.geometry import voxel_volume_ml
from tests.writers.conftest import dicom3tools, save

LABEL = {name: value for value, name in TUMOUR_LABELS.items()}


@pytest.fixture
def masks(labels) -> dict[str, np.ndarray]:
    """The BraTS evaluation regions of the phantom's labels: they nest, so they overlap."""
    enhancing = labels == LABEL["enhancing tumour"]
    core = enhancing | (labels == LABEL["necrotic core"])
    return {"tumour core": core, "whole tumour": labels > 0, "enhancing tumour": enhancing}


def test_overlapping_regions_are_a_valid_seg_that_round_trips(tmp_path, source_images, masks, algorithm):
    assert (masks["enhancing tumour"] & masks["tumour core"]).any()  # the regions really overlap
    seg = write_region_segmentation(source_images, masks, algorithm=algorithm, series_number=905)
    path = save(seg, tmp_path, "seg")
    errors, warnings = dicom3tools("dciodvfy", path)
    assert errors == [] and warnings == []

    read = hd.seg.segread(path)
    assert read.SegmentationType == "BINARY"
    assert [s.SegmentLabel for s in read.SegmentSequence] == list(masks)
    types = [s.SegmentedPropertyTypeCodeSequence[0].CodeValue for s in read.SegmentSequence]
    assert types == [nn_codes.TUMOUR_CORE.value, nn_codes.WHOLE_TUMOUR.value, nn_codes.ENHANCING_TUMOUR.value]
    uids = [ds.SOPInstanceUID for ds in source_images]
    pixels = read.get_pixels_by_source_instance(source_sop_instance_uids=uids, segment_numbers=[1, 2, 3],
                                                combine_segments=False, assert_missing_frames_are_empty=True)
    for channel, mask in enumerate(masks.values()):
        np.testing.assert_array_equal(pixels[..., channel].astype(bool), mask)
    assert seg.SeriesDescription.startswith("AI SEG tumour regions")


def test_region_volumes_and_report_count_overlaps_in_each_region(tmp_path, source_images, masks, algorithm):
    seg = write_region_segmentation(source_images, masks, algorithm=algorithm, series_number=905)
    stats = compute_region_stats(source_images, masks)
    assert [(s.segment_number, s.label_name) for s in stats] == list(enumerate(masks, start=1))
    voxel = voxel_volume_ml(source_images)
    for stat, mask in zip(stats, masks.values(), strict=True):
        assert stat.volume_ml == pytest.approx(mask.sum() * voxel)
    # whole tumour holds the core: the volumes overlap instead of adding up to the whole
    assert stats[0].volume_ml + stats[1].volume_ml > masks["whole tumour"].sum() * voxel

    sr = write_segmentation_report(source_images, seg, stats, algorithm=algorithm, series_number=906)
    errors, warnings = dicom3tools("dciodvfy", save(sr, tmp_path, "sr"))
    assert errors == [] and warnings == []
    volumes = hd.sr.MeasurementReport.from_sequence([sr]).get_volumetric_roi_measurement_groups()
    assert [g.get_measurements(name=codes.SCT.Volume)[0].value for g in volumes] == pytest.approx(
        [round(s.volume_ml, 4) for s in stats])


def test_empty_region_keeps_its_segment(tmp_path, source_images, masks, algorithm):
    masks["enhancing tumour"] = np.zeros_like(masks["enhancing tumour"])
    seg = write_region_segmentation(source_images, masks, algorithm=algorithm, series_number=905)
    errors, _ = dicom3tools("dciodvfy", save(seg, tmp_path, "seg"))
    assert errors == [] and len(seg.SegmentSequence) == 3
    referenced = {int(f.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
                  for f in seg.PerFrameFunctionalGroupsSequence}
    assert referenced == {1, 2}
    stats = compute_region_stats(source_images, masks)
    assert stats[2].volume_ml == 0 and stats[2].contour_xy is None


def test_region_numbers_follow_the_mapping_and_types_can_be_given(source_images, masks, algorithm):
    assert region_segment_numbers(masks) == {"tumour core": 1, "whole tumour": 2, "enhancing tumour": 3}
    seg = write_region_segmentation(source_images, {"WT": masks["whole tumour"]}, algorithm=algorithm,
                                    series_number=905, property_types={"WT": codes.SCT.Neoplasm})
    assert seg.SegmentSequence[0].SegmentedPropertyTypeCodeSequence[0].CodeValue == codes.SCT.Neoplasm.value


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        (lambda m: {k: v.astype(np.uint8) for k, v in m.items()}, TypeError, "boolean"),
        (lambda m: {"whole tumour": m["whole tumour"][:, :10]}, ValueError, "shape"),
        (lambda m: {}, ValueError, "at least one"),
        (lambda m: {"a\\b": m["whole tumour"]}, ValueError, "backslash"),
        (lambda m: {"x": m["whole tumour"], " x": m["whole tumour"]}, ValueError, "twice"),
        (lambda m: {1: m["whole tumour"]}, TypeError, "str region names"),
        (lambda m: [m["whole tumour"]], TypeError, "dict"),
        (lambda m: {"whole tumour": m["whole tumour"].tolist()}, TypeError, "numpy array"),
    ],
)
def test_bad_masks_are_refused(source_images, masks, algorithm, change, error, match):
    with pytest.raises(error, match=match):
        write_region_segmentation(source_images, change(masks), algorithm=algorithm, series_number=905)
