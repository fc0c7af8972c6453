"""Geometry the reports need: outlines of a mask, key slices, volumes.

Outlines are marching-squares contours from contourpy (the contouring library matplotlib is built on;
scikit-image is not a dependency). Coordinates are DICOM image coordinates (PS3.3 C.18.6.1.1):
(column, row) with (0, 0) at the top left corner of the top left pixel, so pixel centres sit at .5.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np
import pydicom


class SegmentStat(NamedTuple):
    """What the segmentation report says about one segment."""

    segment_number: int
    label_name: str
    volume_ml: float
    key_slice_index: int
    contour_xy: np.ndarray | None


def mask_outline(mask: np.ndarray) -> np.ndarray | None:
    """The longest closed outline of a 2D mask as (n, 2) (x, y) points, first point repeated last.

    Returns None for an empty mask. The mask is padded so that regions touching the border still close.
    """
    import contourpy  # matplotlib's contouring; imported here because only reports need it

    if not isinstance(mask, np.ndarray):
        raise TypeError(f"mask must be a numpy array, found {type(mask).__name__}")
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2D, found shape {mask.shape}")
    binary = mask.astype(bool)
    if not binary.any():
        return None
    padded = np.pad(binary, 1).astype(np.float64)
    generator = contourpy.contour_generator(z=padded, line_type=contourpy.LineType.Separate)
    lines = generator.lines(0.5)
    # The longest path is the outer boundary of the largest region (holes and islands are shorter).
    line = max(lines, key=len)
    # contourpy's x, y are array indices of the padded mask: shift back by the pad, then to pixel corners.
    points = np.asarray(line, dtype=np.float64) - 1.0 + 0.5
    points[:, 0] = np.clip(points[:, 0], 0.0, binary.shape[1])
    points[:, 1] = np.clip(points[:, 1], 0.0, binary.shape[0])
    if not np.array_equal(points[0], points[-1]):
        points = np.vstack([points, points[:1]])
    return points


def polygon_area(points_xy: np.ndarray) -> float:
    """Area (in pixels squared) enclosed by a closed polyline (shoelace formula)."""
    x, y = points_xy[:, 0], points_xy[:, 1]
    return float(abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2.0)


def key_slice(mask: np.ndarray) -> int | None:
    """Index of the slice (axis 0) with the most voxels of the mask; None when the mask is empty."""
    counts = mask.reshape(mask.shape[0], -1).astype(bool).sum(axis=1)
    if counts.max(initial=0) == 0:
        return None
    return int(np.argmax(counts))


def voxel_volume_ml(source_images: Sequence[pydicom.Dataset]) -> float:
    """Volume of one voxel in mL from pixel spacing and the spacing of slice positions."""
    first = source_images[0]
    row_spacing, col_spacing = (float(v) for v in first.PixelSpacing)
    if len(source_images) > 1 and "ImagePositionPatient" in first:
        normal = np.cross(
            np.asarray(first.ImageOrientationPatient[:3], float), np.asarray(first.ImageOrientationPatient[3:], float)
        )
        positions = sorted(float(np.dot(normal, np.asarray(ds.ImagePositionPatient, float))) for ds in source_images)
        thickness = float(np.median(np.diff(positions)))
    else:
        thickness = float(first.get("SpacingBetweenSlices") or first.SliceThickness)
    if not thickness > 0:
        raise ValueError(f"slice spacing must be positive, found {thickness}")
    return row_spacing * col_spacing * thickness / 1000.0


def compute_segment_stats(
    source_images: Sequence[pydicom.Dataset],
    labels: np.ndarray,
    label_names: Mapping[int, str],
) -> list[SegmentStat]:
    """Per-label volume, key slice and outline, in segment number order (see ``seg.segment_numbers``).

    An empty label gets volume 0, key slice 0 and no outline.
    """
    from neuronova.writers.seg import segment_numbers  # one numbering for SEG and SR

    voxel_ml = voxel_volume_ml(source_images)
    stats = []
    for value, number in segment_numbers(label_names).items():
        mask = labels == value
        index = key_slice(mask)
        outline = mask_outline(mask[index]) if index is not None else None
        stats.append(
            SegmentStat(
                segment_number=number,
                label_name=label_names[value],
                volume_ml=float(mask.sum()) * voxel_ml,
                key_slice_index=index if index is not None else 0,
                contour_xy=outline,
            )
        )
    return stats


def compute_region_stats(
    source_images: Sequence[pydicom.Dataset],
    masks: Mapping[str, np.ndarray],
) -> list[SegmentStat]:
    """Per-region volume, key slice and outline of (possibly overlapping) boolean masks.

    Segment numbers follow ``seg.region_segment_numbers`` (the order of ``masks``), as in
    ``seg.write_region_segmentation``; a voxel in two regions counts in both volumes. An empty region gets
    volume 0, key slice 0 and no outline.
    """
    from neuronova.writers.seg import check_region_masks, region_segment_numbers

    voxel_ml = voxel_volume_ml(source_images)
    shape = (len(source_images), int(source_images[0].Rows), int(source_images[0].Columns))
    regions = check_region_masks(masks, shape)
    stats = []
    for name, number in region_segment_numbers(regions).items():
        mask = regions[name]
        index = key_slice(mask)
        stats.append(
            SegmentStat(
                segment_number=number,
                label_name=name,
                volume_ml=float(mask.sum()) * voxel_ml,
                key_slice_index=index if index is not None else 0,
                contour_xy=mask_outline(mask[index]) if index is not None else None,
            )
        )
    return stats
