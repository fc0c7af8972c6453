"""DICOM Segmentation (SEG): one BINARY segment per label of a label map, or per (overlapping) region.

Choices worth knowing:

* Segment numbers are 1..N in ascending label value order (``segment_numbers``), whatever the label
  values are (BraTS uses 1, 2, 4): the SR writer and the pipeline use the same mapping.
* A label with no voxel keeps its segment (numbering stays stable, the report can say 0 mL) and gets no
  frame. When every label is empty highdicom writes all frames empty rather than none.
* Empty frames are omitted (highdicom's default). Each remaining frame carries its Plane Position and a
  Derivation Image Sequence naming the source SOP Instance UID, which is what viewers (OHIF/cornerstone,
  3D Slicer) use to put a frame on its slice, so omitting frames does not shift the mask.
* Overlapping regions (``write_region_segmentation``: sigmoid models give tumour core, whole tumour and
  enhancing tumour, which nest) are segments of one BINARY SEG too: highdicom takes a (frames, rows,
  columns, segments) array and writes one frame per slice and segment, so a voxel may lie in several.
* The series description starts with what tells the series apart ("AI SEG ..."): viewers cut it short.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import highdicom as hd
import numpy as np
import pydicom

from neuronova.writers import codes as nn_codes
from neuronova.writers.common import (
    AlgorithmInfo,
    check_int,
    check_source_images,
    finish_equipment,
    equipment_kwargs,
    series_description as make_series_description,
)

logger = logging.getLogger(__name__)

KIND = "seg"
_LABEL_MAX = 64  # Segment Label is LO

# Recommended display colours (sRGB) per property type, so every viewer shows the same colours.
_COLOURS: dict[str, tuple[int, int, int]] = {
    nn_codes.ENHANCING.value: (255, 215, 0),
    nn_codes.NON_ENHANCING.value: (220, 40, 40),
    nn_codes.NECROSIS.value: (220, 40, 40),
    nn_codes.EDEMA.value: (40, 200, 80),
    nn_codes.NEOPLASM.value: (255, 120, 0),  # also the tumour core region
    nn_codes.WHOLE_TUMOUR.value: (40, 200, 80),  # the whole tumour is mostly edema: edema's colour
}
DEFAULT_DESCRIPTION = "AI SEG tumour"
DEFAULT_REGION_DESCRIPTION = "AI SEG tumour regions"


def check_label_names(label_names: object) -> dict[int, str]:
    if not isinstance(label_names, Mapping):
        raise TypeError(f"label_names must be a dict[int, str], found {type(label_names).__name__}")
    if not label_names:
        raise ValueError("label_names must name at least one label")
    checked: dict[int, str] = {}
    for value, name in label_names.items():
        value = check_int("label value", value, minimum=1, maximum=255)
        if not isinstance(name, str):
            raise TypeError(f"label_names[{value}] must be a str, found {type(name).__name__}")
        if not name.strip() or len(name) > _LABEL_MAX or "\\" in name:
            raise ValueError(
                f"label_names[{value}] must be 1-{_LABEL_MAX} characters without backslash, found {name!r}"
            )
        checked[value] = name.strip()
    return checked


def segment_numbers(label_names: Mapping[int, str]) -> dict[int, int]:
    """Label value -> segment number (1..N, ascending label value)."""
    return {value: number for number, value in enumerate(sorted(label_names), start=1)}


def write_segmentation(
    source_images: Sequence[pydicom.Dataset],
    labels: np.ndarray,
    label_names: Mapping[int, str],
    *,
    algorithm: AlgorithmInfo,
    series_number: int,
    series_description: str | None = None,
    instance_number: int = 1,
    pipeline: str | None = None,
    property_types: Mapping[int, nn_codes.Coded] | None = None,
) -> hd.seg.Segmentation:
    """A BINARY SEG of ``labels`` (z, y, x; z in the order of ``source_images``).

    ``label_names`` maps label values to segment labels; its keys decide the segments. Segment types
    come from the names (``codes.segment_type``) unless ``property_types`` gives a code per label value.
    Raises TypeError for a wrong type and ValueError for a bad value (a shape that does not match, a
    label value in ``labels`` that ``label_names`` does not name).
    """
    images = check_source_images(source_images)
    names = check_label_names(label_names)
    if not isinstance(algorithm, AlgorithmInfo):
        raise TypeError(f"algorithm must be an AlgorithmInfo, found {type(algorithm).__name__}")
    series_number = check_int("series_number", series_number)
    instance_number = check_int("instance_number", instance_number)
    if not isinstance(labels, np.ndarray):
        raise TypeError(f"labels must be a numpy array, found {type(labels).__name__}")
    if labels.dtype != np.bool_ and not np.issubdtype(labels.dtype, np.integer):
        raise TypeError(f"labels must hold integers (uint8 label values), found dtype {labels.dtype}")
    expected = (len(images), int(images[0].Rows), int(images[0].Columns))
    if labels.shape != expected:
        raise ValueError(f"labels must have shape (slices, rows, columns) = {expected}, found {labels.shape}")
    present = {int(v) for v in np.unique(labels)} - {0}
    unnamed = sorted(present - set(names))
    if unnamed:
        raise ValueError(f"labels contain values {unnamed} that label_names does not name ({sorted(names)})")
    if property_types is not None and not isinstance(property_types, Mapping):
        raise TypeError(f"property_types must be a dict[int, Code], found {type(property_types).__name__}")

    numbers = segment_numbers(names)
    # Map label values to segment numbers: highdicom reads an integer array as segment numbers.
    lookup = np.zeros(256, dtype=np.uint8)
    for value, number in numbers.items():
        lookup[value] = number
    pixel_array = lookup[labels.astype(np.int64)] if present else np.zeros(expected, dtype=np.uint8)

    empty = [names[v] for v in numbers if v not in present]
    if empty:
        logger.info("segments without voxels (kept, no frames): %s", ", ".join(empty))
    segments = [
        (number, names[value], (property_types or {}).get(value) or nn_codes.segment_type(names[value]))
        for value, number in numbers.items()
    ]
    return _build(
        images, pixel_array, segments, algorithm=algorithm, series_number=series_number,
        series_description=series_description, default_description=DEFAULT_DESCRIPTION,
        instance_number=instance_number, pipeline=pipeline, kind=KIND,
    )


def _build(
    images: list[pydicom.Dataset],
    pixel_array: np.ndarray,
    segments: Sequence[tuple[int, str, nn_codes.Coded]],
    *,
    algorithm: AlgorithmInfo,
    series_number: int,
    series_description: str | None,
    default_description: str,
    instance_number: int,
    pipeline: str | None,
    kind: str,
) -> hd.seg.Segmentation:
    """The SEG of ``pixel_array`` (segment numbers, or one boolean channel per segment) and its segments."""
    scope = algorithm.uid_scope(str(images[0].SeriesInstanceUID), pipeline)
    algorithm_id = algorithm.algorithm_identification()
    descriptions = []
    for number, name, prop in segments:
        colour = _COLOURS.get(prop.value)
        descriptions.append(
            hd.seg.SegmentDescription(
                segment_number=number,
                segment_label=name,
                segmented_property_category=nn_codes.TUMOUR_CATEGORY,
                segmented_property_type=prop,
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                algorithm_identification=algorithm_id,
                tracking_uid=scope.tracking(kind, number),
                tracking_id=f"{name} ({algorithm.name})"[:_LABEL_MAX],
                anatomic_regions=[nn_codes.BRAIN],
                display_color=hd.color.CIELabColor.from_rgb(*colour) if colour else None,
            )
        )
    seg = hd.seg.Segmentation(
        source_images=images,
        pixel_array=pixel_array,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=scope.series(kind),
        series_number=series_number,
        sop_instance_uid=scope.instance(kind, instance_number),
        instance_number=instance_number,
        series_description=make_series_description(series_description, default_description, algorithm),
        content_label="NEURONOVA_SEG",
        content_description=make_series_description(None, f"{algorithm.name} {algorithm.version}", algorithm),
        contributing_equipment=[algorithm.contributing_equipment()],
        omit_empty_frames=True,
        **equipment_kwargs(algorithm),
    )
    finish_equipment(seg, images[0], algorithm)
    logger.info(
        "SEG written: %d segments, %d frames, series number %d", len(descriptions), seg.NumberOfFrames, series_number
    )
    return seg


def check_region_masks(masks: object, shape: tuple[int, int, int]) -> dict[str, np.ndarray]:
    """Region name -> boolean mask (z, y, x) of ``shape``, names checked as Segment Labels, order kept."""
    if not isinstance(masks, Mapping):
        raise TypeError(f"masks must be a dict[str, numpy array], found {type(masks).__name__}")
    if not masks:
        raise ValueError("masks must hold at least one region")
    checked: dict[str, np.ndarray] = {}
    for name, mask in masks.items():
        if not isinstance(name, str):
            raise TypeError(f"masks keys must be str region names, found {type(name).__name__}")
        if not name.strip() or len(name) > _LABEL_MAX or "\\" in name:
            raise ValueError(f"region name must be 1-{_LABEL_MAX} characters without backslash, found {name!r}")
        if name.strip() in checked:
            raise ValueError(f"region {name.strip()!r} appears twice")
        if not isinstance(mask, np.ndarray):
            raise TypeError(f"masks[{name!r}] must be a numpy array, found {type(mask).__name__}")
        if mask.dtype != np.bool_:
            raise TypeError(f"masks[{name!r}] must be a boolean array (thresholded), found dtype {mask.dtype}")
        if mask.shape != shape:
            raise ValueError(f"masks[{name!r}] must have shape (slices, rows, columns) = {shape}, found {mask.shape}")
        checked[name.strip()] = mask
    return checked


def region_segment_numbers(masks: Mapping[str, np.ndarray]) -> dict[str, int]:
    """Region name -> segment number (1..N in the order of ``masks``)."""
    return {name.strip(): number for number, name in enumerate(masks, start=1)}


def write_region_segmentation(
    source_images: Sequence[pydicom.Dataset],
    masks: Mapping[str, np.ndarray],
    *,
    algorithm: AlgorithmInfo,
    series_number: int,
    series_description: str | None = None,
    instance_number: int = 1,
    pipeline: str | None = None,
    property_types: Mapping[str, nn_codes.Coded] | None = None,
) -> hd.seg.Segmentation:
    """A BINARY SEG with one segment per region; regions may overlap (tumour core inside whole tumour).

    ``masks`` maps region names ("tumour core", "whole tumour", "enhancing tumour") to boolean arrays
    (z, y, x; z in the order of ``source_images``); segment numbers are 1..N in the mapping's order
    (``region_segment_numbers``). Segment types come from the names (``codes.segment_type``) unless
    ``property_types`` gives a code per name. An empty region keeps its segment and gets no frame.
    """
    images = check_source_images(source_images)
    if not isinstance(algorithm, AlgorithmInfo):
        raise TypeError(f"algorithm must be an AlgorithmInfo, found {type(algorithm).__name__}")
    series_number = check_int("series_number", series_number)
    instance_number = check_int("instance_number", instance_number)
    shape = (len(images), int(images[0].Rows), int(images[0].Columns))
    regions = check_region_masks(masks, shape)
    if property_types is not None and not isinstance(property_types, Mapping):
        raise TypeError(f"property_types must be a dict[str, Code], found {type(property_types).__name__}")
    numbers = region_segment_numbers(regions)
    segments = [
        (numbers[name], name, (property_types or {}).get(name) or nn_codes.segment_type(name)) for name in regions
    ]
    empty = [name for name, mask in regions.items() if not mask.any()]
    if empty:
        logger.info("regions without voxels (kept, no frames): %s", ", ".join(empty))
    # (frames, rows, columns, segments): highdicom reads each channel as one segment, overlaps allowed.
    pixel_array = np.stack(list(regions.values()), axis=-1)
    return _build(
        images, pixel_array, segments, algorithm=algorithm, series_number=series_number,
        series_description=series_description, default_description=DEFAULT_REGION_DESCRIPTION,
        instance_number=instance_number, pipeline=pipeline, kind=KIND,
    )
